#!/usr/bin/env python3
"""Proves that a detector written by `gpt2 detect train` (kind classifier)
loads in transformers unchanged as a GPT2ForSequenceClassification, and
that transformers and `gpt2 detect --detector` give the same class logits.

    python3 tools/reference/check_classifier.py DETECTOR_DIR TEXTS.jsonl [--gpt2 target/release/gpt2] [--limit 20]

Each text is cut to the detector's max_tokens, as gpt2 cuts it, and run
alone (no padding). Exits non-zero if loading reports missing, unexpected
or mismatched weights, if the labels are not human/machine, or if any
logit differs by more than 1e-4.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from transformers import GPT2ForSequenceClassification

sys.path.insert(0, os.path.dirname(__file__))
from tiktoken_offline import gpt2_encoding  # noqa: E402

TOLERANCE = 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("detector")
    ap.add_argument("texts", help="a .jsonl file with a text field")
    ap.add_argument("--gpt2", default="target/release/gpt2")
    ap.add_argument("--limit", type=int, default=20)
    a = ap.parse_args()
    model, info = GPT2ForSequenceClassification.from_pretrained(
        a.detector, torch_dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        print("loading problems:", problems)
        sys.exit(1)
    labels = model.config.id2label
    if labels != {0: "human", 1: "machine"}:
        print("labels are", labels)
        sys.exit(1)
    model.eval()
    card = json.load(open(os.path.join(a.detector, "detector.json")))
    texts = [json.loads(line)["text"] for line in open(a.texts, encoding="utf-8") if line.strip()][:a.limit]
    sample = os.path.join(os.path.dirname(os.path.abspath(a.detector)), "check_classifier_texts.jsonl")
    with open(sample, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    out = subprocess.run([a.gpt2, "detect", "--detector", a.detector, "--json", sample],
                         capture_output=True, text=True, check=True)
    os.remove(sample)
    ours = [json.loads(line)["detector_logits"] for line in out.stdout.splitlines()]
    enc = gpt2_encoding()
    worst = 0.0
    with torch.no_grad():
        for text, mine in zip(texts, ours):
            ids = enc.encode_ordinary(text)[:card["max_tokens"]]
            theirs = model(torch.tensor([ids])).logits[0].tolist()
            worst = max(worst, max(abs(x - y) for x, y in zip(theirs, mine)))
    print(f"transformers loaded {a.detector} as GPT2ForSequenceClassification with no missing or unexpected "
          f"weights; {len(texts)} texts, max |dlogit| vs gpt2 detect {worst:.2e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if worst <= TOLERANCE and len(ours) == len(texts) else 1)


if __name__ == "__main__":
    main()
