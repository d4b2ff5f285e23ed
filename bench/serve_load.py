#!/usr/bin/env python3
"""Load test of `gpt2 serve` beside llama.cpp's server, then a kill -9
under load followed by a ledger check.

    cargo build --release
    pip install gguf "llama-cpp-python[server]"
    python3 bench/serve_load.py [--clients 16] [--seconds 60] [--threads 2] [--json out.json]

Both servers get the same model (the default model built into gpt2; for
llama.cpp the same weights written as an f32 GGUF with bench/peers.py's
writer) and the same load: --clients concurrent clients, each sending
POST /v1/completions {prompt, max_tokens 32, temperature 1} back to back
for --seconds. Reported per server: requests/s, generated tokens/s, p50
and p99 latency, responses by status (5xx other than deliberate 503s must
be 0), and the server's peak RSS (VmHWM).

Then the kill test: a fresh gpt2 serve under the same load (half the
clients streaming), SIGKILLed mid-load; every text a client received
(whole completions, and what a cut stream had delivered) must be in the
ledger, byte for byte (its SHA-256 among the records').
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
DEFAULT_MODEL = os.path.join(ROOT, "models", "default")
PROMPTS = ["Once upon a time", "The little girl", "In the morning the king", "She opened the door and",
           "The dog ran", "Long ago, in a land far away,", "Tom said", "The sun was"]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_ready(port, path, headers=None, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path, headers=headers or {})
            if c.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server on {port} did not come up")


class Client(threading.Thread):
    """Sends completions back to back until `stop`; records latencies,
    statuses, tokens and (for the kill test) every text received."""

    def __init__(self, port, key, stop, stream, seed):
        super().__init__(daemon=True)
        self.port, self.key, self.stop, self.stream = port, key, stop, stream
        self.rng = random.Random(seed)
        self.latencies, self.statuses, self.tokens, self.received = [], {}, 0, []

    def run(self):
        conn = None
        while not self.stop.is_set():
            body = {"prompt": self.rng.choice(PROMPTS), "max_tokens": 32, "temperature": 1.0}
            if self.stream:
                body["stream"] = True
            headers = {"Content-Type": "application/json"}
            if self.key:
                headers["Authorization"] = "Bearer " + self.key
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
                r = conn.getresponse()
                if self.stream and r.status == 200:
                    status = self.read_stream(r)
                else:
                    data = json.loads(r.read())
                    status = r.status
                    if status == 200:
                        self.tokens += data["usage"]["completion_tokens"]
                        self.received.append(data["choices"][0]["text"])
            except (OSError, http.client.HTTPException, ValueError):
                status = "connection error"
                conn = None
                if self.stop.is_set():
                    break
                time.sleep(0.05)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(time.perf_counter() - t)

    def read_stream(self, r):
        text, done = "", False
        try:
            buf = b""
            while True:
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    if not ev.startswith(b"data: "):
                        continue
                    data = ev[6:]
                    if data == b"[DONE]":
                        done = True
                        continue
                    v = json.loads(data)
                    for c in v.get("choices", []):
                        text += c["text"]
                    if "usage" in v:
                        self.tokens += v["usage"]["completion_tokens"]
        finally:
            # Whatever arrived was shown to the client: it must be recorded.
            if text:
                self.received.append(text)
        if not done:
            raise OSError("stream cut")
        return 200


def load(port, key, clients, seconds, stream_every=0):
    stop = threading.Event()
    cs = [Client(port, key, stop, stream_every and i % stream_every == 0, i) for i in range(clients)]
    t0 = time.perf_counter()
    for c in cs:
        c.start()
    time.sleep(seconds)
    stop.set()
    for c in cs:
        c.join(timeout=150)
    elapsed = time.perf_counter() - t0
    lat = sorted(x for c in cs for x in c.latencies)
    statuses = {}
    for c in cs:
        for k, v in c.statuses.items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    ok = len(lat)

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {
        "requests_per_s": ok / elapsed,
        "generated_tokens_per_s": sum(c.tokens for c in cs) / elapsed,
        "p50_latency_s": pct(0.50),
        "p99_latency_s": pct(0.99),
        "statuses": statuses,
        "errors_5xx_not_503": sum(v for k, v in statuses.items() if k.startswith("5") and k != "503"),
        "seconds": elapsed,
    }, cs


def start_gpt2(state, port, threads, slots):
    key = json.loads(subprocess.run([GPT2, "keys", "create", "--state", state, "--name", "bench", "--scopes",
                                     "generate", "--models", "*", "--json"], check=True, capture_output=True,
                                    text=True).stdout)["key"]
    proc = subprocess.Popen([GPT2, "--threads", str(threads), "serve", "--addr", f"127.0.0.1:{port}", "--state", state,
                             "--slots", str(slots)], stderr=subprocess.DEVNULL)
    wait_ready(port, "/health")
    return proc, key


def bench_gpt2(a):
    state = tempfile.mkdtemp(prefix="serve-load-")
    port = free_port()
    proc, key = start_gpt2(state, port, a.threads, a.clients)
    try:
        r, _ = load(port, key, a.clients, a.seconds)
        r["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return r


def bench_llama(a):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # the GGUF writer (tensor names and layout as llama.cpp's converter)
    out = os.path.join(tempfile.gettempdir(), "serve-load-default-f32.gguf")
    peers.write_gguf(DEFAULT_MODEL, out, "f32")
    port = free_port()
    cfg = json.load(open(os.path.join(DEFAULT_MODEL, "config.json")))
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", out, "--port", str(port),
                             "--n_ctx", str(cfg["n_ctx"]), "--n_threads", str(a.threads), "--n_threads_batch",
                             str(a.threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, "/v1/models")
        r, _ = load(port, None, a.clients, a.seconds)
        r["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return r


def kill_test(a):
    state = tempfile.mkdtemp(prefix="serve-kill-")
    port = free_port()
    proc, key = start_gpt2(state, port, a.threads, a.clients)
    stop = threading.Event()
    cs = [Client(port, key, stop, i % 2 == 0, 100 + i) for i in range(a.clients)]
    for c in cs:
        c.start()
    time.sleep(a.kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for c in cs:
        c.join(timeout=30)
    received = [t for c in cs for t in c.received]
    db = sqlite3.connect(os.path.join(state, "ledger.sqlite"))
    hashes = {h for (h,) in db.execute("SELECT sha256 FROM records")}
    missing = [t for t in received if hashlib.sha256(t.encode()).hexdigest() not in hashes]
    return {"texts_received": len(received), "ledger_records": len(hashes), "missing_from_ledger": len(missing),
            "kill_after_s": a.kill_after}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kill-after", type=float, default=10)
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    results = {"clients": a.clients, "seconds": a.seconds, "threads": a.threads}
    results["gpt2-rs"] = bench_gpt2(a)
    print("gpt2-rs:", json.dumps(results["gpt2-rs"]), flush=True)
    if not a.skip_llama:
        try:
            results["llama.cpp"] = bench_llama(a)
            print("llama.cpp:", json.dumps(results["llama.cpp"]), flush=True)
        except (ImportError, SystemExit) as e:
            print(f"llama.cpp server skipped: {e}", flush=True)
    results["kill"] = kill_test(a)
    print("kill -9:", json.dumps(results["kill"]), flush=True)
    if "llama.cpp" in results:
        g, l = results["gpt2-rs"], results["llama.cpp"]
        print("| server | req/s | gen tok/s | p50 s | p99 s | 5xx (not 503) | peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for name in ("gpt2-rs", "llama.cpp"):
            r = results[name]
            print(f"| {name} | {r['requests_per_s']:.2f} | {r['generated_tokens_per_s']:.1f} | {r['p50_latency_s']:.3f} | "
                  f"{r['p99_latency_s']:.3f} | {r['errors_5xx_not_503']} | {r['peak_rss_mb']:.0f} |")
        print(f"gpt2-rs / llama.cpp: requests/s {g['requests_per_s'] / l['requests_per_s']:.2f}x, "
              f"tokens/s {g['generated_tokens_per_s'] / l['generated_tokens_per_s']:.2f}x, "
              f"p50 {g['p50_latency_s'] / l['p50_latency_s']:.2f}x")
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
