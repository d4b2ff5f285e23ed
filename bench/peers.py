#!/usr/bin/env python3
"""The speed race beside the peers: this project, llama.cpp (through the
llama-cpp-python package, which builds llama.cpp from source) and PyTorch,
on one fixed-seed 124M-shape GPT-2, in one run on this machine.

    pip install torch transformers safetensors gguf llama-cpp-python
    cargo build --release
    python3 bench/peers.py [--threads 2] [--repeat 3] [--json out.json]

The checkpoint comes from tools/reference/gpt2_reference.py (std 0.02, the
shapes of OpenAI's 124M); the same weights are written as GGUF at f32, f16,
q8_0 and q4_0 with the `gguf` package (tensor names and layout as
llama.cpp's convert_hf_to_gguf.py writes GPT-2) and by `gpt2 quantize` at
f16, q8_0 and q4_0 for this project. Each contender runs in its
own process (so its peak RSS is its own), contenders alternate, and each
keeps its best of --repeat. Measured: prefill tokens/s at 512 and 1,024
prompt tokens, decode tokens/s (128 greedy tokens after 32), time to first
token for a 32-token prompt, peak RSS.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
REF = os.path.join(ROOT, "tools", "reference")
BPE = os.path.join(ROOT, "..", "shared", "data", "bpe")
GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
# The longest prompt leaves room for the first sampled token in the
# 1,024-token context.
PROMPTS = (512, 1023)
DECODE_PROMPT, DECODE_TOKENS = 32, 128
PRECISIONS = ("f32", "f16", "q8_0", "q4_0")


def checkpoint(out):
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        subprocess.run([sys.executable, os.path.join(REF, "gpt2_reference.py"), "checkpoint", "--shape", "124M",
                        "--out", out, "--std", "0.02"], check=True)
    return out


def write_gguf(model_dir, out, qtype):
    """GPT-2 as llama.cpp's converter writes it: Conv1D weights transposed
    to [out, in], 2-D weights in the requested type, norms and biases f32."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    if os.path.exists(out):
        return out
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    t = {k.removeprefix("transformer."): v.astype(np.float32) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    w = gguf.GGUFWriter(out + ".tmp", "gpt2")
    w.add_context_length(cfg["n_positions"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_feed_forward_length(4 * cfg["n_embd"])
    w.add_block_count(cfg["n_layer"])
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}[qtype])
    add_tokenizer(w)
    kind = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype]

    def add(name, data, quantize):
        if not quantize or kind == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float16))
        else:
            q = gguf.quants.quantize(np.ascontiguousarray(data), kind)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)

    add("token_embd.weight", t["wte.weight"], True)
    add("position_embd.weight", t["wpe.weight"], False)
    add("output.weight", t["wte.weight"], True)
    add("output_norm.weight", t["ln_f.weight"], False)
    add("output_norm.bias", t["ln_f.bias"], False)
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        b = f"blk.{i}."
        add(b + "attn_norm.weight", t[p + "ln_1.weight"], False)
        add(b + "attn_norm.bias", t[p + "ln_1.bias"], False)
        add(b + "attn_qkv.weight", t[p + "attn.c_attn.weight"].T, True)
        add(b + "attn_qkv.bias", t[p + "attn.c_attn.bias"], False)
        add(b + "attn_output.weight", t[p + "attn.c_proj.weight"].T, True)
        add(b + "attn_output.bias", t[p + "attn.c_proj.bias"], False)
        add(b + "ffn_norm.weight", t[p + "ln_2.weight"], False)
        add(b + "ffn_norm.bias", t[p + "ln_2.bias"], False)
        add(b + "ffn_up.weight", t[p + "mlp.c_fc.weight"].T, True)
        add(b + "ffn_up.bias", t[p + "mlp.c_fc.bias"], False)
        add(b + "ffn_down.weight", t[p + "mlp.c_proj.weight"].T, True)
        add(b + "ffn_down.bias", t[p + "mlp.c_proj.bias"], False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(out + ".tmp", out)
    return out


def add_tokenizer(w):
    encoder = json.load(open(os.path.join(BPE, "encoder.json"), encoding="utf-8"))
    tokens = sorted(encoder, key=encoder.get)
    merges = [m for m in open(os.path.join(BPE, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:] if m]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(50256)
    w.add_eos_token_id(50256)


LLAMA_RUNNER = r'''
import json, sys, time, resource
from llama_cpp import Llama
path, threads, prompt_tokens, decode_prompt, decode_tokens = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=1024, n_batch=1024, n_ubatch=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
ids = [(i * 7) % 50000 for i in range(1024)]
out = {}
for n in prompt_tokens:
    llm.reset(); t = time.perf_counter(); llm.eval(ids[:n]); out[f"prefill_{n}_tokens_per_s"] = n / (time.perf_counter() - t)
llm.reset(); t = time.perf_counter(); llm.eval(ids[:decode_prompt]); ttft = time.perf_counter() - t
t = time.perf_counter()
for _ in range(decode_tokens):
    nxt = int(llm.scores[llm.n_tokens - 1].argmax()); llm.eval([nxt])
out["decode_tokens_per_s"] = decode_tokens / (time.perf_counter() - t)
out["time_to_first_token_s"] = ttft
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''

TORCH_RUNNER = r'''
import json, sys, time, resource, torch
from transformers import GPT2LMHeadModel
path, threads, prompt_tokens, decode_prompt, decode_tokens = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
m = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32).eval()
ids = torch.tensor([[(i * 7) % 50000 for i in range(1024)]])
out = {}
with torch.inference_mode():
    m(ids[:, :8])
    for n in prompt_tokens:
        t = time.perf_counter(); m(ids[:, :n]); out[f"prefill_{n}_tokens_per_s"] = n / (time.perf_counter() - t)
    p = ids[:, :decode_prompt]
    t = time.perf_counter(); m(p); ttft = time.perf_counter() - t
    kw = dict(max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    t = time.perf_counter(); m.generate(p, **kw); total = time.perf_counter() - t
out["decode_tokens_per_s"] = decode_tokens / (total - ttft)
out["time_to_first_token_s"] = ttft
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''


def ours(model_dir, threads, gpt2=GPT2):
    out = {}
    for n in PROMPTS:
        r, _ = rss_of([gpt2, "--threads", str(threads), "bench", "--model", model_dir, "--prompt-tokens", str(n),
                       "--gen-tokens", "0", "--repeat", "1", "--json"])
        out[f"prefill_{n}_tokens_per_s"] = r["prefill_tokens_per_s"]
    cmd = [gpt2, "--threads", str(threads), "bench", "--model", model_dir, "--prompt-tokens", str(DECODE_PROMPT),
           "--gen-tokens", str(DECODE_TOKENS), "--repeat", "1", "--json"]
    r, _ = rss_of(cmd)
    # `gpt2 bench` also allocates 1 GiB to measure read bandwidth, so peak
    # RSS comes from a plain generation of the same length.
    prompt = " ".join(["word"] * DECODE_PROMPT)
    _, rss = rss_of([gpt2, "--threads", str(threads), "generate", prompt, "--model", model_dir, "--max-tokens",
                     str(DECODE_TOKENS), "--seed", "1", "--json"])
    out.update(decode_tokens_per_s=r["decode_tokens_per_s"], time_to_first_token_s=r["time_to_first_token_s"],
               peak_rss_mb=rss, memory_bandwidth_gb_s=r["memory_bandwidth_gb_s"], decode_bound_tokens_per_s=r["decode_bound_tokens_per_s"])
    return out


def quantized(model_dir, out, q, gpt2=GPT2):
    """The checkpoint converted by `gpt2 quantize` (rewritten each run, so
    it always matches the binary's format)."""
    subprocess.run([gpt2, "quantize", model_dir, out, "--to", q, "--force"], check=True, capture_output=True)
    return out


def rss_of(cmd):
    """Runs cmd in a fresh Python parent so RUSAGE_CHILDREN is its own."""
    wrapper = ("import json,resource,subprocess,sys;o=subprocess.run(sys.argv[1:],check=True,capture_output=True,text=True).stdout;"
               "print(json.dumps({'out':o,'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))")
    res = json.loads(subprocess.run([sys.executable, "-c", wrapper] + cmd, check=True, capture_output=True, text=True).stdout)
    return json.loads(res["out"].strip().splitlines()[-1]), res["rss"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "peers-124M"))
    ap.add_argument("--json")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--before", help="another gpt2 binary (an earlier commit's) to race beside this one")
    ap.add_argument("--skip-llama", action="store_true")
    a = ap.parse_args()
    model = checkpoint(a.dir)
    contenders = {}
    args = [str(a.threads), json.dumps(PROMPTS), str(DECODE_PROMPT), str(DECODE_TOKENS)]
    for q in PRECISIONS:
        ours_dir = model if q == "f32" else quantized(model, os.path.join(a.dir, f"gpt2rs-{q}"), q)
        contenders[f"gpt2-rs {q}"] = (lambda d=ours_dir: ours(d, a.threads))
        if a.before:
            old_dir = model if q == "f32" else quantized(model, os.path.join(a.dir, f"before-{q}"), q, a.before)
            contenders[f"gpt2-rs before {q}"] = (lambda d=old_dir: ours(d, a.threads, a.before))
        if not a.skip_llama:
            path = write_gguf(model, os.path.join(a.dir, f"model-{q}.gguf"), q)
            contenders[f"llama.cpp {q}"] = (lambda p=path: rss_of([sys.executable, "-c", LLAMA_RUNNER, p] + args)[0])
    if not a.skip_torch:
        contenders["PyTorch f32"] = lambda: rss_of([sys.executable, "-c", TORCH_RUNNER, model] + args)[0]
    best = {}
    for rep in range(a.repeat):
        for name, f in contenders.items():
            r = f()
            print(f"run {rep + 1} {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
            b = best.setdefault(name, r)
            for k, v in r.items():
                lower_better = k in ("time_to_first_token_s", "peak_rss_mb")
                b[k] = min(b[k], v) if lower_better else max(b[k], v)
    cols = [f"prefill_{n}_tokens_per_s" for n in PROMPTS] + ["decode_tokens_per_s", "time_to_first_token_s", "peak_rss_mb"]
    prefills = " | ".join(f"prefill {n}" for n in PROMPTS)
    print(f"124M shape, {a.threads} threads, best of {a.repeat}")
    print(f"| contender | {' | '.join(f'prefill {n} tok/s' for n in PROMPTS)} | decode tok/s | TTFT (32 tokens) ms | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r[cols[0]]:.1f} | {r[cols[1]]:.1f} | {r[cols[2]]:.1f} | {1000 * r[cols[3]]:.1f} | {r[cols[4]]:.0f} |")
    print()
    if a.before:
        print("gpt2-rs / gpt2-rs before at the same precision (above 1: this build is faster; RSS: below 1 is smaller)")
        print(f"| precision | {prefills} | decode | TTFT | peak RSS |")
        print("|---|---|---|---|---|---|")
        for q in PRECISIONS:
            o, b = best[f"gpt2-rs {q}"], best[f"gpt2-rs before {q}"]
            print("| " + q + " | " + " | ".join(f"{o[c] / b[c]:.2f}" for c in cols) + " |")
        print()
    if a.skip_llama:
        if a.json:
            json.dump({"threads": a.threads, "repeat": a.repeat, "results": best}, open(a.json, "w"), indent=2)
        return
    print("gpt2-rs / llama.cpp at the same precision (above 1 is better for gpt2-rs; RSS: below 1 is better)")
    print(f"| precision | {prefills} | decode | peak RSS | gpt2-rs decode, % of its bandwidth bound |")
    print("|---|---|---|---|---|---|")
    ratios = {}
    for q in PRECISIONS:
        o, l = best[f"gpt2-rs {q}"], best[f"llama.cpp {q}"]
        r = {c: o[c] / l[c] for c in cols if c != "time_to_first_token_s"}
        r["decode_percent_of_bound"] = 100 * o["decode_tokens_per_s"] / o["decode_bound_tokens_per_s"]
        ratios[q] = r
        print(f"| {q} | {r[cols[0]]:.2f}x | {r[cols[1]]:.2f}x | {r[cols[2]]:.2f}x | {r[cols[4]]:.2f} | "
              f"{r['decode_percent_of_bound']:.0f}% of {o['decode_bound_tokens_per_s']:.1f} |")
    bw = [best[f"gpt2-rs {q}"]["memory_bandwidth_gb_s"] for q in PRECISIONS]
    print(f"read bandwidth measured by gpt2 bench (best of 10 scans of 1 GiB, 2 threads): {min(bw):.1f} to {max(bw):.1f} GB/s over the runs")
    if a.json:
        json.dump({"threads": a.threads, "repeat": a.repeat, "results": best, "ratios_vs_llama_cpp": ratios},
                  open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
