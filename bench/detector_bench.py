#!/usr/bin/env python3
"""The feature detector (`gpt2 detect train --kind features`) on real
GPT-2 text (issue 18, items 2 and 4). Drives the release binary.

    cargo build --release
    python3 bench/detector_bench.py [--model default] [--samples 200]
        [--out bench/results-detector.json]

Data: ../shared/data/detect: 529 texts of the real GPT-2 117M (top-k 40)
and 700 WebText documents, every text cut to its first 250 words, as the
issue's measurements were. Split with a fixed seed: 400 machine and 500
human texts to train, the other 129 and 200 held out.

1. `gpt2 detect train` on the training split: its 5-fold cross-validated
   AUROC and TPR (out-of-fold scores), and the time to score and fit.
2. `gpt2 detect evaluate --detector` on the held-out split: every
   zero-shot statistic and the detector, AUROC and TPR at 1% / 0.1% FPR
   with bootstrap 95% intervals.
3. Transfer to another generator: --samples texts of the scoring model
   itself (`gpt2 generate`, temperature 1, top-k 40, as the GPT-2 paper
   sampled), against the held-out WebText documents.
"""
import argparse
import json
import os
import random
import subprocess
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GPT2 = os.path.join(ROOT, "target", "release", "gpt2")
DATA = os.path.join(ROOT, "..", "shared", "data", "detect")


def read(name):
    with open(os.path.join(DATA, name)) as f:
        return [" ".join(json.loads(l)["text"].split(" ")[:250]) for l in f if l.strip()]


def write(path, texts):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return path


def gpt2(*args):
    r = subprocess.run([GPT2, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"gpt2 {' '.join(args[:2])} failed: {r.stderr.strip()}")
    return r.stdout


def evaluate(model, detector, human, machine):
    return json.loads(gpt2("detect", "evaluate", "--model", model, "--detector", detector,
                           "--human", human, "--machine", machine, "--json"))


def table(rows):
    out = ["| statistic | AUROC (95% CI) | TPR @ 1% FPR | TPR @ 0.1% FPR |", "|---|---|---|---|"]
    for r in rows:
        cell = lambda k: f"{r[k]['value']:.3f} ({r[k]['ci95'][0]:.3f}-{r[k]['ci95'][1]:.3f})"
        out.append(f"| {r['statistic']} | {cell('auroc')} | {cell('tpr_at_1pct_fpr')} | {cell('tpr_at_0.1pct_fpr')} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results-detector.json"))
    a = ap.parse_args()
    rng = random.Random(18)
    machine, human = read("gpt2-117M-k40.valid.jsonl"), read("webtext.train.first700.jsonl")
    rng.shuffle(machine)
    rng.shuffle(human)
    tmp = tempfile.mkdtemp(prefix="gpt2-detector-")
    files = {
        "train_machine": write(os.path.join(tmp, "tm.jsonl"), machine[:400]),
        "train_human": write(os.path.join(tmp, "th.jsonl"), human[:500]),
        "test_machine": write(os.path.join(tmp, "xm.jsonl"), machine[400:]),
        "test_human": write(os.path.join(tmp, "xh.jsonl"), human[500:]),
    }
    det = os.path.join(tmp, "detector")
    t = time.time()
    said = gpt2("detect", "train", "--kind", "features", "--model", a.model, "--human", files["train_human"],
                "--machine", files["train_machine"], "--out", det)
    train_s = time.time() - t
    print(said.strip())
    with open(os.path.join(det, "detector.json")) as f:
        validation = json.load(f)["validation"]
    held_out = evaluate(a.model, det, files["test_human"], files["test_machine"])
    print("\nheld out: real GPT-2 117M top-k 40 against WebText\n" + table(held_out))
    t = time.time()
    g = json.loads(gpt2("generate", "", "--model", a.model, "--max-tokens", "320", "--temperature", "1",
                        "--top-k", "40", "--seed", "18", "-n", str(a.samples), "--json"))
    gen_s = time.time() - t
    own = write(os.path.join(tmp, "own.jsonl"),
                [" ".join(s["text"].split(" ")[:250]) for s in g["samples"]])
    transfer = evaluate(a.model, det, files["test_human"], own)
    print(f"\ntransfer: {a.samples} samples of {a.model} (T 1, top-k 40) against WebText\n" + table(transfer))
    out = {"model": a.model, "train_seconds_including_scoring": round(train_s, 1),
           "train_texts": {"machine": 400, "human": 500}, "validation": validation,
           "held_out": held_out, "transfer_own_samples": transfer, "generate_seconds": round(gen_s, 1)}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
