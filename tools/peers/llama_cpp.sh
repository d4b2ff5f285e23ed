#!/bin/sh
# What bench/gguf_parity.py and bench/serve_load.py compare against, made the
# way llama.cpp's own users make it:
#   - llama.cpp built from the source vendored in the llama-cpp-python sdist
#     (CMake, -DGGML_NATIVE=ON -DLLAMA_CURL=OFF);
#   - PEERS/default-hf: the built-in model as a Hugging Face checkpoint, with
#     GPT-2's tokenizer files from ../shared/data/bpe;
#   - PEERS/default-{f32,f16}.gguf by llama.cpp's convert_hf_to_gguf.py and
#     default-{q8_0,q4_0}.gguf by its llama-quantize.
#
#   PY=/path/to/venv/bin/python tools/peers/llama_cpp.sh PEERS
#
# PY needs torch, transformers and numpy (convert_hf_to_gguf.py imports the
# vendored gguf-py itself); cmake must be on PATH (Debian's cmake, or pip's
# `cmake` package in PY's environment). Rerun after models/default changes:
# the build is kept, the model files are rewritten.
set -eu
PEERS=$1
PY=${PY:-python3}
mkdir -p "$PEERS"
if ! ls -d "$PEERS"/llama_cpp_python-*/vendor/llama.cpp >/dev/null 2>&1; then
    "$PY" -m pip download --no-deps --no-binary llama-cpp-python llama-cpp-python -d "$PEERS/sdist"
    tar xzf "$PEERS"/sdist/llama_cpp_python-*.tar.gz -C "$PEERS"
fi
SRC=$(ls -d "$PEERS"/llama_cpp_python-*/vendor/llama.cpp | tail -1)
cmake -S "$SRC" -B "$SRC/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$SRC/build" -j2 --target llama-perplexity llama-quantize llama-server llama-bench >/dev/null

HF="$PEERS/default-hf"
rm -rf "$HF" && mkdir -p "$HF"
cp models/default/config.json models/default/model.safetensors "$HF/"
cp ../shared/data/bpe/encoder.json "$HF/vocab.json"
cp ../shared/data/bpe/vocab.bpe "$HF/merges.txt"
for t in f32 f16; do
    "$PY" "$SRC/convert_hf_to_gguf.py" "$HF" --outtype "$t" --outfile "$PEERS/default-$t.gguf" >/dev/null 2>&1
done
for q in q8_0 q4_0; do
    "$SRC/build/bin/llama-quantize" "$PEERS/default-f32.gguf" "$PEERS/default-$q.gguf" "$q" >/dev/null 2>&1
done
ls -l "$PEERS"/default-*.gguf
