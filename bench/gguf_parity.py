#!/usr/bin/env python3
"""GGUF in and out, measured against llama.cpp's own files and tools.

    cargo build --release
    python3 bench/gguf_parity.py --peers /work/peers [--json bench/results-gguf.json]

--peers holds what llama.cpp's users have: `default-hf/` (the built-in
model as a Hugging Face checkpoint), `default-{f32,f16,q8_0,q4_0}.gguf`
written from it by llama.cpp's convert_hf_to_gguf.py and llama-quantize,
and a llama.cpp build with `llama-perplexity` (found under --peers).

1. Each llama.cpp GGUF is scored token by token with `gpt2 score` and
   compared with the checkpoint it came from (f32 and f16 should agree to
   float rounding), and q8_0/q4_0 also with `gpt2 quantize`'s own q8_0/q4_0
   of the same checkpoint. llama-quantize keeps a q4_0 file's tied
   embedding at q6_K; its `--pure` q4_0 is the like-for-like comparison.
2. `gpt2 quantize --gguf` exports the checkpoint at each format; llama.cpp's
   `llama-perplexity -c 256` on that file is compared with
   `gpt2 perplexity --llama-chunks 256` on the same file and text, the two
   tools alternating.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
BOOK = os.path.join(ROOT, "..", "shared", "data", "train", "gutenberg", "pg11_Alice-s-Adventures-in-Wonderland.txt")
FORMATS = ("f32", "f16", "q8_0", "q4_0")


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def logprobs(model, text):
    doc = json.loads(run(GPT2, "score", text, "--model", model, "--json"))
    return [t["logprob"] for t in doc["tokens"]], [t["id"] for t in doc["tokens"]]


def compare(a, b):
    (la, ia), (lb, ib) = a, b
    assert ia == ib, "the two runs scored different tokens"
    d = [abs(x - y) for x, y in zip(la, lb)]
    return {"tokens": len(d), "mean_abs_delta_logprob": sum(d) / len(d), "max_abs_delta_logprob": max(d)}


def llama_perplexity(binary, model, text, ctx):
    out = subprocess.run([binary, "-m", model, "-f", text, "-c", str(ctx), "-t", "2"],
                         check=True, capture_output=True, text=True)
    log = out.stdout + out.stderr
    ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", log)
    return float(ppl.group(1)), int(chunks.group(1))


def ours_perplexity(model, text, ctx):
    doc = json.loads(run(GPT2, "perplexity", text, "--model", model, "--llama-chunks", str(ctx), "--json"))
    return doc["results"]["perplexity"]["token_perplexity,none"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default="/work/peers")
    ap.add_argument("--chars", type=int, default=60000)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args()
    llama = glob.glob(os.path.join(a.peers, "**", "build", "bin", "llama-perplexity"), recursive=True)[0]
    tmp = tempfile.mkdtemp()
    text = os.path.join(tmp, "alice.txt")
    with open(BOOK, encoding="utf-8") as f:
        open(text, "w", encoding="utf-8").write(f.read()[: a.chars])
    hf = os.path.join(a.peers, "default-hf")
    reference = logprobs(hf, text)
    result = {"text": f"first {a.chars} characters of Alice (held out from the default model's training)",
              "reference": hf, "llama_cpp_gguf_vs_checkpoint": {}, "llama_cpp_gguf_vs_our_quantization": {},
              "exported_gguf_perplexity": {}}
    # llama-quantize's q4_0 keeps the tied embedding at q6_K; with --pure
    # every matrix is q4_0, as in this project's q4_0.
    quantize = glob.glob(os.path.join(os.path.dirname(llama), "llama-quantize"))[0]
    pure = os.path.join(tmp, "default-q4_0-pure.gguf")
    run(quantize, "--pure", os.path.join(a.peers, "default-f32.gguf"), pure, "q4_0")
    files = {f: os.path.join(a.peers, f"default-{f}.gguf") for f in FORMATS}
    files["q4_0 --pure"] = pure
    for f, path in files.items():
        theirs = logprobs(path, text)
        result["llama_cpp_gguf_vs_checkpoint"][f] = compare(reference, theirs)
        if f.startswith("q"):
            ours_dir = os.path.join(tmp, f"ours-{f[:4]}")
            if not os.path.exists(ours_dir):
                run(GPT2, "quantize", hf, ours_dir, "--to", f[:4])
            result["llama_cpp_gguf_vs_our_quantization"][f] = compare(logprobs(ours_dir, text), theirs)
    for f in FORMATS:
        exported = os.path.join(tmp, f"export-{f}.gguf")
        run(GPT2, "quantize", hf, exported, "--to", f, "--gguf")
        theirs, chunks = llama_perplexity(llama, exported, text, a.ctx)
        ours = ours_perplexity(exported, text, a.ctx)
        theirs_again, _ = llama_perplexity(llama, exported, text, a.ctx)
        result["exported_gguf_perplexity"][f] = {
            "chunks": chunks, "ctx": a.ctx, "llama_perplexity": [theirs, theirs_again],
            "gpt2_perplexity_llama_chunks": ours, "relative_difference": abs(ours - theirs) / theirs}
    print(json.dumps(result, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
