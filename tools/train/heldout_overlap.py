#!/usr/bin/env python3
"""Checks that no training book is a second copy of a held-out book: for
each held-out book, the largest share of its long lines (50+ characters,
case and surrounding space ignored) that also appear in any one training
book. Exits non-zero above --max-share.

    python3 tools/train/heldout_overlap.py --val pg11_ --val pg55_ DIR...
"""
import argparse
import hashlib
import os
import sys


def long_lines(path):
    with open(path, encoding="utf-8") as f:
        return {hashlib.md5(l.strip().lower().encode()).digest() for l in f if len(l.strip()) >= 50}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--val", action="append", required=True, help="held out: file names containing this (as gpt2 prepare --val)")
    ap.add_argument("--max-share", type=float, default=0.01)
    a = ap.parse_args()
    files = [os.path.join(d, f) for d in a.dirs for f in sorted(os.listdir(d)) if f.endswith(".txt")]
    val = [f for f in files if any(k in os.path.basename(f) for k in a.val)]
    train = {f: long_lines(f) for f in files if f not in val}
    worst_all = 0.0
    for v in val:
        lines = long_lines(v)
        share, book = max((len(lines & t) / max(1, len(lines)), os.path.basename(f)) for f, t in train.items())
        worst_all = max(worst_all, share)
        print(f"{os.path.basename(v)}: {len(lines)} long lines, at most {share:.4f} of them in one training book ({book})")
    print(f"{len(val)} held-out books, {len(train)} training books, largest shared share {worst_all:.4f}")
    sys.exit(1 if worst_all > a.max_share else 0)


if __name__ == "__main__":
    main()
