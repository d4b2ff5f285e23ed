#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-classifier: a GPT2ForSequenceClassification
saved by transformers itself (the tiny-gpt2 fixture's transformer, a
seeded random `score` head, f16), a detector.json card for it, and
transformers' class logits of a few texts (reference.json), which
tests/countermeasures.rs compares with `gpt2 detect --detector`.

    python3 tools/reference/classifier_fixture.py

The other direction (transformers loading what `gpt2 detect train`
writes) is tools/reference/check_classifier.py.
"""
import json
import os
import sys

import torch
from transformers import GPT2ForSequenceClassification

sys.path.insert(0, os.path.dirname(__file__))
from tiktoken_offline import gpt2_encoding  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "tiny-classifier")
MAX_TOKENS = 64


def main():
    torch.manual_seed(18)
    model = GPT2ForSequenceClassification.from_pretrained(
        os.path.join(FIXTURES, "tiny-gpt2"), num_labels=2, id2label={0: "human", 1: "machine"},
        label2id={"human": 0, "machine": 1}, pad_token_id=50256, dtype=torch.float32)
    with torch.no_grad():
        # A head with logits far from 0, so that a wrong row or a wrong sign shows.
        model.score.weight.normal_(0.0, 1.0)
    model.half().save_pretrained(OUT, safe_serialization=True)
    model = GPT2ForSequenceClassification.from_pretrained(OUT, dtype=torch.float32).eval()
    sample = open(os.path.join(FIXTURES, "sample.txt"), encoding="utf-8").read()
    words = sample.split()
    # Short, medium, and longer than MAX_TOKENS (cut as gpt2 cuts it).
    texts = [" ".join(words[:20]), " ".join(words[20:60]), " ".join(words[60:200])]
    enc = gpt2_encoding()
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = enc.encode_ordinary(t)[:MAX_TOKENS]
            rows.append({"text": t, "tokens": len(ids), "logits": model(torch.tensor([ids])).logits[0].tolist()})
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"max_tokens": MAX_TOKENS, "texts": rows}, f, indent=1)
    card = {
        "kind": "classifier", "tokenizer": "gpt2", "base_model": "tiny-gpt2", "max_tokens": MAX_TOKENS,
        "pad_token_id": 50256,
        "thresholds": {"statistic": "detector", "model": "tiny-gpt2", "min_tokens": 16, "buckets": []},
        "validation": {"human_texts": 0, "machine_texts": 0, "auroc": 0.5, "tpr_at_1pct_fpr": 0.0,
                       "tpr_at_01pct_fpr": 0.0, "loss": 0.0},
        "training": {"written_by": "tools/reference/classifier_fixture.py"},
    }
    with open(os.path.join(OUT, "detector.json"), "w") as f:
        json.dump(card, f, indent=1)
    print(f"wrote {OUT}: {[r['tokens'] for r in rows]} tokens, logits {[r['logits'] for r in rows]}")


if __name__ == "__main__":
    main()
