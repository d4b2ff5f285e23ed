#!/usr/bin/env python3
"""Soak test of `gpt2 serve` (issue 13): mixed load for --minutes, the
server's resident memory sampled every --every seconds.

    cargo build --release
    python3 bench/soak.py [--minutes 30] [--clients 6] [--threads 1] [--json out.json]

The server runs the built-in default model on a fresh state directory with
one key of every scope. Each client loops over a mix of requests: plain
and streamed completions (32 to 128 tokens), echo scoring of a 200-token
text, /v1/detect, /v1/watermark/detect, /v1/provenance/lookup, and a
request with a bad key. Reported: RSS (VmRSS) at every sample, its value
at the end of the warm-up (--warmup-minutes) and at the end, the growth
between them, requests by status, and the ledger's size. Growth after the
warm-up should stay within 10%; the ledger and the audit log grow by
design (on disk, not in memory).
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import GPT2, PROMPTS, free_port, make_key, wait_ready  # noqa: E402

TEXT = ("The little girl walked down to the river with her basket, and there she met an old man "
        "who asked her where she was going so early in the morning. ") * 7


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request(port, key, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {key}",
                                                "Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def client(port, key, stop_at, seed, statuses, lock):
    rng = random.Random(seed)
    mix = [
        ("/v1/completions", lambda: {"prompt": rng.choice(PROMPTS), "max_tokens": rng.choice([32, 64, 128])}),
        ("/v1/completions", lambda: {"prompt": rng.choice(PROMPTS), "max_tokens": 64, "stream": True}),
        ("/v1/completions", lambda: {"prompt": TEXT, "echo": True, "max_tokens": 0, "logprobs": 1}),
        ("/v1/detect", lambda: {"text": TEXT}),
        ("/v1/watermark/detect", lambda: {"text": TEXT}),
        ("/v1/provenance/lookup", lambda: {"text": TEXT}),
    ]
    while time.time() < stop_at:
        path, body = rng.choice(mix)
        bad = rng.random() < 0.05
        try:
            s = request(port, "gpt2-not-a-key" if bad else key, path, body())
        except OSError as e:
            s = f"error {type(e).__name__}"
        with lock:
            statuses[str(s)] = statuses.get(str(s), 0) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup-minutes", type=float, default=5)
    ap.add_argument("--every", type=float, default=10)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    state = tempfile.mkdtemp(prefix="gpt2-soak-")
    port = free_port()
    key = make_key(state, "generate,score,detect")
    proc = subprocess.Popen([GPT2, "--threads", str(a.threads), "serve", "--addr", f"127.0.0.1:{port}",
                             "--state", state, "--slots", "16"], stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, "/health")
        t0 = time.time()
        stop_at = t0 + a.minutes * 60
        statuses, lock = {}, threading.Lock()
        threads = [threading.Thread(target=client, args=(port, key, stop_at, i, statuses, lock), daemon=True)
                   for i in range(a.clients)]
        for t in threads:
            t.start()
        samples = []
        while time.time() < stop_at:
            samples.append((round(time.time() - t0, 1), round(rss_mb(proc.pid), 1)))
            print(f"{samples[-1][0]:7.0f} s  RSS {samples[-1][1]:7.1f} MB  {dict(sorted(statuses.items()))}",
                  flush=True)
            time.sleep(a.every)
        for t in threads:
            t.join(timeout=180)
        samples.append((round(time.time() - t0, 1), round(rss_mb(proc.pid), 1)))
        warm = [r for t, r in samples if t >= a.warmup_minutes * 60]
        at_warm, at_end = warm[0], samples[-1][1]
        result = {
            "minutes": a.minutes, "clients": a.clients, "threads": a.threads,
            "rss_mb_after_warmup": at_warm, "rss_mb_end": at_end,
            "rss_mb_max_after_warmup": max(warm),
            "growth_after_warmup": (at_end - at_warm) / at_warm,
            "statuses": statuses,
            "ledger_mb": os.path.getsize(os.path.join(state, "ledger.sqlite")) / 2**20,
            "keys_db_mb": os.path.getsize(os.path.join(state, "keys.sqlite")) / 2**20,
            "samples": samples,
        }
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
        if a.json:
            json.dump(result, open(a.json, "w"), indent=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
