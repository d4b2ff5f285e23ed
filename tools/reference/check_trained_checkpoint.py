#!/usr/bin/env python3
"""Proves that a checkpoint written by `gpt2 train` loads in transformers
unchanged, and that transformers and `gpt2 score` agree on it.

    python3 tools/reference/check_trained_checkpoint.py CHECKPOINT_DIR TEXT_FILE [--gpt2 target/release/gpt2]

Exits non-zero if loading reports missing or unexpected weights, or if the
per-token log-probabilities differ by more than 1e-3.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from transformers import GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(__file__))
import gpt2_reference as ref  # noqa: E402
from tiktoken_offline import gpt2_encoding  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("text")
    ap.add_argument("--gpt2", default="target/release/gpt2")
    a = ap.parse_args()
    model, info = GPT2LMHeadModel.from_pretrained(a.checkpoint, torch_dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        print("loading problems:", problems)
        sys.exit(1)
    model.eval()
    tokens = gpt2_encoding().encode_ordinary(open(a.text, encoding="utf-8").read())
    rows = ref.reference(model, tokens, 50256, model.config.n_positions, top=1)
    out = subprocess.run([a.gpt2, "score", "--model", a.checkpoint, "--json", a.text], capture_output=True, text=True, check=True)
    ours = json.loads(out.stdout)["tokens"]
    diffs = [abs(o["logprob"] - r["logprob"]) for o, r in zip(ours, rows)]
    print(f"transformers loaded {a.checkpoint} with no missing or unexpected weights; "
          f"{len(rows)} tokens, max |dlogprob| vs gpt2 score {max(diffs):.2e}")
    sys.exit(0 if max(diffs) <= 1e-3 and len(ours) == len(rows) else 1)


if __name__ == "__main__":
    main()
