#!/usr/bin/env python3
"""GGUF fixtures for crates/model/tests/gguf.rs, written with the `gguf`
package (the writer llama.cpp's convert_hf_to_gguf.py uses), and their
expected values computed independently of this project: every tensor read
back and dequantized by gguf-py, the model run by transformers.

    pip install gguf numpy torch transformers
    python3 tools/reference/gguf_fixtures.py --out crates/model/tests/fixtures/gguf

Writes:
- tiny.gguf: a GPT-2 of 2 layers, 2 heads, n_embd 32, context 32, with
  GPT-2's whole tokenizer (tokens and merges from ../shared/data/bpe), its
  tensors in every type the loader reads as llama.cpp lays them out
  (matrices [out, in]), fixed-seed std-0.1 weights;
  tiny.expected.json: the token ids scored, and transformers' log-probs of
  each (the first conditioned on <|endoftext|>) with the weights gguf-py
  dequantized from the file.
- blocks.gguf: one tensor per block type (q8_0, q4_0, q6_K, f16, bf16) and
  beside each, `NAME.f32`, gguf-py's dequantization of it.
"""
import argparse
import json
import os

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BPE = os.path.join(ROOT, "..", "shared", "data", "bpe")
C, HEADS, LAYERS, CTX, VOCAB = 32, 2, 2, 32, 50257
EOT = 50256

# The type of each tensor in tiny.gguf: every path of the loader once.
TYPES = {
    "token_embd.weight": Q.Q4_0,
    "position_embd.weight": Q.F16,
    "blk.0.attn_qkv.weight": Q.F32,
    "blk.0.attn_output.weight": Q.F16,
    "blk.0.ffn_up.weight": Q.Q8_0,
    "blk.0.ffn_down.weight": Q.Q4_0,
    "blk.1.attn_qkv.weight": Q.BF16,
    "blk.1.attn_output.weight": Q.Q4_0,
    "blk.1.ffn_up.weight": Q.F16,
    "blk.1.ffn_down.weight": Q.Q8_0,
}


