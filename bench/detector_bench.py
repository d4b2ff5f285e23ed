#!/usr/bin/env python3
"""Trained detectors (`gpt2 detect train`, issue 18) on real GPT-2 text:
the fine-tuned classifier (`--kind classifier`) and the feature detector
(`--kind features`), beside the zero-shot statistics. Drives the release
binary.

    cargo build --release
    python3 bench/detector_bench.py [--model default] [--samples 200] [--kinds classifier,features]
        [--work DIR] [--out bench/results-detector.json]

Data: ../shared/data/detect: 529 texts of the real GPT-2 117M (top-k 40)
and 700 WebText documents, every text cut to its first 250 words, as the
issue's measurements were. Split with a fixed seed: 400 machine and 500
human texts to train, the other 129 and 200 held out.

1. `gpt2 detect train` of each kind on the training split: what it
   measured on its own validation (5-fold out-of-fold scores for features;
   its held-out 20% for the classifier), and the time it took.
2. `gpt2 detect evaluate --detector` on the held-out split: every
   zero-shot statistic and the detector, AUROC and TPR at 1% / 0.1% FPR
   with bootstrap 95% intervals, and the scoring throughput.
3. Transfer to generators it never saw, against the held-out WebText:
   --samples texts of the built-in model (`gpt2 generate`, temperature 1,
   top-k 40, as the GPT-2 paper sampled), and --samples texts of the
   built-in model fine-tuned on the 500 training WebText documents
   (`gpt2 train --init`, --finetune-steps steps), sampled the same way.
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


def samples(model, n, seed):
    """n samples cut to 250 words; an empty one (the model ended the text
    at once) is left out."""
    g = json.loads(gpt2("generate", "", "--model", model, "--max-tokens", "320", "--temperature", "1",
                        "--top-k", "40", "--seed", str(seed), "-n", str(n), "--json"))
    texts = [" ".join(s["text"].split(" ")[:250]) for s in g["samples"]]
    return [t for t in texts if t.strip()]


class Work:
    """A work folder whose finished steps a rerun reuses (--work), with
    the seconds each took when it ran."""

    def __init__(self, path):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.times_file = os.path.join(path, "seconds.json")
        self.seconds = json.load(open(self.times_file)) if os.path.exists(self.times_file) else {}

    def step(self, name, output, make):
        """Runs make() unless output (a path under the folder) exists."""
        path = os.path.join(self.path, output)
        if not os.path.exists(path):
            t = time.time()
            make(path)
            self.seconds[name] = round(time.time() - t, 1)
            json.dump(self.seconds, open(self.times_file, "w"))
        return path


def finetuned_generator(base, human_texts, steps, tmp):
    """The base model fine-tuned on human_texts: another generator."""
    data, out = os.path.join(tmp, "ft-data"), os.path.join(tmp, "ft-run")
    gpt2("prepare", write(os.path.join(tmp, "ft.jsonl"), human_texts), "--out", data)
    gpt2("train", "--data", data, "--init", base, "--out", out, "--steps", str(steps), "--lr", "3e-4",
         "--warmup", "20", "--batch", "4", "--seq", "256", "--eval-every", str(steps), "--sample-every", "0",
         "--checkpoint-every", str(steps))
    with open(os.path.join(out, "latest")) as f:
        return os.path.join(out, f.read().strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--kinds", default="classifier,features")
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--work", help="a folder for the intermediate files; a rerun reuses what it holds")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results-detector.json"))
    a = ap.parse_args()
    rng = random.Random(18)
    machine, human = read("gpt2-117M-k40.valid.jsonl"), read("webtext.train.first700.jsonl")
    rng.shuffle(machine)
    rng.shuffle(human)
    work = Work(a.work or tempfile.mkdtemp(prefix="gpt2-detector-"))
    tmp = work.path
    files = {
        "train_machine": write(os.path.join(tmp, "tm.jsonl"), machine[:400]),
        "train_human": write(os.path.join(tmp, "th.jsonl"), human[:500]),
        "test_machine": write(os.path.join(tmp, "xm.jsonl"), machine[400:]),
        "test_human": write(os.path.join(tmp, "xh.jsonl"), human[500:]),
    }
    own = work.step("generate", "own.jsonl", lambda p: write(p, samples(a.model, a.samples, 18)))
    ft_model = os.path.join(tmp, "ft-run")
    work.step("finetune_generator", "ft-run", lambda p: finetuned_generator(a.model, human[:500], a.finetune_steps, tmp))
    with open(os.path.join(ft_model, "latest")) as f:
        ft_model = os.path.join(ft_model, f.read().strip())
    ft = work.step("generate_finetuned", "ft-samples.jsonl", lambda p: write(p, samples(ft_model, a.samples, 19)))
    count = lambda path: sum(1 for line in open(path) if line.strip())
    out = {"model": a.model, "train_texts": {"machine": 400, "human": 500},
           "held_out_texts": {"machine": len(machine) - 400, "human": len(human) - 500},
           "samples": {"own": count(own), "finetuned": count(ft)}, "finetune_steps": a.finetune_steps,
           "kinds": {}}
    for kind in a.kinds.split(","):
        det = work.step(f"train_{kind}", "detector-" + kind, lambda p: print(gpt2(
            "detect", "train", "--kind", kind, "--model", a.model, "--human", files["train_human"],
            "--machine", files["train_machine"], "--out", p).strip()))
        with open(os.path.join(det, "detector.json")) as f:
            card = json.load(f)
        t = time.time()
        held_out = evaluate(a.model, det, files["test_human"], files["test_machine"])
        eval_s = time.time() - t
        print(f"\n{kind}: held out, real GPT-2 117M top-k 40 against WebText\n" + table(held_out))
        transfer_own = evaluate(a.model, det, files["test_human"], own)
        print(f"\n{kind}: transfer, {count(own)} samples of {a.model} (T 1, top-k 40) against WebText\n"
              + table(transfer_own))
        transfer_ft = evaluate(a.model, det, files["test_human"], ft)
        print(f"\n{kind}: transfer, {count(ft)} samples of {a.model} fine-tuned on WebText, against WebText\n"
              + table(transfer_ft))
        out["kinds"][kind] = {
            "validation": card["validation"], "training": card.get("training"),
            "evaluate_seconds_329_texts_including_statistics": round(eval_s, 1),
            "held_out": held_out, "transfer_own_samples": transfer_own, "transfer_finetuned_samples": transfer_ft}
    out["seconds"] = work.seconds
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
