#!/usr/bin/env python3
"""The server's state on PostgreSQL beside SQLite (issue 15, item 6):
ledger insert rate and lookup latency at 100k and 1M synthetic records,
and the throughput of one and of three `gpt2 serve` replicas on one
PostgreSQL behind haproxy. Drives the release binary.

    cargo build --release
    python3 bench/scale_out.py [--records 100000,1000000] [--clients 16]
        [--seconds 20] [--out bench/results-scale-out.json]

PostgreSQL is a throwaway cluster (Debian's initdb in a temporary
directory, run as the postgres user when this runs as root, on a loopback
port, default settings but for listen_addresses and max_connections:
fsync and synchronous_commit stay on, as an operator would run it).

1. Ledger: synthetic records (60 words each from an order-1 word chain
   over the shared books, so texts share phrases, and distinct) imported
   with `gpt2 ledger import --batch 1000` into a SQLite file and into
   PostgreSQL, up to each size in --records. Reported: import records/s,
   bytes per record, then `gpt2 ledger lookup --jsonl` of 500 edited
   copies of records (10% words replaced: fuzzy hits) and 500 texts not in
   the ledger, p50/p99 of the in-process per-lookup time, and recall.
   Also the rate of one record per transaction (`gpt2 ledger add`-like:
   import --batch 1, 2,000 records), which is the server's worst case.
2. Replicas: the built-in default model, C clients sending
   POST /v1/completions {max_tokens 32} back to back for --seconds through
   haproxy, to one replica and then to three (2 threads each, on this
   2-core machine: no scaling is expected). Reported: completions/s,
   tokens/s, p50/p99 latency, errors.
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
BOOKS = os.path.join(ROOT, "..", "shared", "data", "train", "gutenberg")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Cluster:
    """initdb + pg_ctl in a temporary directory."""

    def __init__(self):
        bins = sorted(d for d in os.listdir("/usr/lib/postgresql"))
        self.bin = f"/usr/lib/postgresql/{bins[-1]}/bin"
        self.dir = tempfile.mkdtemp(prefix="gpt2-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        os.mkdir(self.data)
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.data, "postgres", "postgres")
        self.port = free_port()
        self.run("initdb", "-D", self.data, "-U", "gpt2", "--auth=trust", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self.run("pg_ctl", "start", "-D", self.data, "-l", os.path.join(self.data, "log"), "-w", "-o", opts)

    def run(self, prog, *args):
        cmd = [os.path.join(self.bin, prog), *args]
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, schema):
        return f"postgres://gpt2@127.0.0.1:{self.port}/postgres?schema={schema}"

    def bytes_of(self, schema):
        out = subprocess.run(
            [os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "gpt2",
             "-d", "postgres", "-tAc",
             f"SELECT pg_total_relation_size('{schema}.records') + pg_total_relation_size('{schema}.lsh')"],
            check=True, capture_output=True, text=True)
        return int(out.stdout.strip())

    def stop(self):
        try:
            self.run("pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def word_chain():
    words = []
    for name in sorted(os.listdir(BOOKS))[:40]:
        with open(os.path.join(BOOKS, name), encoding="utf-8", errors="replace") as f:
            words.extend(re.findall(r"[A-Za-z']+|[.,;!?]", f.read()))
    nxt = {}
    for a, b in zip(words, words[1:]):
        nxt.setdefault(a, []).append(b)
    return words, nxt


def synthetic(rng, words, nxt, n_words=60):
    w = rng.choice(words)
    out = [w]
    for _ in range(n_words - 1):
        w = rng.choice(nxt.get(w) or words)
        out.append(w)
    return " ".join(out)


def edit(rng, text, words, rate=0.1):
    return " ".join(rng.choice(words) if rng.random() < rate else w for w in text.split())


def write_jsonl(path, texts):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "tokens": [1, 2, 3]}) + "\n")


def gpt2(*args, stdin=None):
    return subprocess.run([GPT2, *args], check=True, capture_output=True, text=True, input=stdin)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def lookups(at, path):
    out = gpt2("ledger", "lookup", *at, "--jsonl", path).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.strip()]
    ms = [r["seconds"] * 1000 for r in rows]
    return rows, {"p50_ms": round(pct(ms, 0.5), 2), "p99_ms": round(pct(ms, 0.99), 2)}


def bench_ledger(sizes, pg, tmp, only=None):
    rng = random.Random(15)
    words, nxt = word_chain()
    results = []
    backends = {
        "sqlite": lambda: ["--db", os.path.join(tmp, "ledger.sqlite")],
        "postgres": lambda: ["--state", pg.url("ledger_bench")],
    }
    backends = {k: v for k, v in backends.items() if only is None or k in only}
    made = 0
    all_texts = []
    done = {b: 0 for b in backends}
    for size in sizes:
        fresh = [synthetic(rng, words, nxt) for _ in range(size - made)]
        made = size
        all_texts.extend(fresh)
        chunk = os.path.join(tmp, "chunk.jsonl")
        write_jsonl(chunk, fresh)
        q_rng = random.Random(size)
        hits = q_rng.sample(range(len(all_texts)), 500)
        queries = os.path.join(tmp, "queries.jsonl")
        write_jsonl(queries, [edit(q_rng, all_texts[i], words) for i in hits])
        misses = os.path.join(tmp, "misses.jsonl")
        write_jsonl(misses, [synthetic(q_rng, words, nxt) for _ in range(500)])
        for name, at in backends.items():
            t = time.time()
            gpt2("ledger", "import", *at(), "--jsonl", chunk, "--batch", "1000")
            secs = time.time() - t
            done[name] = size
            rows, hit_lat = lookups(at(), queries)
            recall = sum(1 for r, i in zip(rows, hits) if any(m["record_id"] == i + 1 for m in r["matches"])) / len(hits)
            rows_m, miss_lat = lookups(at(), misses)
            false = sum(1 for r in rows_m if r["matches"])
            nbytes = (os.path.getsize(os.path.join(tmp, "ledger.sqlite")) if name == "sqlite"
                      else pg.bytes_of("ledger_bench"))
            r = {"backend": name, "records": size, "import_records_per_s": round(len(fresh) / secs),
                 "bytes_per_record": round(nbytes / size), "lookup_hit": hit_lat, "lookup_miss": miss_lat,
                 "recall_10pct_edits": recall, "false_matches_of_500": false}
            print(json.dumps(r), flush=True)
            results.append(r)
    # One record per transaction: the server's worst case (no group commit).
    singles = os.path.join(tmp, "singles.jsonl")
    write_jsonl(singles, [synthetic(rng, words, nxt) for _ in range(2000)])
    for name, at in [("sqlite", ["--db", os.path.join(tmp, "single.sqlite")]),
                     ("postgres", ["--state", pg.url("single_bench")])]:
        if only is not None and name not in only:
            continue
        t = time.time()
        gpt2("ledger", "import", *at, "--jsonl", singles, "--batch", "1")
        r = {"backend": name, "one_per_transaction_records_per_s": round(2000 / (time.time() - t))}
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


def start_server(state, port):
    p = subprocess.Popen([GPT2, "serve", "--addr", f"127.0.0.1:{port}", "--state", state,
                          "--threads", "2", "--slots", "16"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "listening on" in line:
            break
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p


def haproxy(ports, tmp):
    port = free_port()
    servers = "".join(f"  server r{i} 127.0.0.1:{p} check inter 500ms\n" for i, p in enumerate(ports))
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("global\n  maxconn 1024\ndefaults\n  mode http\n  timeout connect 2s\n"
                "  timeout client 120s\n  timeout server 120s\n"
                f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
                "backend b\n  balance leastconn\n  option httpchk GET /health\n" + servers)
    p = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    return p, port


def drive(port, key, clients, seconds):
    lat, tokens, errors = [], [0], [0]
    lock = threading.Lock()
    end = time.time() + seconds

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = 0
        while time.time() < end:
            n += 1
            body = json.dumps({"prompt": "Once upon a time", "max_tokens": 32, "seed": i * 100000 + n})
            t = time.time()
            try:
                conn.request("POST", "/v1/completions", body,
                             {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                r = conn.getresponse()
                data = json.loads(r.read())
                ok = r.status == 200
            except Exception:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ok, data = False, {}
            with lock:
                if ok:
                    lat.append(time.time() - t)
                    tokens[0] += data["usage"]["completion_tokens"]
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    return {"completions_per_s": round(len(lat) / wall, 2), "tokens_per_s": round(tokens[0] / wall, 1),
            "p50_s": round(pct(lat, 0.5), 3) if lat else None, "p99_s": round(pct(lat, 0.99), 3) if lat else None,
            "errors": errors[0]}


def bench_replicas(pg, tmp, clients, seconds, rounds):
    url = pg.url("serve_bench")
    key = json.loads(gpt2("keys", "create", "--state", url, "--name", "bench", "--scopes", "generate",
                          "--models", "*", "--json").stdout)["key"]
    results = []
    for rnd in range(rounds):
        for n in ([1, 3] if rnd % 2 == 0 else [3, 1]):
            ports = [free_port() for _ in range(n)]
            servers = [start_server(url, p) for p in ports]
            lb, port = haproxy(ports, tmp)
            drive(port, key, clients, 3)  # warm-up
            r = {"replicas": n, "clients": clients, "round": rnd, **drive(port, key, clients, seconds)}
            print(json.dumps(r), flush=True)
            results.append(r)
            lb.kill()
            for s in servers:
                s.terminate()
                s.wait()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", default="100000,1000000")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-ledger", action="store_true")
    ap.add_argument("--skip-replicas", action="store_true")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results-scale-out.json"))
    a = ap.parse_args()
    pg = Cluster()
    tmp = tempfile.mkdtemp(prefix="gpt2-scale-")
    try:
        out = {"machine": os.uname().nodename, "cores": os.cpu_count()}
        if not a.skip_ledger:
            out["ledger"] = bench_ledger([int(x) for x in a.records.split(",")], pg, tmp,
                                         a.backends.split(","))
        if not a.skip_replicas:
            out["replicas"] = bench_replicas(pg, tmp, a.clients, a.seconds, a.rounds)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {a.out}")
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
