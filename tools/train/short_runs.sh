#!/bin/sh
# Short runs that choose the default model's shape and learning rate (issue
# 17): each sees the same 400 steps x 16 x 256 tokens (1.64M) of the book
# data, with the same warm-up and cosine decay, and logs the held-out loss
# every 50 steps on the same 8 batches.
#   tools/train/short_runs.sh DATA OUT   (DATA from gpt2 prepare --unwrap)
set -eu
DATA=$1 OUT=$2
GPT2=${GPT2:-target/release/gpt2}
run() {
    name=$1; shift
    /usr/bin/time -f "$name wall %e s, peak RSS %M KB" "$GPT2" --threads 2 train --data "$DATA" --out "$OUT/$name" \
        --ctx 256 --batch 16 --seq 256 --steps 400 --warmup 40 --min-lr-ratio 0.1 \
        --eval-every 50 --eval-batches 8 --sample-every 0 --checkpoint-every 0 --seed 1337 "$@" > "$OUT/$name.out" 2>&1
    tail -1 "$OUT/$name.out"
}
mkdir -p "$OUT"
run L6-C256-lr1e-3 --layers 6 --heads 8 --embd 256 --lr 1e-3
run L8-C256-lr1e-3 --layers 8 --heads 8 --embd 256 --lr 1e-3
run L6-C256-lr2e-3 --layers 6 --heads 8 --embd 256 --lr 2e-3
