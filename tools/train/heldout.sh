# The default model's held-out books (file-name prefixes, as `gpt2 prepare
# --val` matches them; a plain "Oz" would also match the 13 Oz sequels),
# sourced by the scripts beside this one.
HELDOUT="pg11_ pg55_ pg146_ pg910_ pg2770_"
BOOKS=../shared/data/train
heldout_files() {
    for prefix in $HELDOUT; do ls "$BOOKS"/gutenberg/"$prefix"* "$BOOKS"/gutenberg-more/"$prefix"* 2>/dev/null || true; done
}
