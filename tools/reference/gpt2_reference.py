#!/usr/bin/env python3
"""Reference outputs from PyTorch + transformers, for the Rust parity tests.

Builds a fixed-seed random GPT-2 checkpoint in the Hugging Face layout and
writes what transformers computes for it: per-token log-probabilities,
argmax, rank, entropy and top-5 of every position.

Weights are drawn far from GPT-2's 0.02 initialisation (std 0.1 by default,
LayerNorm weights in [0.5, 1.5], non-zero biases) because near-uniform
outputs hide bugs.

    python3 tools/reference/gpt2_reference.py checkpoint --shape tiny --out DIR
    python3 tools/reference/gpt2_reference.py reference --model DIR --ids ids.json --out ref.json

Requires: torch, transformers, safetensors (pip install torch transformers safetensors tiktoken).
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

SHAPES = {
    # name: (vocab, n_ctx, n_embd, n_layer, n_head)
    "parity-small": (1024, 64, 64, 2, 4),
    "tiny": (50257, 128, 16, 2, 2),
    "124M": (50257, 1024, 768, 12, 12),
    "355M": (50257, 1024, 1024, 24, 16),
}


def build(shape, seed, std):
    vocab, n_ctx, n_embd, n_layer, n_head = SHAPES[shape]
    config = GPT2Config(vocab_size=vocab, n_positions=n_ctx, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if ".ln_" in name or name.startswith("ln_f"):
                if name.endswith("weight"):
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def save_checkpoint(model, out, dtype, prefix, lm_head):
    os.makedirs(out, exist_ok=True)
    model.config.save_pretrained(out)
    cast = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    tensors = {}
    for name, t in model.transformer.state_dict().items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue
        tensors[("transformer." if prefix else "") + name] = t.detach().to(cast).contiguous().clone()
    if lm_head:
        tensors["lm_head.weight"] = model.transformer.wte.weight.detach().to(cast).contiguous().clone()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    # The reference must see exactly the stored (possibly rounded) weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(cast).to(torch.float32))


def load(dir_):
    return GPT2LMHeadModel.from_pretrained(dir_, torch_dtype=torch.float32).eval()


def windows(tokens, prefix, n_ctx, stride):
    """(inputs, scored targets) per window over [prefix] + tokens, written
    out independently of the Rust code: lm-eval's rolling loglikelihood when
    stride == n_ctx, else Hugging Face's sliding-window loop."""
    seq = [prefix] + tokens
    out = []
    if stride == n_ctx:
        scored = 0
        while scored < len(tokens):
            end = scored + min(len(tokens) - scored, n_ctx)
            out.append((seq[max(0, end - n_ctx):end], seq[scored + 1:end + 1]))
            scored = end
        return out
    prev_end = 0
    for begin in range(0, len(seq), stride):
        end = min(begin + n_ctx, len(seq))
        trg_len = end - prev_end
        inputs = seq[begin:end]
        # HF masks all but the last trg_len labels; the shift drops label 0.
        targets = inputs[1:][-trg_len:]
        out.append((inputs[:-1], targets))
        prev_end = end
        if end == len(seq):
            break
    return out


@torch.no_grad()
def reference(model, tokens, prefix, stride, top=5):
    n_ctx = model.config.n_positions
    rows = []
    for inputs, targets in windows(tokens, prefix, n_ctx, stride):
        logits = model(torch.tensor([inputs])).logits[0].to(torch.float64)
        logp = torch.log_softmax(logits, dim=-1)[-len(targets):]
        for lp, t in zip(logp, targets):
            p = lp.exp()
            top_v, top_i = lp.topk(top)
            rows.append({
                "id": t,
                "logprob": lp[t].item(),
                "argmax": int(lp.argmax().item()),
                "rank": int((lp > lp[t]).sum().item()) + 1,
                "entropy": float(-(p * lp).sum().item()),
                "top": [[int(i), float(v)] for i, v in zip(top_i.tolist(), top_v.tolist())],
            })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint", help="write a fixed-seed random checkpoint")
    c.add_argument("--shape", choices=SHAPES, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=1234)
    c.add_argument("--std", type=float, default=0.1)
    c.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    c.add_argument("--prefix", action="store_true", help="store names with the transformer. prefix")
    c.add_argument("--lm-head", action="store_true", help="also store the tied lm_head.weight")
    r = sub.add_parser("reference", help="score token ids with transformers")
    r.add_argument("--model", required=True)
    r.add_argument("--ids", required=True, help="JSON array of token ids, or a text file encoded with tiktoken gpt2")
    r.add_argument("--prefix-token", type=int, default=50256)
    r.add_argument("--stride", type=int, default=0, help="default: the context length")
    r.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.set_num_threads(int(os.environ.get("THREADS", torch.get_num_threads())))
    if a.cmd == "checkpoint":
        model = build(a.shape, a.seed, a.std)
        save_checkpoint(model, a.out, a.dtype, a.prefix, a.lm_head)
        print(f"wrote {a.out} ({a.shape}, {a.dtype})")
    else:
        model = load(a.model)
        if a.ids.endswith(".json"):
            tokens = json.load(open(a.ids))
        else:
            from tiktoken_offline import gpt2_encoding
            tokens = gpt2_encoding().encode_ordinary(open(a.ids, encoding="utf-8").read())
        stride = a.stride or model.config.n_positions
        rows = reference(model, tokens, a.prefix_token, stride)
        json.dump({"model": a.model, "prefix_token": a.prefix_token, "stride": stride, "tokens": rows}, open(a.out, "w"))
        mean = sum(r["logprob"] for r in rows) / max(1, len(rows))
        print(f"wrote {a.out}: {len(rows)} tokens, mean logprob {mean:.6f}, ppl {math.exp(-mean):.4f}")


if __name__ == "__main__":
    main()
