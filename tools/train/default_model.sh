#!/bin/sh
# The default model's full run and the measurements its card quotes, in one
# sitting. The training alone is STEPS x 16 x 256 tokens at about 2,560
# tokens/s on this project's 2-core machine: the built-in model is
# STEPS=3600, 14.7M tokens, 96 minutes.
#
#   STEPS=3600 LAYERS=6 LR=2e-3 tools/train/default_model.sh WORK
#
# WORK gets the prepared data, the run (checkpoints, log.csv, samples), the
# f16 export and the measurements; models/default is left alone (the
# printed next steps copy the export there). Needs target/release/gpt2 and, for the
# transformers check and the benches, a Python with torch, transformers and
# tiktoken ($PY).
set -eu
WORK=$1
STEPS=${STEPS:-3600} LAYERS=${LAYERS:-6} LR=${LR:-2e-3}
GPT2=${GPT2:-target/release/gpt2} PY=${PY:-python3}
export GPT2
. "$(dirname "$0")/heldout.sh"
VAL=$(for prefix in $HELDOUT; do printf -- '--val %s ' "$prefix"; done)
mkdir -p "$WORK"

# 1. Data: both folders, paragraphs joined, whole books held out, and no
#    training book a second copy of a held-out one.
python3 tools/train/heldout_overlap.py $VAL "$BOOKS/gutenberg" "$BOOKS/gutenberg-more"
"$GPT2" prepare --unwrap $VAL --out "$WORK/data" "$BOOKS/gutenberg" "$BOOKS/gutenberg-more"

# 2. The run (repeatable: batches depend only on the seed and the step;
#    --resume continues an interrupted run exactly).
/usr/bin/time -f "wall %e s, peak RSS %M KB" -o "$WORK/time.txt" \
    "$GPT2" --threads 2 train --data "$WORK/data" --out "$WORK/run" \
    --layers "$LAYERS" --heads 8 --embd 256 --ctx 256 --batch 16 --seq 256 \
    --steps "$STEPS" --lr "$LR" --warmup 200 --min-lr-ratio 0.1 \
    --eval-every 250 --eval-batches 16 --sample-every 2000 --checkpoint-every 500 --seed 1337 \
    --export-f16 "$WORK/export"
"$GPT2" plot "$WORK/run/log.csv" --out "$WORK/export/loss.png"

# 3. Measurements of the new model, before it replaces the old one.
#    Held-out books, as Gutenberg wraps them and with paragraphs joined:
#    the first 60 kB of each (the issue's measurement) and whole.
M="$WORK/export"
tools/train/heldout_perplexity.sh "$M" > "$WORK/heldout-60k.md"
CHARS=0 tools/train/heldout_perplexity.sh "$M" > "$WORK/heldout-whole.md"
"$GPT2" eval wikitext --model "$M" --data ../shared/data/eval/wikitext-2-raw/wiki.test.raw --json > "$WORK/wikitext.json"
"$GPT2" eval lambada --model "$M" --data ../shared/data/eval/lambada/lambada_test.jsonl --json > "$WORK/lambada.json"
for s in 1 2 3; do "$GPT2" generate "Once upon a time" --model "$M" --seed $s --max-tokens 200 > "$WORK/sample-$s.txt"; done
"$PY" tools/reference/check_trained_checkpoint.py "$M" $BOOKS/gutenberg/pg11_* --gpt2 "$GPT2" > "$WORK/transformers-check.txt"

echo "measured: $WORK. Next: cp $M/* models/default/ (and the log), cargo build --release, then"
echo "  $PY bench/countermeasures.py; $PY bench/quantization_quality.py --json bench/results-quantization-default.json"
echo "and update models/default/README.md, README.md and docs/countermeasures.md from what they print."
