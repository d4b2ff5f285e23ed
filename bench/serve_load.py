#!/usr/bin/env python3
"""Load test of `gpt2 serve` beside llama.cpp's own `llama-server`, then
a kill -9 under load followed by a ledger check.

    cargo build --release
    # llama.cpp from the source vendored in the llama-cpp-python sdist:
    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python -d sdist
    tar xzf sdist/llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build build -j2 --target llama-server
    # GGUFs of the default model by llama.cpp's own converter:
    python3 convert_hf_to_gguf.py HF_DIR --outtype f32 --outfile default-f32.gguf  (and f16)
    python3 bench/serve_load.py --llama-server PATH --gguf f32=default-f32.gguf \
        --gguf f16=default-f16.gguf [--clients 16,64] [--max-tokens 32,256] \
        [--seconds 15] [--rounds 2] [--json out.json]

For each precision (gpt2-rs serves the default model as it is built in for
f32, and `gpt2 quantize --to f16` of it for f16; llama-server the GGUF of
the same weights) and each client count C, both servers run with C slots
(`--slots C` / `-np C`, 2 threads each, llama-server's context C x n_ctx
so each slot has the model's whole context), and C clients send
POST /v1/completions {prompt, max_tokens, temperature 1} back to back,
streaming or not, for --seconds after a short warm-up. The contenders
alternate (ABBA over --rounds). gpt2-rs uses a `generate` key, so its
output is watermarked and recorded in the ledger, as every non-admin
caller's is. Reported per run: generated tokens/s, requests/s, time to
first token p50/p99 (streams: the first chunk with text), latency
p50/p99, 5xx other than deliberate 503s (must be 0), and the server's
peak RSS (VmHWM).

Then the kill test: a fresh gpt2 serve under load (half the clients
streaming), SIGKILLed mid-load; every text a client received (whole
completions, and what a cut stream had delivered) must be in the ledger,
byte for byte (its SHA-256 among the records').
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
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
    """Sends completions back to back until `stop`; records latencies, time
    to first token, statuses, tokens and (for the kill test) every text
    received."""

    def __init__(self, port, key, stop, stream, seed, max_tokens=32, extra=None):
        super().__init__(daemon=True)
        self.port, self.key, self.stop, self.stream = port, key, stop, stream
        self.max_tokens, self.extra = max_tokens, extra or {}
        self.rng = random.Random(seed)
        self.latencies, self.ttfts, self.statuses, self.tokens, self.received = [], [], {}, 0, []
        self.counting = True

    def run(self):
        conn = None
        while not self.stop.is_set():
            body = {"prompt": self.rng.choice(PROMPTS), "max_tokens": self.max_tokens, "temperature": 1.0,
                    **self.extra}
            if self.stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            headers = {"Content-Type": "application/json"}
            if self.key:
                headers["Authorization"] = "Bearer " + self.key
            t = time.perf_counter()
            tokens = 0
            try:
                reused = conn is not None
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                try:
                    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
                    r = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    if not reused:
                        raise
                    # The server closed a kept-alive connection (llama-server
                    # does after each stream): reconnect and send again.
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                    t = time.perf_counter()
                    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
                    r = conn.getresponse()
                if self.stream and r.status == 200:
                    status, tokens = self.read_stream(r, t)
                else:
                    data = json.loads(r.read())
                    status = r.status
                    if status == 200:
                        tokens = data["usage"]["completion_tokens"]
                        self.received.append(data["choices"][0]["text"])
            except (OSError, http.client.HTTPException, ValueError):
                status = "connection error"
                conn = None
                if self.stop.is_set():
                    break
                time.sleep(0.05)
            if not self.counting:
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.tokens += tokens
                self.latencies.append(time.perf_counter() - t)

    def read_stream(self, r, t0):
        text, done, usage, chunks, first = "", False, None, 0, None
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
                        if c.get("text"):
                            text += c["text"]
                            chunks += 1
                            if first is None:
                                first = time.perf_counter() - t0
                    if v.get("usage"):
                        usage = v["usage"]["completion_tokens"]
        finally:
            # Whatever arrived was shown to the client: it must be recorded.
            if text:
                self.received.append(text)
        if not done:
            raise OSError("stream cut")
        if first is not None and self.counting:
            self.ttfts.append(first)
        # llama-server sends one token per chunk; usage when it gives it.
        return 200, usage if usage is not None else chunks


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def load(port, key, clients, seconds, stream=False, max_tokens=32, warmup=0.0, stream_every=0, extra=None):
    stop = threading.Event()
    cs = [Client(port, key, stop, stream or (stream_every and i % stream_every == 0), i, max_tokens, extra)
          for i in range(clients)]
    for c in cs:
        c.counting = warmup <= 0
        c.start()
    if warmup > 0:
        time.sleep(warmup)
        for c in cs:
            c.counting = True
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for c in cs:
        c.join(timeout=300)
    elapsed = time.perf_counter() - t0
    lat = [x for c in cs for x in c.latencies]
    ttft = [x for c in cs for x in c.ttfts]
    statuses = {}
    for c in cs:
        for k, v in c.statuses.items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    return {
        "requests_per_s": len(lat) / elapsed,
        "generated_tokens_per_s": sum(c.tokens for c in cs) / elapsed,
        "p50_latency_s": pct(lat, 0.50),
        "p99_latency_s": pct(lat, 0.99),
        "p50_ttft_s": pct(ttft, 0.50),
        "p99_ttft_s": pct(ttft, 0.99),
        "statuses": statuses,
        "errors_5xx_not_503": sum(v for k, v in statuses.items() if k.startswith("5") and k != "503"),
        "seconds": elapsed,
    }, cs


def make_key(state, scopes):
    return json.loads(subprocess.run([GPT2, "keys", "create", "--state", state, "--name", "bench", "--scopes",
                                      scopes, "--models", "*", "--json"], check=True, capture_output=True,
                                     text=True).stdout)["key"]


def start_gpt2(state, port, threads, slots, model=None):
    key = make_key(state, "generate")
    cmd = [GPT2, "--threads", str(threads), "serve", "--addr", f"127.0.0.1:{port}", "--state", state,
           "--slots", str(slots), "--queue", str(max(64, slots))]
    if model:
        cmd += ["--model", f"default={model}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_ready(port, "/health")
    return proc, key


def start_llama(binary, gguf, port, threads, slots, n_ctx):
    proc = subprocess.Popen([binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
                             "-c", str(slots * n_ctx), "-t", str(threads), "-tb", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(port, "/health")
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def race(a, precision, gguf, slots, tmp):
    """Both servers up with `slots` slots; every (max_tokens, stream) load
    run on each, alternating."""
    n_ctx = json.load(open(os.path.join(DEFAULT_MODEL, "config.json")))["n_ctx"]
    model = None
    if precision != "f32":
        model = os.path.join(tmp, f"default-{precision}")
        if not os.path.exists(model):
            subprocess.run([GPT2, "quantize", DEFAULT_MODEL, model, "--to", precision], check=True,
                           capture_output=True)
    state = tempfile.mkdtemp(prefix="serve-load-", dir=tmp)
    gp, lp = free_port(), free_port()
    gproc, key = start_gpt2(state, gp, a.threads, slots, model)
    lproc = start_llama(a.llama_server, gguf, lp, a.threads, slots, n_ctx)
    admin = make_key(state, "generate,admin")
    runs = []
    try:
        for max_tokens in a.max_tokens:
            for stream in (False, True):
                for r in range(a.rounds):
                    order = [("gpt2-rs", gp, key, gproc, None), ("llama-server", lp, None, lproc, None)]
                    if a.unwatermarked:
                        order.insert(1, ("gpt2-rs unwatermarked", gp, admin, gproc, {"watermark": False}))
                    if r % 2:
                        order.reverse()
                    for name, port, k, proc, extra in order:
                        res, _ = load(port, k, slots, a.seconds, stream, max_tokens, warmup=a.warmup, extra=extra)
                        res.update(server=name, precision=precision, clients=slots, max_tokens=max_tokens,
                                   stream=stream, round=r, peak_rss_mb=peak_rss_mb(proc.pid))
                        print(json.dumps(res), flush=True)
                        runs.append(res)
    finally:
        stop(gproc)
        stop(lproc)
    return runs


def summary(runs):
    """Per configuration: each server's range over rounds, and the ratio
    of the medians."""
    keys = sorted({(r["precision"], r["clients"], r["max_tokens"], r["stream"]) for r in runs})
    print("| precision | clients | max_tokens | stream | gpt2-rs tok/s | llama-server tok/s | ratio | "
          "TTFT p99 gpt2-rs / llama | latency p99 gpt2-rs / llama | req/s gpt2-rs / llama | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    out = []
    for k in keys:
        g = [r for r in runs if (r["precision"], r["clients"], r["max_tokens"], r["stream"]) == k
             and r["server"] == "gpt2-rs"]
        l = [r for r in runs if (r["precision"], r["clients"], r["max_tokens"], r["stream"]) == k
             and r["server"] == "llama-server"]
        if not g or not l:
            continue

        def med(rs, f):
            xs = sorted(r[f] for r in rs)
            return xs[len(xs) // 2]

        def rng(rs, f):
            xs = [r[f] for r in rs]
            return f"{min(xs):.0f}-{max(xs):.0f}" if len(xs) > 1 else f"{xs[0]:.0f}"

        ratio = med(g, "generated_tokens_per_s") / med(l, "generated_tokens_per_s")
        u = [r for r in runs if (r["precision"], r["clients"], r["max_tokens"], r["stream"]) == k
             and r["server"] == "gpt2-rs unwatermarked"]
        wm_cost = 1 - med(g, "generated_tokens_per_s") / med(u, "generated_tokens_per_s") if u else None
        ttft = (f"{med(g, 'p99_ttft_s'):.3f} / {med(l, 'p99_ttft_s'):.3f}" if k[3] else "-")
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {rng(g, 'generated_tokens_per_s')} | "
              f"{rng(l, 'generated_tokens_per_s')} | {ratio:.2f} | {ttft} | "
              f"{med(g, 'p99_latency_s'):.2f} / {med(l, 'p99_latency_s'):.2f} | "
              f"{med(g, 'requests_per_s'):.1f} / {med(l, 'requests_per_s'):.1f} | "
              f"{max(r['peak_rss_mb'] for r in g):.0f} / {max(r['peak_rss_mb'] for r in l):.0f} |")
        if wm_cost is not None:
            print(f"|  | watermark cost: unwatermarked {rng(u, 'generated_tokens_per_s')} tok/s, "
                  f"watermarked {100 * wm_cost:.1f}% slower (median) |")
        out.append({"precision": k[0], "clients": k[1], "max_tokens": k[2], "stream": k[3],
                    "tokens_per_s_ratio": ratio, "watermark_cost": wm_cost})
    return out


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
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary")
    ap.add_argument("--gguf", action="append", default=[], help="PRECISION=FILE, the default model's GGUF")
    ap.add_argument("--clients", default="16,64")
    # 240, not 256: the default model's context is 256 tokens, and gpt2 serve
    # refuses (400, as OpenAI does) a prompt plus max_tokens beyond it.
    ap.add_argument("--max-tokens", default="32,240")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kill-after", type=float, default=10)
    ap.add_argument("--skip-kill", action="store_true")
    ap.add_argument("--unwatermarked", action="store_true",
                    help="also run gpt2-rs with an admin key and watermark: false (the watermark's cost)")
    ap.add_argument("--json")
    a = ap.parse_args()
    a.clients = [int(x) for x in a.clients.split(",")]
    a.max_tokens = [int(x) for x in a.max_tokens.split(",")]
    results = {"threads": a.threads, "seconds": a.seconds, "rounds": a.rounds, "runs": []}
    tmp = tempfile.mkdtemp(prefix="serve-bench-")
    try:
        if a.llama_server:
            for spec in a.gguf:
                precision, gguf = spec.split("=", 1)
                for slots in a.clients:
                    results["runs"] += race(a, precision, gguf, slots, tmp)
            results["summary"] = summary(results["runs"])
        if not a.skip_kill:
            a.clients = a.clients[0]
            results["kill"] = kill_test(a)
            print("kill -9:", json.dumps(results["kill"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
