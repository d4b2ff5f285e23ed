#!/usr/bin/env python3
"""What each weight format costs in quality, on the default model:

    cargo build --release
    python3 bench/quantization_quality.py [--json out.json]

For f16, bf16, q8_0 and q4_0: `gpt2 quantize default DIR --to F --check TEXT`
(mean and max |delta logprob| per token against the f32 model, top-1
agreement, on a held-out book, Oz, which the default model was not trained
on), then `gpt2 eval wikitext` on the WikiText-2 raw test set (word and
byte perplexity, lm-eval's definitions), beside the f32 model's own.
"""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "..", "shared", "data")
GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
HELD_OUT = os.path.join(DATA, "train", "gutenberg", "pg55_The-Wonderful-Wizard-of-Oz.txt")
WIKITEXT = os.path.join(DATA, "eval", "wikitext-2-raw", "wiki.test.raw")


def run_json(*args):
    out = subprocess.run([GPT2, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def wikitext(model):
    r = run_json("eval", "wikitext", "--model", model, "--data", WIKITEXT, "--json")["results"]["wikitext"]
    return {"word_perplexity": r["word_perplexity,none"], "byte_perplexity": r["byte_perplexity,none"],
            "bits_per_byte": r["bits_per_byte,none"]}


def print_table(rows):
    base = rows["f32"]["wikitext"]
    q8 = rows["q8_0"]["check"]
    print(f"default model; against f32 on {os.path.basename(q8['file'])} ({q8['tokens']} tokens, held out from training);"
          " WikiText-2 raw test with lm-eval's wikitext task")
    print("| format | weights MB | mean abs delta logprob | max abs delta logprob | top-1 agreement | held-out ppl | WikiText-2 word ppl | byte ppl | bits/byte |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| f32 | {rows['q8_0']['weight_bytes_before'] / 1e6:.1f} | 0 | 0 | 100% | {q8['perplexity_before']:.3f} | "
          f"{base['word_perplexity']:.2f} | {base['byte_perplexity']:.4f} | {base['bits_per_byte']:.4f} |")
    for f in ("f16", "bf16", "q8_0", "q4_0"):
        r, c, w = rows[f], rows[f]["check"], rows[f]["wikitext"]
        print(f"| {f} | {r['weight_bytes_after'] / 1e6:.1f} | {c['mean_abs_delta_logprob']:.2e} | {c['max_abs_delta_logprob']:.2e} | "
              f"{100 * c['top1_agreement']:.2f}% | {c['perplexity_after']:.3f} | {w['word_perplexity']:.2f} | "
              f"{w['byte_perplexity']:.4f} | {w['bits_per_byte']:.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--table", metavar="JSON", help="only print the table of a saved --json")
    a = ap.parse_args()
    if a.table:
        print_table(json.load(open(a.table)))
        return
    rows = {"f32": {"wikitext": wikitext("default")}}
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("f16", "bf16", "q8_0", "q4_0"):
            d = os.path.join(tmp, f)
            r = run_json("quantize", "default", d, "--to", f, "--check", HELD_OUT, "--json")
            r["wikitext"] = wikitext(d)
            rows[f] = r
    print_table(rows)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
