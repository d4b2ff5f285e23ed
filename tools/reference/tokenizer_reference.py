#!/usr/bin/env python3
"""Reference token ids from tiktoken's `gpt2` encoding, for the Rust tokenizer tests.

Writes
  edge_cases.json    [{"text": ..., "ids": [...]}] for hand-picked edge cases
  shared_data.json   {relative path: {"tokens": n, "sha256": hex}} for every
                     text file in ../shared/data (the ids as little-endian u32),
                     and LAMBADA's passages one by one ("<path>#lines").

    python3 tools/reference/tokenizer_reference.py --out crates/model/tests/fixtures/tokenizer
"""
import argparse
import hashlib
import json
import os
import struct

from tiktoken_offline import gpt2_encoding

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", "\r\n", "\t\tindented", "a  b   c    d", "trailing   ", "   leading",
    "Hello world", "hello, World! HELLO?", "I'll you'll she's it's we've they're I'm he'd don't",
    "I'LL SHE'S 'tis 'quoted' rock'n'roll", "''''", "\"double\" quotes",
    "emoji 🤖👩‍👩‍👧‍👦🏳️‍🌈 flags 🇫🇷", "combining e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937", "CJK 日本語の文章。中文句子，한국어 문장",
    "control \x00\x01\x07\x1b[0m \x7f chars", "zero\u200bwidth\u200djoiner \ufeffbom", "math ∑∫√∞ ≤≥ ±", "arabic مرحبا hebrew שלום",
    "numbers 3.14159 1,000,000 2024-01-01 0x1F 1e-5", "<|endoftext|> is text here", "end<|endoftext|>start",
    "URL https://example.com/a?b=c&d=e#f", "code: fn main() { println!(\"{}\", x); }", " \n \n \n", "a\u00a0b\u2003c",
    "ÀÁÂÃÄÅàáâãäå", "x" * 300, " " * 100 + "x", "\n" * 50, "🤖" * 20, "Ω≈ç√∫˜µ≤≥÷",
]


def ids_hash(ids):
    return hashlib.sha256(b"".join(struct.pack("<I", i) for i in ids)).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
    a = ap.parse_args()
    enc = gpt2_encoding()
    os.makedirs(a.out, exist_ok=True)
    cases = [{"text": t, "ids": enc.encode_ordinary(t)} for t in EDGE_CASES]
    cases.append({"text": "special <|endoftext|> on", "ids": enc.encode("special <|endoftext|> on", allowed_special="all"), "special": True})
    json.dump(cases, open(os.path.join(a.out, "edge_cases.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=0)

    files = {}
    for root, _, names in os.walk(a.data):
        for name in sorted(names):
            if not name.endswith((".txt", ".tokens", ".raw", ".jsonl")):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, a.data)
            text = open(path, encoding="utf-8").read()
            ids = enc.encode_ordinary(text)
            files[rel] = {"tokens": len(ids), "sha256": ids_hash(ids)}
            if name.endswith(".jsonl"):
                ids = []
                for line in text.splitlines():
                    ids += enc.encode_ordinary(json.loads(line)["text"])
                files[rel + "#lines"] = {"tokens": len(ids), "sha256": ids_hash(ids)}
            print(rel, files[rel]["tokens"])
    json.dump(files, open(os.path.join(a.out, "shared_data.json"), "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
