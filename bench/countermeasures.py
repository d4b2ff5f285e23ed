#!/usr/bin/env python3
"""Measures the watermarks and the zero-shot detectors with the default
model (issue 5, item 6). Drives the release binary; needs tiktoken.

    cargo build --release
    python3 bench/countermeasures.py [--prompts 50] [--samples 4] [--human 1000] [--out DIR]

Machine text: `gpt2 generate` continuations (200 new tokens, 4 samples per
prompt) of 32-token prompts cut from the default model's five held-out
books (tools/train/heldout.sh), each paragraph joined into one line as the
model was trained. Human text: other paragraphs of those books and
WikiText-2 test paragraphs, cut to the generations' length. Reports, and writes DIR/results.json:
  - per watermark scheme (KGW delta 2 gamma 0.25 h 1 LeftHash; KGW
    SelfHash h 3 and h 4, the server's; Gumbel): TPR at z >= 4, observed FPR on human texts, the
    perplexity of the output under the model against unwatermarked output
    at the same settings, and TPR after 10/20/30% random token substitution;
  - detectors: AUROC and TPR at 1% FPR per statistic, generations at
    temperature 1 (no top-k) and at top-k 40, against human texts.
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
from tiktoken_offline import gpt2_encoding  # noqa: E402

GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
BOOKS = os.path.join(ROOT, "..", "shared", "data", "train")
WIKI = os.path.join(ROOT, "..", "shared", "data", "eval", "wikitext-2-raw", "wiki.test.raw")
ENC = gpt2_encoding()
GEN_TOKENS = 200


def run(args, stdin=None):
    return subprocess.run([GPT2] + args, check=True, capture_output=True, text=True, input=stdin).stdout


def heldout_books():
    """The held-out books' paths, from the file-name prefixes tools/train/heldout.sh names."""
    script = open(os.path.join(ROOT, "tools", "train", "heldout.sh"), encoding="utf-8").read()
    prefixes = re.search(r'^HELDOUT="([^"]*)"', script, re.M).group(1).split()
    return [os.path.join(BOOKS, folder, name) for folder in ("gutenberg", "gutenberg-more")
            for name in sorted(os.listdir(os.path.join(BOOKS, folder))) if name.startswith(tuple(prefixes))]


def book_passages():
    out = []
    for path in heldout_books():
        text = open(path, encoding="utf-8").read()
        paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
        out += [p for p in paragraphs if len(ENC.encode_ordinary(p)) >= 64]
    return out


def wiki_paragraphs():
    lines = open(WIKI, encoding="utf-8").read().split("\n")
    return [l.strip() for l in lines if len(l) > 600 and not l.strip().startswith("=")]


def cut(text, n):
    return ENC.decode(ENC.encode_ordinary(text)[:n])


def generate(prompts, samples, extra, seed0):
    texts = []
    for i, p in enumerate(prompts):
        out = json.loads(run(["generate", p, "--max-tokens", str(GEN_TOKENS), "-n", str(samples),
                              "--seed", str(seed0 + i), "--json"] + extra))
        texts += [{"prompt": p, "ids": s["ids"], "text": s["text"]} for s in out["samples"]]
    return texts


def detect_wm(key, prompt, text):
    return json.loads(run(["watermark", "detect", "--key", key, "--prompt", prompt, "--json", "-"], stdin=text))


def substitute(ids, fraction, rng):
    ids = list(ids)
    for i in rng.sample(range(len(ids)), int(round(fraction * len(ids)))):
        ids[i] = rng.randrange(50256)
    return ENC.decode(ids)


def mean_ppl(texts, tmp):
    path = os.path.join(tmp, "ppl.jsonl")
    write_jsonl(path, texts)
    lls = [json.loads(l)["statistics"]["log_likelihood"] for l in run(["detect", "--json", path]).splitlines()]
    return math.exp(-sum(lls) / len(lls))


