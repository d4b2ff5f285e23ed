#!/usr/bin/env python3
"""Reads a GGUF that `gpt2 quantize --gguf` wrote with the `gguf` package
(llama.cpp's own Python reader) and checks it is GPT-2 as llama.cpp's
converter writes it: architecture and shape keys, GPT-2's tokens and merges
(from GPT-2's own files), the tensor names and [out, in] layout, and the
values of the position embedding and first layer norm (compared with the
checkpoint `gpt2 quantize --to f32` wrote beside it).

    python3 gguf_read.py MODEL.gguf BPE_DIR CHECKPOINT_DIR

Exits 77 when the `gguf` package is missing; prints a JSON summary.
"""
import json
import os
import sys

try:
    import gguf
    import numpy as np
except ImportError:
    sys.exit(77)

path, bpe, checkpoint = sys.argv[1:4]
r = gguf.GGUFReader(path)
field = lambda k: r.fields[k].contents()
assert field("general.architecture") == "gpt2"
n_layer, c = field("gpt2.block_count"), field("gpt2.embedding_length")
assert field("gpt2.feed_forward_length") == 4 * c
encoder = json.load(open(os.path.join(bpe, "encoder.json"), encoding="utf-8"))
assert field("tokenizer.ggml.tokens") == sorted(encoder, key=encoder.get), "tokens differ from encoder.json"
merges = [m for m in open(os.path.join(bpe, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:] if m]
assert field("tokenizer.ggml.merges") == merges, "merges differ from vocab.bpe"
assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
tensors = {t.name: t for t in r.tensors}
want = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
for i in range(n_layer):
    for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
        want |= {f"blk.{i}.{part}.weight", f"blk.{i}.{part}.bias"}
assert set(tensors) == want, set(tensors) ^ want
# ggml dims: ne[0] is the input width of a matrix ([out, in] row-major).
assert [int(d) for d in tensors["blk.0.attn_qkv.weight"].shape] == [c, 3 * c]
assert [int(d) for d in tensors["blk.0.ffn_down.weight"].shape] == [4 * c, c]



def load_f32_safetensors(file):
    """The f32 tensors of a safetensors file (its format is an 8-byte
    header length, a JSON header, then the data)."""
    data = open(file, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] == "F32":
            start, end = info["data_offsets"]
            out[name] = np.frombuffer(data[8 + n + start:8 + n + end], dtype="<f4").reshape(info["shape"])
    return out


ref = load_f32_safetensors(os.path.join(checkpoint, "model.safetensors"))
values = lambda name: gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type)
assert np.array_equal(values("position_embd.weight").reshape(ref["wpe.weight"].shape), ref["wpe.weight"])
qkv = values("blk.0.attn_qkv.weight").reshape(3 * c, c)
assert np.array_equal(qkv.T, ref["h.0.attn.c_attn.weight"]), "attn_qkv is the Conv1D weight transposed"
print(json.dumps({"tensors": len(tensors), "types": sorted({t.tensor_type.name for t in r.tensors})}))
