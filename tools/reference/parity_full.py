#!/usr/bin/env python3
"""Full-size parity: random GPT-2 checkpoints of the released shapes, 1,024
positions of real text, transformers float32 vs `gpt2 score`.

    python3 tools/reference/parity_full.py --shapes 124M 355M --gpt2 target/release/gpt2

Prints max and mean |delta logprob| and the number of positions whose argmax
differs; exits non-zero when max > 1e-3 or any argmax differs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import gpt2_reference as ref  # noqa: E402
from tiktoken_offline import gpt2_encoding  # noqa: E402

BOOK = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "train", "gutenberg", "pg11_Alice-s-Adventures-in-Wonderland.txt")


def text_of_exactly(n_tokens):
    enc = gpt2_encoding()
    text = open(BOOK, encoding="utf-8").read()[5000:20000]
    ids = enc.encode_ordinary(text)
    cut = enc.decode(ids[:n_tokens])
    while len(enc.encode_ordinary(cut)) != n_tokens:
        n_tokens -= 1
        cut = enc.decode(ids[:n_tokens])
    return cut


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["124M", "355M"])
    ap.add_argument("--gpt2", default="target/release/gpt2")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--tokens", type=int, default=1024)
    a = ap.parse_args()
    text = text_of_exactly(a.tokens)
    ok = True
    for shape in a.shapes:
        out = os.path.join(a.workdir, f"parity-{shape}")
        if not os.path.exists(os.path.join(out, "model.safetensors")):
            model = ref.build(shape, 1234, 0.1)
            ref.save_checkpoint(model, out, "f32", prefix=False, lm_head=False)
            del model
        text_path = os.path.join(out, "text.txt")
        open(text_path, "w", encoding="utf-8").write(text)
        model = ref.load(out)
        tokens = gpt2_encoding().encode_ordinary(text)
        rows = ref.reference(model, tokens, 50256, model.config.n_positions, top=1)
        del model
        run = subprocess.run([a.gpt2, "score", "--model", out, "--json", "--top", "1", text_path], capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr)
            sys.exit(1)
        ours = json.loads(run.stdout)["tokens"]
        assert [t["id"] for t in ours] == [r["id"] for r in rows], "token ids differ"
        diffs = [abs(o["logprob"] - r["logprob"]) for o, r in zip(ours, rows)]
        argmax_diff = sum(o["top"][0]["id"] != r["argmax"] for o, r in zip(ours, rows))
        ref_mean = sum(r["logprob"] for r in rows) / len(rows)
        print(f"{shape}: {len(rows)} positions, max |dlogprob| {max(diffs):.3e}, mean {sum(diffs)/len(diffs):.3e}, "
              f"argmax differs at {argmax_diff}, reference mean logprob {ref_mean:.4f}")
        ok &= max(diffs) <= 1e-3 and argmax_diff == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