def add(w, name, values, qtype):
    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, values)
    elif qtype == Q.F16:
        w.add_tensor(name, values.astype(np.float16))
    else:
        q = gguf.quants.quantize(values, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


def add_tokenizer(w):
    encoder = json.load(open(os.path.join(BPE, "encoder.json"), encoding="utf-8"))
    tokens = sorted(encoder, key=encoder.get)
    merges = [m for m in open(os.path.join(BPE, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:] if m]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([1] * EOT + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(EOT)
    w.add_eos_token_id(EOT)


def hf_tensors(rng):
    """GPT-2's tensors in Hugging Face's names and Conv1D layout."""
    n = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)
    t = {"wte.weight": n(VOCAB, C), "wpe.weight": n(CTX, C),
         "ln_f.weight": 1 + n(C), "ln_f.bias": n(C)}
    for i in range(LAYERS):
        p = f"h.{i}."
        t.update({p + "ln_1.weight": 1 + n(C), p + "ln_1.bias": n(C),
                  p + "attn.c_attn.weight": n(C, 3 * C), p + "attn.c_attn.bias": n(3 * C),
                  p + "attn.c_proj.weight": n(C, C), p + "attn.c_proj.bias": n(C),
                  p + "ln_2.weight": 1 + n(C), p + "ln_2.bias": n(C),
                  p + "mlp.c_fc.weight": n(C, 4 * C), p + "mlp.c_fc.bias": n(4 * C),
                  p + "mlp.c_proj.weight": n(4 * C, C), p + "mlp.c_proj.bias": n(C)})
    return t


PARTS = [("ln_1.", "attn_norm."), ("attn.c_attn.", "attn_qkv."), ("attn.c_proj.", "attn_output."),
         ("ln_2.", "ffn_norm."), ("mlp.c_fc.", "ffn_up."), ("mlp.c_proj.", "ffn_down.")]


def gguf_name(hf):
    fixed = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
             "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}
    if hf in fixed:
        return fixed[hf]
    layer, rest = hf[2:].split(".", 1)
    for ours, theirs in PARTS:
        if rest.startswith(ours):
            return f"blk.{layer}.{theirs}{rest[len(ours):]}"
    raise KeyError(hf)


def is_conv1d(hf):
    return hf.startswith("h.") and hf.endswith(".weight") and ".ln_" not in hf


def write_tiny(out):
    rng = np.random.default_rng(20261202)
    t = hf_tensors(rng)
    path = os.path.join(out, "tiny.gguf")
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_name("gguf fixture")
    w.add_context_length(CTX)
    w.add_embedding_length(C)
    w.add_feed_forward_length(4 * C)
    w.add_block_count(LAYERS)
    w.add_head_count(HEADS)
    w.add_layer_norm_eps(1e-5)
    add_tokenizer(w)
    for hf, values in t.items():
        name = gguf_name(hf)
        add(w, name, values.T if is_conv1d(hf) else values, TYPES.get(name, Q.F32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, rng


def expected(path, rng):
    """Transformers' log-probs with the weights gguf-py reads back."""
    reader = gguf.GGUFReader(path)
    stored = {}
    for tensor in reader.tensors:
        shape = [int(d) for d in reversed(tensor.shape)]
        stored[tensor.name] = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    config = GPT2Config(vocab_size=VOCAB, n_positions=CTX, n_embd=C, n_layer=LAYERS, n_head=HEADS,
                        activation_function="gelu_new", layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config).eval()
    state = {}
    for hf in hf_tensors(np.random.default_rng(0)):
        values = stored[gguf_name(hf)]
        state["transformer." + hf] = torch.from_numpy(np.array(values.T if is_conv1d(hf) else values))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(".attn.bias" in m or "masked_bias" in m for m in missing), (missing, unexpected)
    ids = [int(i) for i in rng.integers(0, EOT, CTX - 1)]
    with torch.no_grad():
        logits = model(torch.tensor([[EOT] + ids[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    return {"ids": ids,
            "logprobs": [float(logprobs[i, t]) for i, t in enumerate(ids)],
            "argmax": [int(a) for a in logits.argmax(-1)],
            "types": {k: v.name for k, v in TYPES.items()}}


def write_blocks(out):
    rng = np.random.default_rng(7)
    path = os.path.join(out, "blocks.gguf")
    first = path + ".tmp"
    w = gguf.GGUFWriter(first, "blocks")
    values = (rng.standard_normal((2, 256)) * 0.5).astype(np.float32)
    tensors = {}
    for qtype in (Q.Q8_0, Q.Q4_0, Q.F16, Q.BF16):
        tensors[qtype.name.lower()] = (qtype, values)
    # gguf-py does not quantize q6_K; any bytes with a finite scale are a
    # valid q6_K block, so random ones (a small f16 scale at the end) are.
    raw = rng.integers(0, 256, (2, 210), dtype=np.uint8)
    raw[:, 208:210] = np.array([0.01, 0.02], dtype=np.float16).reshape(2, 1).view(np.uint8)
    for name, (qtype, data) in tensors.items():
        add(w, name, data, qtype)
    w.add_tensor("q6_k", raw, raw_shape=raw.shape, raw_dtype=Q.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The expected values, from the file as written.
    reader = gguf.GGUFReader(first)
    w = gguf.GGUFWriter(path, "blocks")
    for tensor in reader.tensors:
        shape = [int(d) for d in reversed(tensor.shape)]
        w.add_tensor(tensor.name, np.array(tensor.data), raw_shape=np.array(tensor.data).shape,
                     raw_dtype=tensor.tensor_type)
        deq = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        w.add_tensor(tensor.name + ".f32", np.ascontiguousarray(deq))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.remove(first)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "crates", "model", "tests", "fixtures", "gguf"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path, rng = write_tiny(a.out)
    with open(os.path.join(a.out, "tiny.expected.json"), "w") as f:
        json.dump(expected(path, rng), f, indent=1)
    write_blocks(a.out)
    for name in sorted(os.listdir(a.out)):
        print(name, os.path.getsize(os.path.join(a.out, name)))


if __name__ == "__main__":
    main()
