#!/usr/bin/env python3
"""Independent Python reference for `gpt2 eval`: transformers GPT2LMHeadModel
(float32) scored with lm-eval-harness's own pieces wherever they exist.

    python3 tools/reference/eval_reference.py TASK --data FILE --model DIR \
        [--limit N] [--stride S] [--threads T] [--batch B] [--bootstrap-iters K]

TASK: lambada | lambada_word | wikitext | ptb | bytes | perplexity.
Prints one JSON object shaped like lm-eval's output on stdout; progress on stderr.

Taken from the installed lm_eval package rather than rewritten, so that the
reference cannot drift from lm-eval: the LAMBADA request tokenization
(TemplateLM.loglikelihood/_encode_pair), the rolling windows
(utils.get_rolling_token_windows, make_disjoint_window), the WikiText
detokenizer and per-document counts (tasks/wikitext/preprocess_wikitext.py)
and the aggregations (api.metrics). Written out here because lm-eval has no
copy: the WikiText page splitter (the EleutherAI/wikitext_document_level
loading script), Megatron-LM's PTB detokenizer, Hugging Face's sliding-window
("stride") loop and the GPT-2-paper-style whole-word LAMBADA judge.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
import types

import torch
from transformers import GPT2LMHeadModel

from lm_eval.api.metrics import (bits_per_byte, mean, mean_stderr, perplexity, stderr_for_metric,
                                 weighted_perplexity)
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiktoken_offline import gpt2_encoding  # noqa: E402

try:
    from lm_eval.tasks.wikitext import preprocess_wikitext as wikitext_task
except ImportError:  # task folders are data, not always an importable package
    import lm_eval
    _path = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "wikitext", "preprocess_wikitext.py")
    _spec = importlib.util.spec_from_file_location("preprocess_wikitext", _path)
    wikitext_task = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(wikitext_task)

EOT = 50256  # <|endoftext|>: GPT-2's BOS/EOS, lm-eval's prefix_token_id for GPT-2
TASK_NAMES = {"lambada": "lambada_openai", "lambada_word": "lambada_openai_word", "wikitext": "wikitext",
              "ptb": "ptb", "bytes": "bytes", "perplexity": "perplexity"}
WORD_TOKENS = 8  # lambada_word: new tokens decoded at most


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def stderr(fn, items):
    """lm-eval reports "N/A" for a standard error over fewer than two items."""
    return fn(items) if len(items) > 1 else "N/A"


class Tokenizer:
    """Just enough of an lm-eval causal LM for TemplateLM.loglikelihood to run
    unchanged: it moves the context's trailing whitespace onto the
    continuation, encodes the pair jointly and handles the empty context;
    _loglikelihood_tokens is replaced by the identity, so it hands back the
    (request, context_enc, continuation_enc) triples HFLM would score."""
    backend = "causal"
    prefix_token_id = EOT
    _encode_pair = TemplateLM._encode_pair
    loglikelihood = TemplateLM.loglikelihood

    def __init__(self):
        self.enc = gpt2_encoding()

    def tok_encode(self, text, add_special_tokens=None, **_):
        return self.enc.encode_ordinary(text)  # GPT-2's HF tokenizer adds no special tokens either

    def _loglikelihood_tokens(self, requests, disable_tqdm=False):
        return requests

    def pairs(self, contexts_continuations):
        reqs = [types.SimpleNamespace(args=cc) for cc in contexts_continuations]
        return [(ctx, cont) for _, ctx, cont in self.loglikelihood(reqs, disable_tqdm=True)]


# ---------------------------------------------------------------- model side

@torch.no_grad()
def score(model, spans, batch, label):
    """spans: (inputs, targets) pairs, the last len(targets) positions of
    inputs predicting targets (lm-eval's layout). Returns (float64 sum of the
    targets' float32 log-softmax, every target is the argmax) per span.
    Equal-length inputs are batched; no padding, so no attention mask."""
    out = [(0.0, True)] * len(spans)
    todo = sorted((i for i, (inp, tgt) in enumerate(spans) if tgt), key=lambda i: len(spans[i][0]))
    start = last = time.time()
    k = 0
    while k < len(todo):
        n = len(spans[todo[k]][0])
        group = [todo[k]]
        while k + len(group) < len(todo) and len(group) < batch and len(spans[todo[k + len(group)]][0]) == n:
            group.append(todo[k + len(group)])
        m = max(len(spans[i][1]) for i in group)  # only positions that predict a target
        logp = torch.log_softmax(model(torch.tensor([spans[i][0] for i in group])).logits[:, -m:], dim=-1)
        for row, i in zip(logp, group):
            tgt = torch.tensor(spans[i][1])
            lp = row[m - len(tgt):]
            out[i] = (lp.gather(1, tgt[:, None]).double().sum().item(), bool((lp.argmax(-1) == tgt).all()))
        k += len(group)
        if time.time() - last > 15 or k == len(todo):
            last = time.time()
            log(f"[{label}] {k}/{len(todo)} spans, {last - start:.1f}s")
    return out


def rolling_spans(tokens, n_ctx):
    """lm-eval's loglikelihood_rolling for one document, then the model input
    exactly as HFLM._loglikelihood_tokens builds it from (context, continuation)."""
    windows = map(make_disjoint_window,
                  get_rolling_token_windows(tokens, prefix_token=EOT, max_seq_len=n_ctx, context_len=1))
    return [((ctx + cont)[-(n_ctx + 1):][:-1], cont) for ctx, cont in windows]


def stride_spans(tokens, n_ctx, stride):
    """Hugging Face's "Perplexity of fixed-length models" loop over
    seq = [EOT] + tokens. Its window seq[begin:end] scores its last trg_len
    labels, but the label shift never lets a window's first token be a target,
    so at most end-begin-1 are scored: with stride == n_ctx the first token of
    every window after the first is never scored (that is HF's loop, kept)."""
    seq = [EOT] + tokens
    spans, prev_end = [], 0
    for begin in range(0, len(seq), stride):
        end = min(begin + n_ctx, len(seq))
        n = min(end - prev_end, end - begin - 1)
        spans.append((seq[begin:end - 1], seq[end - n:end]))  # the final token is only ever a target
        prev_end = end
        if end == len(seq):
            break
    return spans


def document_lls(model, docs_tokens, n_ctx, stride, batch, label):
    """Summed log-likelihood of every document, each scored on its own."""
    spans, owner = [], []
    for d, tokens in enumerate(docs_tokens):
        s = rolling_spans(tokens, n_ctx) if stride is None else stride_spans(tokens, n_ctx, stride)
        spans += s
        owner += [d] * len(s)
    n_tok = sum(map(len, docs_tokens))
    n_tgt = sum(len(t) for _, t in spans)
    log(f"[{label}] {len(docs_tokens)} docs, {n_tok} tokens, {len(spans)} windows, {n_tgt} scored targets"
        + ("" if n_tgt == n_tok else f" ({n_tok - n_tgt} never scored: HF's stride loop with stride == n_ctx)"))
    if stride is None or stride < n_ctx:
        assert n_tgt == n_tok, "every token must be scored exactly once"
    lls = [0.0] * len(docs_tokens)
    for d, (ll, _) in zip(owner, score(model, spans, batch, label)):
        lls[d] += ll
    return lls, n_tgt


@torch.no_grad()
def greedy_word(model, enc, context, n_ctx):
    """GPT-2-paper-style LAMBADA guess: greedy decoding until a whole word is out."""
    ids, new, word = context[-(n_ctx - WORD_TOKENS):], [], ""
    for _ in range(WORD_TOKENS):
        logits = model(torch.tensor([ids + new])).logits[0, -1]
        new.append(int(torch.argmax(logits)))  # ties -> lowest id
        word = enc.decode_bytes(new).decode("utf-8", errors="replace").lstrip()
        cut = next((i for i, c in enumerate(word) if not (c.isalnum() or c in "'-")), None)
        if cut is not None:
            return word[:cut]
    return word


# ---------------------------------------------------------------- data side

def wikitext_pages(path):
    """Pages exactly as the EleutherAI/wikitext_document_level loading script
    (wikitext_document_level.py, _generate_examples) yields them: a page starts
    at each level-1 heading line " = Title = "; a page that is only whitespace
    is dropped, except the last one, which is always yielded; lines are joined
    with "\\n" (so a page keeps its trailing " " lines and the file's final "")."""
    with open(path, encoding="utf-8") as f:  # text mode, as the script reads it
        lines = f.read().split("\n")
    pages, cur = [], []
    for line in lines:
        r = line.replace("= = =", "===").replace("= =", "==").strip()
        if r.startswith("= ") and r.strip().endswith(" ="):
            page = "\n".join(cur)
            if page.strip():
                pages.append(page)
            cur = []
        cur.append(line)
    pages.append("\n".join(cur))
    return pages


def ptb_detokenizer(string):
    """Megatron-LM tasks/zeroshot_gpt/detokenizer.py, verbatim order (note that
    " N " -> "1 " also eats the space before the number)."""
    for old, new in ((" '", "'"), (" \n", "\n"), ("\n ", "\n"), (" n't", "n't"),
                     (" N ", "1 "), ("$ 1", "$1"), ("# 1", "#1")):
        string = string.replace(old, new)
    return string


def read_utf8(path):
    with open(path, "rb") as f:
        raw = f.read()
    return raw.decode("utf-8"), len(raw)  # strict: a non-UTF-8 file is an error


# ---------------------------------------------------------------- tasks

def run_lambada(a, model, n_ctx, tok, word):
    with open(a.data, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    original = len(texts)
    texts = texts[:a.limit] if a.limit is not None else texts
    # lambada_openai.yaml: doc_to_text / doc_to_target
    pairs = tok.pairs([(" ".join(t.split(" ")[:-1]), " " + t.split(" ")[-1]) for t in texts])
    if word:
        hits, start = [], time.time()
        for i, (t, (ctx, _)) in enumerate(zip(texts, pairs)):
            hits.append(int(greedy_word(model, tok.enc, ctx, n_ctx) == t.split(" ")[-1]))
            if (i + 1) % 250 == 0 or i + 1 == len(texts):
                log(f"[lambada_word] {i + 1}/{len(texts)}, acc {mean(hits):.4f}, {time.time() - start:.1f}s")
        metrics = {"acc": (mean(hits), stderr(mean_stderr, hits))}
    else:
        spans = [((ctx + cont)[-(n_ctx + 1):][:-1], cont) for ctx, cont in pairs]
        res = score(model, spans, a.batch, "lambada")
        lls, accs = [ll for ll, _ in res], [int(g) for _, g in res]
        ppl_se = "N/A"
        if a.bootstrap_iters > 0:  # lm-eval's bootstrap; it prints to stdout, keep that off ours
            with contextlib.redirect_stdout(sys.stderr):
                ppl_se = stderr(stderr_for_metric(perplexity, a.bootstrap_iters), lls)
        metrics = {"perplexity": (perplexity(lls), ppl_se), "acc": (mean(accs), stderr(mean_stderr, accs))}
    return metrics, original, len(texts)


def run_wikitext(a, model, n_ctx, tok):
    pages = wikitext_pages(a.data)
    original = len(pages)
    docs = [{"page": p} for p in (pages[:a.limit] if a.limit is not None else pages)]
    tokens = [tok.enc.encode_ordinary(wikitext_task.wikitext_detokenizer(d)) for d in docs]
    lls, _ = document_lls(model, tokens, n_ctx, a.stride, a.batch, "wikitext")
    items = [wikitext_task.process_results(d, [ll]) for d, ll in zip(docs, lls)]
    col = lambda m: [it[m] for it in items]  # noqa: E731
    metrics = {"word_perplexity": weighted_perplexity(col("word_perplexity")),
               "byte_perplexity": weighted_perplexity(col("byte_perplexity")),
               "bits_per_byte": bits_per_byte(col("bits_per_byte"))}
    return {k: (v, "N/A") for k, v in metrics.items()}, original, len(docs)


def run_single_document(a, model, n_ctx, tok):
    """ptb, bytes and perplexity: the whole file is one document."""
    text, n_bytes = read_utf8(a.data)
    scored_text = ptb_detokenizer(text) if a.task == "ptb" else text
    tokens = tok.enc.encode_ordinary(scored_text)
    (ll,), n_tgt = document_lls(model, [tokens], n_ctx, a.stride, a.batch, a.task)
    if a.task == "ptb":  # Mikolov's convention: every sentence (line) ends with one <eos> word
        words = len(text.split()) + sum(1 for line in text.split("\n") if line.strip())
        metrics = {"word_perplexity": weighted_perplexity([(ll, words)]),
                   "byte_perplexity": weighted_perplexity([(ll, n_bytes)]),
                   "bits_per_byte": bits_per_byte([(ll, n_bytes)])}
    elif a.task == "bytes":
        metrics = {"bits_per_byte": bits_per_byte([(ll, n_bytes)]),
                   "bits_per_char": bits_per_byte([(ll, len(text))]),  # len(str) = code points
                   "byte_perplexity": weighted_perplexity([(ll, n_bytes)])}
    else:
        metrics = {"token_perplexity": weighted_perplexity([(ll, n_tgt)]),  # n_tgt == len(tokens) unless stride == n_ctx
                   "word_perplexity": weighted_perplexity([(ll, len(text.split()))]),
                   "byte_perplexity": weighted_perplexity([(ll, n_bytes)]),
                   "bits_per_byte": bits_per_byte([(ll, n_bytes)])}
    return {k: (v, "N/A") for k, v in metrics.items()}, 1, 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=TASK_NAMES)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="Hugging Face GPT-2 dir (config.json + model.safetensors)")
    ap.add_argument("--limit", type=int, help="first N LAMBADA lines / WikiText documents")
    ap.add_argument("--stride", type=int, help="Hugging Face sliding windows instead of lm-eval rolling ones")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="equal-length windows per forward pass")
    ap.add_argument("--bootstrap-iters", type=int, default=0,
                    help="lambada perplexity_stderr by lm-eval's bootstrap (lm-eval's default is 100000)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    model = GPT2LMHeadModel.from_pretrained(a.model, dtype=torch.float32).eval()
    n_ctx = model.config.n_positions  # what lm-eval's HFLM.max_length reads first
    if a.stride is not None and not 1 <= a.stride <= n_ctx:
        ap.error(f"--stride must be in 1..{n_ctx}")
    if a.stride is not None and a.task.startswith("lambada"):
        log("--stride ignored: LAMBADA is not a rolling task")
        a.stride = None  # config reports what was used
    if a.limit is not None and a.task not in ("lambada", "lambada_word", "wikitext"):
        log(f"--limit ignored: {a.task} scores the whole file as one document")
        a.limit = None
    tok = Tokenizer()
    start = time.time()
    if a.task.startswith("lambada"):
        metrics, original, effective = run_lambada(a, model, n_ctx, tok, a.task == "lambada_word")
    elif a.task == "wikitext":
        metrics, original, effective = run_wikitext(a, model, n_ctx, tok)
    else:
        metrics, original, effective = run_single_document(a, model, n_ctx, tok)
    log(f"[{a.task}] done in {time.time() - start:.1f}s")

    name = TASK_NAMES[a.task]
    result = {"alias": name}
    for metric, (value, se) in metrics.items():
        result[f"{metric},none"] = value
        result[f"{metric}_stderr,none"] = se
    print(json.dumps({
        "results": {name: result},
        "n-samples": {name: {"original": original, "effective": effective}},
        "config": {"model": a.model, "data": a.data, "limit": a.limit, "stride": a.stride, "n_ctx": n_ctx},
    }, indent=2))


if __name__ == "__main__":
    main()
