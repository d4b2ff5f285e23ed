#!/usr/bin/env python3
"""Training speed: `gpt2 train` beside a PyTorch fp32 training loop (same
shape, batch, AdamW, clipping), same machine, same run.

    python3 bench/train_vs_pytorch.py --data DIR [--threads 2] [--steps 8]

DIR is a `gpt2 prepare` folder. Shapes: the 124M preset at batch 4 x 256,
and the default model's shape (6 layers, 8 heads, width 256, context 256)
at batch 16 x 256. Tokens/s counts the steady steps (the first is warm-up);
peak memory is each process's maximum resident set.
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "124M": dict(layers=12, heads=12, embd=768, ctx=1024, batch=4, seq=256),
    "default": dict(layers=6, heads=8, embd=256, ctx=256, batch=16, seq=256),
}


def ours(gpt2, data, shape, steps, threads):
    s = SHAPES[shape]
    out = tempfile.mkdtemp()
    cmd = ["/usr/bin/time", "-f", "%M", gpt2, "--threads", str(threads), "train", "--data", data, "--out", os.path.join(out, "run"),
           "--layers", str(s["layers"]), "--heads", str(s["heads"]), "--embd", str(s["embd"]), "--ctx", str(s["ctx"]),
           "--batch", str(s["batch"]), "--seq", str(s["seq"]), "--steps", str(steps), "--warmup", "1",
           "--eval-every", "0", "--sample-every", "0", "--checkpoint-every", "0", "--eval-batches", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(open(os.path.join(out, "run", "log.csv"))))
    t = [float(x["elapsed_s"]) for x in rows]
    tokens = s["batch"] * s["seq"] * (len(rows) - 1)
    return {"tokens_per_s": tokens / (t[-1] - t[0]), "peak_rss_mb": int(r.stderr.strip().splitlines()[-1]) / 1024}


def pytorch(shape, steps, threads):
    code = f"""
import json, resource, time, torch, torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
torch.set_num_threads({threads})
s = {SHAPES[shape]!r}
cfg = GPT2Config(n_layer=s["layers"], n_head=s["heads"], n_embd=s["embd"], n_positions=s["ctx"], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
m = GPT2LMHeadModel(cfg).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
x = torch.randint(0, 50257, (s["batch"], s["seq"]))
times = []
for i in range({steps}):
    t = time.perf_counter()
    loss = F.cross_entropy(m(x).logits.view(-1, 50257), x.view(-1))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    times.append(time.perf_counter() - t)
tok = s["batch"] * s["seq"] * ({steps} - 1)
print(json.dumps({{"tokens_per_s": tok / sum(times[1:]), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--gpt2", default="target/release/gpt2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--before", help="another gpt2 binary (an earlier commit's), run beside --gpt2 in turn")
    ap.add_argument("--json")
    a = ap.parse_args()
    result = {}
    print(f"{'shape':10}{'gpt2-rs tok/s':>15}{'PyTorch tok/s':>15}{'ratio':>8}{'gpt2-rs MB':>12}{'PyTorch MB':>12}")
    for shape in SHAPES:
        r, p = ours(a.gpt2, a.data, shape, a.steps, a.threads), pytorch(shape, a.steps, a.threads)
        result[shape] = {"gpt2-rs": r, "pytorch": p, "ratio": r["tokens_per_s"] / p["tokens_per_s"]}
        print(f"{shape:10}{r['tokens_per_s']:15.1f}{p['tokens_per_s']:15.1f}{result[shape]['ratio']:8.2f}{r['peak_rss_mb']:12.0f}{p['peak_rss_mb']:12.0f}")
        if a.before:
            b = ours(a.before, a.data, shape, a.steps, a.threads)
            result[shape]["gpt2-rs before"] = b
            result[shape]["before_ratio"] = b["tokens_per_s"] / p["tokens_per_s"]
            print(f"{'  before':10}{b['tokens_per_s']:15.1f}{'':15}{result[shape]['before_ratio']:8.2f}{b['peak_rss_mb']:12.0f}")
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
