#!/usr/bin/env python3
"""Training reference from PyTorch, llm.c style, for crates/train's tests.

For a small fixed-seed GPT-2 (weights at std 0.1, non-trivial LayerNorms)
and one fixed batch, writes into OUT:
  config.json, model.safetensors   the initial weights (f32)
  batch.json                       B, T, input ids, target ids
  logits.f32                       the logits, [B*T, V], little-endian f32
  grads.f32                        every parameter's gradient of the mean
                                   cross-entropy, in checkpoint order
                                   (wte, wpe, h.0..h.L-1, ln_f)
  reference.json                   the loss, and the losses of 10 AdamW steps
                                   (lr 1e-3, betas 0.9/0.95, eps 1e-8,
                                   decay 0.1 on 2-D tensors, clip at norm 1)

    python3 tools/reference/train_reference.py --out crates/train/tests/fixtures/train-small
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import gpt2_reference as ref  # noqa: E402


def ordered_params(model):
    n_layer = model.config.n_layer
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    per_layer = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                 "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    for i in range(n_layer):
        names += [f"transformer.h.{i}.{n}" for n in per_layer]
    names += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = ref.build("parity-small", 4321, 0.1)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    ref.save_checkpoint(model, a.out, "f32", prefix=False, lm_head=False)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(99)
    x = torch.randint(0, V, (a.batch, a.seq), generator=g)
    y = torch.randint(0, V, (a.batch, a.seq), generator=g)
    json.dump({"batch": a.batch, "seq": a.seq, "inputs": x.flatten().tolist(), "targets": y.flatten().tolist()},
              open(os.path.join(a.out, "batch.json"), "w"))

    params = ordered_params(model)
    logits = model(x).logits
    loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
    loss.backward()
    logits.detach().numpy().astype("<f4").tofile(os.path.join(a.out, "logits.f32"))
    torch.cat([p.grad.flatten() for p in params]).detach().numpy().astype("<f4").tofile(os.path.join(a.out, "grads.f32"))

    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    losses = []
    for _ in range(a.steps):
        opt.zero_grad(set_to_none=True)
        loss_i = F.cross_entropy(model(x).logits.view(-1, V), y.view(-1))
        loss_i.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss_i.item())
    json.dump({"loss": loss.item(), "adamw_losses": losses, "lr": a.lr, "clip": 1.0}, open(os.path.join(a.out, "reference.json"), "w"), indent=1)
    print("loss", loss.item(), "losses", [round(l, 4) for l in losses])


if __name__ == "__main__":
    main()
