#!/usr/bin/env python3
"""Append LAMBADA-style passages whose last word is the model's own greedy
guess, so that a fixture exercises accuracy on both sides of 0 and 1 (a
random model almost never guesses a real LAMBADA word).

    python3 tools/reference/lambada_greedy_fixture.py --model DIR --data FILE.jsonl --count 10

Each context is a real passage minus its last word; the model decodes
greedily until it ends a word (the rule of eval_reference.py's
lambada_word), and a passage is kept when that word is alphabetic.
"""
import argparse
import json

import torch
from transformers import GPT2LMHeadModel

from tiktoken_offline import gpt2_encoding


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--count", type=int, default=10)
    a = ap.parse_args()
    enc = gpt2_encoding()
    model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    lines = [json.loads(l)["text"] for l in open(a.data, encoding="utf-8") if l.strip()]
    added = []
    for text in lines:
        context = " ".join(text.split(" ")[:-1])
        ids = enc.encode_ordinary(context)[-(model.config.n_positions - 8):]
        out = []
        with torch.no_grad():
            for _ in range(8):
                out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
                cont = enc.decode(out).lstrip()
                cut = next((i for i, c in enumerate(cont) if not (c.isalnum() or c in "'-")), None)
                if cut is not None:
                    break
        word = cont[:cut] if cut is not None else ""
        if word.isalpha() and enc.decode(out).startswith(" "):
            added.append(context + " " + word)
        if len(added) == a.count:
            break
    with open(a.data, "a", encoding="utf-8") as f:
        for t in added:
            f.write(json.dumps({"text": t}) + "\n")
    print(f"appended {len(added)} passages")


if __name__ == "__main__":
    main()
