"""tiktoken's own `gpt2` encoding, built offline from ../shared/data/bpe.

tiktoken downloads GPT-2's `vocab.bpe` and `encoder.json` and checks their
SHA-256; here its downloader is pointed at the shared copies, so tiktoken's
own constructor (its split pattern, special tokens and hash checks) runs
unchanged.
"""
import os

import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public

BPE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "bpe")


def gpt2_encoding():
    original = tiktoken.load.read_file

    def read_local(blobpath):
        name = blobpath.rsplit("/", 1)[-1]
        local = os.path.join(BPE_DIR, name)
        if os.path.exists(local):
            with open(local, "rb") as f:
                return f.read()
        return original(blobpath)

    tiktoken.load.read_file = read_local
    try:
        return tiktoken.Encoding(**openai_public.gpt2())
    finally:
        tiktoken.load.read_file = original
