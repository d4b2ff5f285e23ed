#!/usr/bin/env python3
"""Engine speed beside PyTorch/transformers, f32, same machine, same run.

    python3 bench/engine_vs_pytorch.py [--shape 124M] [--threads 2] [--json out.json]

Creates a fixed-seed random checkpoint of the given shape, then alternates:
  - gpt2 bench (in-process): prefill of N tokens (last-position logits),
    scoring of N tokens (all logits + log-softmax statistics), decode of G
    greedy tokens after a P-token prompt, and this machine's read bandwidth;
  - PyTorch: GPT2LMHeadModel forward over N tokens (all logits), and
    transformers `generate` (greedy, KV cache) of G tokens after P tokens.
Reports tokens/s and the ratios. Requires torch, transformers, safetensors.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "reference"))


def best_of(n, f):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def pytorch(model_dir, n_tokens, prompt, gen, repeat):
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = torch.arange(n_tokens).unsqueeze(0) * 7 % 50000
    with torch.inference_mode():
        model(ids)  # warm-up
        forward = best_of(repeat, lambda: model(ids))
        p = ids[:, :prompt]
        gen_kwargs = dict(max_new_tokens=gen, min_new_tokens=gen, do_sample=False, use_cache=True, pad_token_id=0)
        model.generate(p, **gen_kwargs)
        total = best_of(repeat, lambda: model.generate(p, **gen_kwargs))
        prefill = best_of(repeat, lambda: model(p))
    return {"forward_tokens_per_s": n_tokens / forward, "decode_tokens_per_s": gen / (total - prefill)}


def ours(gpt2, model_dir, n_tokens, prompt, gen, threads, repeat):
    def bench(p, g):
        out = subprocess.run([gpt2, "--threads", str(threads), "bench", "--model", model_dir, "--prompt-tokens", str(p),
                              "--gen-tokens", str(g), "--repeat", str(repeat), "--json"], check=True, capture_output=True, text=True)
        return json.loads(out.stdout)
    long = bench(n_tokens, 0)
    short = bench(prompt, gen)
    return {"prefill_tokens_per_s": long["prefill_tokens_per_s"], "score_tokens_per_s": long["score_tokens_per_s"],
            "decode_tokens_per_s": short["decode_tokens_per_s"], "memory_bandwidth_gb_s": short["memory_bandwidth_gb_s"],
            "decode_bound_tokens_per_s": short["decode_bound_tokens_per_s"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="124M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gpt2", default="target/release/gpt2")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    import gpt2_reference as ref
    model_dir = os.path.join(a.workdir, f"bench-{a.shape}")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        ref.save_checkpoint(ref.build(a.shape, 1234, 0.02), model_dir, "f32", prefix=False, lm_head=False)

    # Alternate contenders so drift on the machine hits both alike.
    runs = {"gpt2-rs": [], "pytorch": []}
    for _ in range(2):
        runs["gpt2-rs"].append(ours(a.gpt2, model_dir, a.tokens, a.prompt, a.gen, a.threads, a.repeat))
        runs["pytorch"].append(pytorch(model_dir, a.tokens, a.prompt, a.gen, a.repeat))
    best = {k: {m: max(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    r, p = best["gpt2-rs"], best["pytorch"]
    result = {
        "shape": a.shape, "threads": a.threads, "tokens": a.tokens, "prompt": a.prompt, "gen": a.gen,
        "torch": torch.__version__, "gpt2-rs": r, "pytorch": p,
        "ratios": {
            "prefill_vs_pytorch_forward": r["prefill_tokens_per_s"] / p["forward_tokens_per_s"],
            "scoring_vs_pytorch_forward": r["score_tokens_per_s"] / p["forward_tokens_per_s"],
            "decode_vs_transformers_generate": r["decode_tokens_per_s"] / p["decode_tokens_per_s"],
            "decode_vs_bandwidth_bound": r["decode_tokens_per_s"] / r["decode_bound_tokens_per_s"],
        },
    }
    print(f"{'':28}{'gpt2-rs':>12}{'PyTorch':>12}{'ratio':>8}")
    print(f"{'prefill %d tok/s' % a.tokens:28}{r['prefill_tokens_per_s']:12.1f}{p['forward_tokens_per_s']:12.1f}{result['ratios']['prefill_vs_pytorch_forward']:8.2f}")
    print(f"{'scoring %d tok/s' % a.tokens:28}{r['score_tokens_per_s']:12.1f}{p['forward_tokens_per_s']:12.1f}{result['ratios']['scoring_vs_pytorch_forward']:8.2f}")
    print(f"{'decode tok/s':28}{r['decode_tokens_per_s']:12.1f}{p['decode_tokens_per_s']:12.1f}{result['ratios']['decode_vs_transformers_generate']:8.2f}")
    print(f"decode bound {r['decode_bound_tokens_per_s']:.1f} tok/s at {r['memory_bandwidth_gb_s']:.1f} GB/s; "
          f"decode at {100 * result['ratios']['decode_vs_bandwidth_bound']:.0f}% of it")
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
