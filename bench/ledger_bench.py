#!/usr/bin/env python3
"""Measures the provenance ledger (issue 5, item 6): recall of fuzzy lookup
after word edits, false matches on unrelated human text, and lookup latency
with 100,000 records. Drives the release binary; needs tiktoken (offline,
tools/reference/tiktoken_offline.py).

    cargo build --release
    python3 bench/ledger_bench.py [--records 100000] [--edited 500] [--out DIR]

Texts are 200-token passages (GPT-2 tokens, cut at word boundaries) of the
shared Gutenberg books; they stand in for generations, since what is
measured is robustness to edits, not where the text came from. The books
are split in two: passages of the "recorded" half go into the ledger, the
other half (and WikiText-2 test) are the unrelated human texts. The three
fairy-tale collections (Grimm, Andersen, the Blue Fairy Book) retell the
same tales, so they are all on the recorded side; otherwise a query would
be a genuine paraphrase of a record.

0. Why word 3-grams: exact Jaccard similarities in pure Python for n = 2,
   3, 4 (edited passages against their originals; unrelated passages
   against recorded ones).
1. Ledger A: every passage of the recorded books (6,596). Recall:
   --edited passages of A, each edited with random word substitutions
   (uniform over the corpus's word types) or deletions at 10/20/30%, or
   both at half the rate each, looked up with `gpt2 ledger lookup --jsonl`;
   a hit is the original record among the matches.
2. False matches: 1,000 passages of the other books and 1,000 WikiText
   passages looked up in A (goal: 0 matches). Also the largest Jaccard
   score among LSH candidates (lookup at --min-score 0), to show the margin.
3. Ledger B: A's passages plus filler up to --records: 200-token texts from
   an order-2 word Markov chain over the recorded books (so filler shares
   the books' phrases, the hard case for LSH). Import time and file size;
   lookup latency p50/p99 from the in-process timer of `lookup --jsonl`
   (edited passages, which match, and unrelated ones, which do not);
   recall and false matches again at this size; and the wall time of
   single `gpt2 ledger lookup` and `gpt2 ledger add` processes.

Writes DIR/results.json and prints a Markdown summary.
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
from tiktoken_offline import gpt2_encoding  # noqa: E402

GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
BOOKS = os.path.join(ROOT, "..", "shared", "data", "train", "gutenberg")
WIKI = os.path.join(ROOT, "..", "shared", "data", "eval", "wikitext-2-raw", "wiki.test.raw")
ENC = gpt2_encoding()
TOKENS = 200
FAIRY = ("Grimm", "Andersen", "Blue-Fairy")


def run(args):
    return subprocess.run([GPT2] + args, check=True, capture_output=True, text=True).stdout


def windows(text, n=TOKENS):
    """Consecutive passages of at most n tokens, each ending before a token
    that starts a word (so no word is cut)."""
    ids = ENC.encode_ordinary(" ".join(text.split()))
    out, s = [], 0
    while s + n <= len(ids):
        e = s + n
        while e > s + n // 2 and not ENC.decode_single_token_bytes(ids[e]).startswith(b" "):
            e -= 1
        out.append(ENC.decode(ids[s:e]).strip())
        s = e
    return out


def book_split():
    names = sorted(os.listdir(BOOKS))
    fairy = [n for n in names if any(f in n for f in FAIRY)]
    rest = [n for n in names if n not in fairy]
    # Recorded: the fairy-tale collections and every other remaining book.
    recorded = fairy + rest[0::2]
    other = [n for n in rest if n not in recorded]
    return recorded, other


def read_book(name):
    return open(os.path.join(BOOKS, name), encoding="utf-8").read()


def wiki_passages():
    lines = open(WIKI, encoding="utf-8").read().split("\n")
    body = [l for l in lines if l.strip() and not l.strip().startswith("=")]
    return windows(" ".join(body))


WORD = re.compile(r"[^\W_]+")


def vocabulary(texts):
    vocab = set()
    for t in texts:
        vocab.update(w.lower() for w in WORD.findall(t))
    return sorted(vocab)


APOSTROPHES = "'\u2019\u2018\u02bc"


def trigrams(text, n=3):
    """The ledger's normalisation, reimplemented: lowercase alphanumeric
    runs, apostrophes dropped, anything else separates words; the set of
    word n-grams (as strings, not hashes)."""
    words, word = [], []
    for c in text:
        if c.isalnum():
            word.append(c.lower())
        elif c not in APOSTROPHES and word:
            words.append("".join(word))
            word = []
    if word:
        words.append("".join(word))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a, b):
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 0.0


def substitute(text, rate, vocab, rng):
    return " ".join(rng.choice(vocab) if rng.random() < rate else w for w in text.split())


def delete(text, rate, rng):
    return " ".join(w for w in text.split() if rng.random() >= rate)


EDITS = {
    "substitute": lambda t, p, v, r: substitute(t, p, v, r),
    "delete": lambda t, p, v, r: delete(t, p, r),
    "both": lambda t, p, v, r: delete(substitute(t, p / 2, v, r), p / 2, r),
}


def markov_filler(texts, count, rng):
    """count texts of about TOKENS tokens from an order-2 word Markov chain."""
    words = " ".join(texts).split()
    chain = {}
    for a, b, c in zip(words, words[1:], words[2:]):
        chain.setdefault((a, b), []).append(c)
    starts = list(chain)
    out = []
    for _ in range(count):
        a, b = rng.choice(starts)
        w = [a, b]
        while len(w) < 150:
            nxt = chain.get((a, b))
            if not nxt:
                a, b = rng.choice(starts)
                w += [a, b]
                continue
            c = rng.choice(nxt)
            w.append(c)
            a, b = b, c
        out.append(" ".join(w))
    return out


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def lookup_lines(db, texts, work, name, min_score=None):
    path = os.path.join(work, name + ".jsonl")
    write_jsonl(path, texts)
    args = ["ledger", "lookup", "--db", db, "--jsonl", path]
    if min_score is not None:
        args += ["--min-score", str(min_score)]
    return [json.loads(l) for l in run(args).splitlines()]


def import_texts(db, texts, work, name):
    path = os.path.join(work, name + ".jsonl")
    write_jsonl(path, texts)
    t = time.perf_counter()
    out = run(["ledger", "import", "--db", db, "--jsonl", path])
    seconds = time.perf_counter() - t
    return seconds, out.strip()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def recall(db, records, vocab, work, rng, label):
    """records: [(id, text)]. Returns {edit: {rate: stats}}."""
    out = {}
    for kind, edit in EDITS.items():
        out[kind] = {}
        for rate in (0.1, 0.2, 0.3):
            edited = [edit(t, rate, vocab, rng) for _, t in records]
            rows = lookup_lines(db, edited, work, f"{label}-{kind}-{rate}")
            hits, top, scores, mismatches = 0, 0, [], 0
            for (rid, original), query, row in zip(records, edited, rows):
                ids = [m["record_id"] for m in row["matches"]]
                if rid in ids:
                    hits += 1
                    score = next(m["score"] for m in row["matches"] if m["record_id"] == rid)
                    scores.append(score)
                    # The score is the Jaccard similarity that an independent
                    # implementation computes from the texts.
                    if abs(score - jaccard(trigrams(query), trigrams(original))) > 1e-9:
                        mismatches += 1
                if ids and ids[0] == rid:
                    top += 1
            out[kind][str(rate)] = {
                "n": len(records),
                "recall": hits / len(records),
                "top1": top / len(records),
                "score_p1": pct(scores, 0.01) if scores else None,
                "score_median": pct(scores, 0.5) if scores else None,
                "scores_unlike_python": mismatches,
            }
    return out


def explore_ngram_sizes(recorded, human, vocab, rng, edited=300, queries=300, records=1000):
    """Why 3-grams: exact Jaccard (pure Python, no ledger) of passages after
    20% substitutions (1st percentile: recall needs it high), and the
    largest Jaccard of any unrelated human passage against any of `records`
    recorded passages (false matches need it low), for n = 2, 3, 4."""
    out = {}
    edits = [(t, substitute(t, 0.2, vocab, rng)) for t in rng.sample(recorded, edited)]
    recs = rng.sample(recorded, records)
    qs = rng.sample(human, queries)
    for n in (2, 3, 4):
        js = [jaccard(trigrams(a, n), trigrams(b, n)) for a, b in edits]
        rsets = [trigrams(r, n) for r in recs]
        worst = max(jaccard(trigrams(q, n), r) for q in qs for r in rsets)
        out[str(n)] = {"edited20_p1": pct(js, 0.01), "edited20_median": pct(js, 0.5), "unrelated_max": worst}
    return out


def false_matches(db, queries, work, label):
    rows = lookup_lines(db, queries, work, label)
    matched = sum(1 for r in rows if r["matches"])
    cand = lookup_lines(db, queries, work, label + "-any", min_score=0)
    scores = [m["score"] for r in cand for m in r["matches"]]
    return {
        "queries": len(queries),
        "matched": matched,
        "lsh_candidates_scored": len(scores),
        "max_candidate_score": max(scores) if scores else 0.0,
    }, rows


def wall(args, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run(args)
        times.append(time.perf_counter() - t)
    return {"p50_ms": 1e3 * pct(times, 0.5), "p99_ms": 1e3 * pct(times, 0.99), "n": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--edited", type=int, default=500)
    ap.add_argument("--human", type=int, default=1000, help="queries per human source")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--bin", default=None, help="the gpt2 binary (default: release)")
    a = ap.parse_args()
    global GPT2
    GPT2 = a.bin or GPT2
    rng = random.Random(a.seed)
    work = a.out or tempfile.mkdtemp(prefix="ledger-bench-")
    os.makedirs(work, exist_ok=True)

    recorded_books, other_books = book_split()
    recorded = [p for b in recorded_books for p in windows(read_book(b))]
    other = [p for b in other_books for p in windows(read_book(b))]
    wiki = wiki_passages()
    vocab = vocabulary(read_book(b) for b in recorded_books + other_books)
    tokens = [len(ENC.encode_ordinary(t)) for t in rng.sample(recorded, 200)]
    res = {
        "binary": GPT2,
        "recorded_books": recorded_books,
        "other_books": other_books,
        "passages": {"recorded": len(recorded), "other": len(other), "wiki": len(wiki)},
        "tokens_per_passage_mean": statistics.mean(tokens),
        "vocabulary": len(vocab),
    }

    # 1-2. Ledger A.
    db_a = os.path.join(work, "a.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_a + suffix):
            os.remove(db_a + suffix)
    res["ledger_a_import_seconds"], _ = import_texts(db_a, recorded, work, "a")
    ids = list(range(1, len(recorded) + 1))
    sample = rng.sample(list(zip(ids, recorded)), a.edited)
    res["recall_a"] = recall(db_a, sample, vocab, work, rng, "a")
    human = rng.sample(other, min(a.human, len(other))) + rng.sample(wiki, min(a.human, len(wiki)))
    res["false_a"], _ = false_matches(db_a, human, work, "false-a")
    res["false_a"]["ledger_records"] = len(recorded)
    res["ngram_sizes"] = explore_ngram_sizes(recorded, human, vocab, rng)

    # 3. Ledger B.
    db_b = os.path.join(work, "b.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_b + suffix):
            os.remove(db_b + suffix)
    filler = markov_filler(recorded, max(0, a.records - len(recorded)), rng)
    seconds, msg = import_texts(db_b, recorded + filler, work, "b")
    res["ledger_b"] = {
        "records": len(recorded) + len(filler),
        "import_seconds": seconds,
        "import_message": msg,
        "bytes": os.path.getsize(db_b),
    }
    res["recall_b"] = recall(db_b, sample, vocab, work, rng, "b")
    res["false_b"], miss_rows = false_matches(db_b, human, work, "false-b")
    hit_queries = [substitute(t, 0.2, vocab, rng) for _, t in sample]
    hit_rows = lookup_lines(db_b, hit_queries, work, "latency-hits")
    lat_hit = [r["seconds"] for r in hit_rows]
    lat_miss = [r["seconds"] for r in miss_rows]
    both = lat_hit + lat_miss
    res["latency_b_ms"] = {
        "n": len(both),
        "p50": 1e3 * pct(both, 0.5),
        "p99": 1e3 * pct(both, 0.99),
        "max": 1e3 * max(both),
        "hits_p50": 1e3 * pct(lat_hit, 0.5),
        "hits_p99": 1e3 * pct(lat_hit, 0.99),
        "misses_p50": 1e3 * pct(lat_miss, 0.5),
        "misses_p99": 1e3 * pct(lat_miss, 0.99),
    }
    qfile = os.path.join(work, "one.txt")
    with open(qfile, "w", encoding="utf-8") as f:
        f.write(hit_queries[0])
    res["cli_lookup_wall"] = wall(["ledger", "lookup", "--db", db_b, qfile, "--json"], 30)
    res["cli_add_wall"] = wall(["ledger", "add", "--db", db_b, qfile], 30)
    res["check_seconds"] = wall(["ledger", "check", "--db", db_a], 1)["p50_ms"] / 1e3
    # One transaction per record (as generation records them): the commit
    # with synchronous=FULL, in-process, into the 100,000-record ledger.
    path = os.path.join(work, "single.jsonl")
    write_jsonl(path, hit_queries[:200])
    t = time.perf_counter()
    run(["ledger", "import", "--db", db_b, "--jsonl", path, "--batch", "1"])
    res["record_one_transaction_ms"] = 1e3 * (time.perf_counter() - t) / len(hit_queries[:200])

    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    report(res, work)


def report(res, work):
    print(f"work dir: {work}")
    print(f"passages: {res['passages']}, mean tokens {res['tokens_per_passage_mean']:.1f}")
    for name, key in (("A", "recall_a"), ("B", "recall_b")):
        n = res["ledger_b"]["records"] if name == "B" else res["passages"]["recorded"]
        print(f"\nRecall, ledger {name} ({n} records)\n")
        print("| edit | rate | recall | top-1 | score p1 | score median |")
        print("|---|---|---|---|---|---|")
        for kind, rates in res[key].items():
            for rate, s in rates.items():
                print(
                    f"| {kind} | {float(rate):.0%} | {s['recall']:.1%} | {s['top1']:.1%} "
                    f"| {s['score_p1'] or 0:.3f} | {s['score_median'] or 0:.3f} |"
                )
    print("\nn-gram size (exact Jaccard, Python): 20%-substituted p1 / median, unrelated max")
    for n, v in res["ngram_sizes"].items():
        print(f"  n={n}: {v['edited20_p1']:.3f} / {v['edited20_median']:.3f}, {v['unrelated_max']:.3f}")
    for key in ("false_a", "false_b"):
        print(f"\n{key}: {res[key]}")
    print(f"\nledger B: {res['ledger_b']}")
    print(f"lookup latency (in-process, ms): {res['latency_b_ms']}")
    print(f"gpt2 ledger lookup, whole process: {res['cli_lookup_wall']}")
    print(f"gpt2 ledger add, whole process: {res['cli_add_wall']}")
    print(f"gpt2 ledger check of ledger A: {res['check_seconds']:.2f} s")
    print(f"record, one transaction each (import --batch 1): {res['record_one_transaction_ms']:.2f} ms")
    bad = sum(s["scores_unlike_python"] for k in ("recall_a", "recall_b") for r in res[k].values() for s in r.values())
    print(f"scores differing from the Python reimplementation: {bad}")


if __name__ == "__main__":
    main()
