#!/usr/bin/env python3
"""`gpt2 eval` beside the Python reference on the same checkpoint and file.

    python3 bench/eval_vs_python.py [--shape 124M | --model DIR] [--task wikitext]
        [--data ../shared/data/eval/wikitext-2-raw/wiki.test.raw] [--threads 2] [--json out.json]

Runs the two one after the other on the same machine (the Rust binary from
target/release, built first with `cargo build --release`; the reference is
tools/reference/eval_reference.py: transformers in float32 with
lm-evaluation-harness's own functions) and prints wall time, tokens/s, the
speed ratio and every metric side by side with its relative difference.
With --shape, a fixed-seed random checkpoint of that GPT-2 shape is created
first (tools/reference/gpt2_reference.py).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
REF = os.path.join(ROOT, "tools", "reference")


def timed(cmd):
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t, json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="124M")
    ap.add_argument("--model", help="an existing checkpoint directory instead of --shape")
    ap.add_argument("--task", default="wikitext")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "eval", "wikitext-2-raw", "wiki.test.raw"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the comparison here")
    a = ap.parse_args()

    model = a.model
    if model is None:
        model = os.path.join(tempfile.gettempdir(), f"eval-bench-{a.shape}")
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            subprocess.run([sys.executable, os.path.join(REF, "gpt2_reference.py"), "checkpoint", "--shape", a.shape,
                            "--out", model, "--std", "0.02"], check=True)
    limit = ["--limit", str(a.limit)] if a.limit else []
    gpt2 = os.path.join(ROOT, "target", "release", "gpt2")
    ours_s, ours = timed([gpt2, "--threads", str(a.threads), "eval", a.task.replace("_", "-"), "--data", a.data,
                          "--model", model, "--json"] + limit)
    ref_s, ref = timed([sys.executable, os.path.join(REF, "eval_reference.py"), a.task, "--data", a.data,
                        "--model", model, "--threads", str(a.threads)] + limit)
    task = next(iter(ref["results"]))
    tokens = next(iter(ours["tokens"].values()))
    report = {"task": task, "model": model, "data": a.data, "threads": a.threads, "tokens": tokens,
              "gpt2": {"wall_s": ours_s, "tokens_per_s": tokens / ours_s},
              "reference": {"wall_s": ref_s, "tokens_per_s": tokens / ref_s},
              "speedup": ref_s / ours_s, "metrics": {}}
    for key, want in ref["results"][task].items():
        if key == "alias" or "_stderr" in key:
            continue
        got = ours["results"][task][key]
        report["metrics"][key] = {"gpt2": got, "reference": want, "rel_diff": abs(got - want) / abs(want) if want else abs(got)}
    print(f"{task} on {a.data} ({tokens} tokens), {a.threads} threads")
    print(f"  gpt2 eval        {ours_s:8.1f} s  {tokens / ours_s:8.1f} tokens/s")
    print(f"  Python reference {ref_s:8.1f} s  {tokens / ref_s:8.1f} tokens/s   (gpt2 is {ref_s / ours_s:.2f}x faster)")
    for key, m in report["metrics"].items():
        print(f"  {key:24s} {m['gpt2']:.6f} vs {m['reference']:.6f}  rel diff {m['rel_diff']:.2e}")
    if a.json:
        json.dump(report, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
