#!/bin/sh
# Token perplexity of each model on the first CHARS characters (60,000
# unless set; 0: the whole book) of each held-out book, as Project
# Gutenberg wraps it and with each paragraph joined into one line (the
# measurement of issue 17).
#   [CHARS=N] tools/train/heldout_perplexity.sh MODEL...   (directories or `default`)
set -eu
GPT2=${GPT2:-target/release/gpt2}
CHARS=${CHARS:-60000}
. "$(dirname "$0")/heldout.sh"
TMP=$(mktemp -d)
printf '| model | book | wrapped | joined |\n|---|---|---|---|\n'
for book in $(heldout_files); do
    name=$(basename "$book" .txt)
    python3 - "$book" "$TMP/$name" "$CHARS" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
text = text[: int(sys.argv[3])] if int(sys.argv[3]) else text
open(sys.argv[2] + ".wrapped", "w", encoding="utf-8").write(text)
paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip())
open(sys.argv[2] + ".joined", "w", encoding="utf-8").write("\n\n".join(paragraphs) + "\n")
PY
    for model in "$@"; do
        ppl() { "$GPT2" perplexity --model "$model" "$1" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"]["perplexity"]["token_perplexity,none"], 1))'; }
        printf '| %s | %s | %s | %s |\n' "$model" "$name" "$(ppl "$TMP/$name.wrapped")" "$(ppl "$TMP/$name.joined")"
    done
done
rm -r "$TMP"