def write_jsonl(path, texts):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--human", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/countermeasures")
    ap.add_argument("--schemes", nargs="*", help="only these watermark schemes (default: all)")
    ap.add_argument("--skip-detectors", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(0)
    passages = book_passages()
    rng.shuffle(passages)
    prompts = [cut(p, 32) for p in passages[: a.prompts]]
    human = [cut(p, GEN_TOKENS) for p in passages[a.prompts:]] + [cut(p, GEN_TOKENS) for p in wiki_paragraphs()]
    rng.shuffle(human)
    human = human[: a.human]
    print(f"{len(prompts)} prompts x {a.samples} samples; {len(human)} human texts", flush=True)
    results = {"prompts": len(prompts), "samples_per_prompt": a.samples, "human_texts": len(human)}

    t0 = time.time()
    plain_k40 = generate(prompts, a.samples, [], 1000)
    plain_t1 = generate(prompts, a.samples, ["--top-k", "0"], 2000)
    results["generation_seconds_per_condition"] = (time.time() - t0) / 2
    ppl_plain = mean_ppl([t["text"] for t in plain_k40], a.out)

    schemes = {"kgw_lefthash_h1": [], "kgw_selfhash_h3": ["--seeding", "self-hash", "--context", "3"],
               "kgw_selfhash_h4": ["--seeding", "self-hash", "--context", "4"],
               "gumbel_h1": ["--scheme", "gumbel"], "gumbel_h4": ["--scheme", "gumbel", "--context", "4"]}
    for name, flags in schemes.items():
        if a.schemes and name not in a.schemes:
            continue
        key = os.path.join(a.out, f"{name}.key")
        if os.path.exists(key):
            os.remove(key)
        run(["watermark", "keygen", "--out", key] + flags)
        marked = generate(prompts, a.samples, ["--watermark", key], 1000)
        zs = [detect_wm(key, t["prompt"], t["text"]) for t in marked]
        r = {"texts": len(marked), "mean_tokens_scored": sum(z["tokens_scored"] for z in zs) / len(zs),
             "tpr_z4": sum(z["z_score"] >= 4 for z in zs) / len(zs),
             "median_z": sorted(z["z_score"] for z in zs)[len(zs) // 2],
             "ppl_watermarked": mean_ppl([t["text"] for t in marked], a.out), "ppl_unwatermarked_same_sampling": ppl_plain}
        fp = [detect_wm(key, "", h) for h in human]
        r["human_fpr_z4"] = sum(z["z_score"] >= 4 for z in fp) / len(fp)
        r["human_max_z"] = max(z["z_score"] for z in fp)
        for frac in (0.1, 0.2, 0.3):
            att = [detect_wm(key, t["prompt"], substitute(t["ids"], frac, rng)) for t in marked]
            r[f"tpr_z4_after_{int(frac * 100)}pct_substitution"] = sum(z["z_score"] >= 4 for z in att) / len(att)
        results[name] = r
        print(name, json.dumps(r), flush=True)

    if a.skip_detectors:
        json.dump(results, open(os.path.join(a.out, "results.json"), "w"), indent=2)
        return
    hpath = os.path.join(a.out, "human.jsonl")
    write_jsonl(hpath, human[: max(200, len(plain_k40))])
    for label, gens in (("temperature_1", plain_t1), ("top_k_40", plain_k40)):
        mpath = os.path.join(a.out, f"machine-{label}.jsonl")
        write_jsonl(mpath, [t["text"] for t in gens])
        rows = json.loads(run(["detect", "evaluate", "--human", hpath, "--machine", mpath, "--json"]))
        results[f"detectors_{label}"] = rows
        for row in rows:
            print(label, row["statistic"], "AUROC %.3f [%.3f, %.3f]" % (row["auroc"]["value"], *row["auroc"]["ci95"]),
                  "TPR@1%%FPR %.3f [%.3f, %.3f]" % (row["tpr_at_1pct_fpr"]["value"], *row["tpr_at_1pct_fpr"]["ci95"]), flush=True)
    json.dump(results, open(os.path.join(a.out, "results.json"), "w"), indent=2)
    print(f"wrote {a.out}/results.json")


if __name__ == "__main__":
    main()
