#!/usr/bin/env python3
"""Reference ids and chat prompts for tests/test-tokenizer.c, from Hugging Face
`tokenizers` and `transformers` (run where they are installed, e.g. the GPU machine).

For every tokenizer (the four real ones in --tokenizers DIR, models/glm-tiny, and the
variants of tests/data/tok/variants.json) and every line of tests/data/tok/corpus.jsonl
it writes tests/data/tok/NAME.ids:

    P i ids...   encode(text, add_special_tokens=False).ids
    N i ids...   the same with encode_special_tokens=True, where it differs from P
    A i ids...   encode(text, add_special_tokens=True).ids, for some lines
    D i "text"   decode(P ids) as a JSON string, where it differs from the line itself

chat.json holds the GLM-4.5 (tests/data/tok/glm45.jinja) and GLM-4.7 (glm47.jinja)
chat templates rendered by transformers' apply_chat_template for a few conversations.

With --bench-text FILE it also times HF encode on one thread (the whole text as one
string, and line by line) and, with --glm-tokenize BIN, runs `BIN --bench` and a
whole-text id comparison of BIN against HF on the same text and on a random text.

    python3 scripts/tokenizer-refs.py --tokenizers ../shared/tokenizers \
        [--bench-text .data/brown.txt --glm-tokenize build/bin/glm-tokenize] [--log FILE]
"""
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import random
import subprocess
import sys
import time

from tokenizers import Tokenizer
import tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "tok")
REAL = ["qwen3", "llama3_1", "deepseek_v3", "gpt4o"]

LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tokenizer_json(name, tokdir, variants):
    """The tokenizer.json text of a real tokenizer, glm-tiny, or a variant."""
    if name == "glm-tiny":
        with open(os.path.join(ROOT, "models", "glm-tiny", "tokenizer.json"), encoding="utf-8") as f:
            return f.read()
    if name in REAL:
        with open(os.path.join(tokdir, name, "tokenizer.json"), encoding="utf-8") as f:
            return f.read()
    v = variants[name]
    d = json.loads(tokenizer_json(v["base"], tokdir, variants))
    if "pre_tokenizer" in v:
        d["pre_tokenizer"] = v["pre_tokenizer"]
    if "added_tokens" in v:
        d["added_tokens"] = d["added_tokens"] + v["added_tokens"]
    return json.dumps(d)


def has_special_text(s):
    return "<" in s or "[" in s


def write_ids(name, tok, corpus):
    path = os.path.join(DATA, name + ".ids")
    n_n = n_a = n_d = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("# %s: HF tokenizers %s, %d corpus lines\n" % (name, tokenizers.__version__, len(corpus)))
        for i, text in enumerate(corpus):
            p = tok.encode(text, add_special_tokens=False).ids
            f.write("P %d%s\n" % (i, "".join(" %d" % x for x in p)))
            n = p
            if hasattr(tok, "encode_special_tokens"):
                tok.encode_special_tokens = True
                n = tok.encode(text, add_special_tokens=False).ids
                tok.encode_special_tokens = False
            if n != p:
                f.write("N %d%s\n" % (i, "".join(" %d" % x for x in n)))
                n_n += 1
            if i < 12 or has_special_text(text):
                a = tok.encode(text, add_special_tokens=True).ids
                f.write("A %d%s\n" % (i, "".join(" %d" % x for x in a)))
                n_a += 1
            d = tok.decode(p, skip_special_tokens=False)
            if d != text:
                f.write("D %d %s\n" % (i, json.dumps(d, ensure_ascii=True)))
                n_d += 1
    log("%-20s %d lines, %d N, %d A, %d D -> %s" % (name, len(corpus), n_n, n_a, n_d, os.path.relpath(path, ROOT)))


CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nHello there!"},
     {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "<think>\n\nreason here\n\n</think>\n\nthe answer  "}],
    [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "Checking."},
     {"role": "tool", "content": "{\"temp\": 20}"}, {"role": "tool", "content": "{\"temp\": 21}"},
     {"role": "user", "content": "Thanks"}],
    [{"role": "user", "content": "Already off /nothink"}],
    [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Answer.", "reasoning_content": "  Because.  "}],
    [{"role": "user", "content": "  spaced  \n"}, {"role": "assistant", "content": "\n\n  padded answer  \n"}],
    [{"role": "system", "content": "系统提示"}, {"role": "user", "content": "你好 😀"}],
]


def render_chats():
    out = []
    try:
        import transformers
        from transformers import PreTrainedTokenizerFast
        ht = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, "models", "glm-tiny", "tokenizer.json"))
        renderer = "transformers %s apply_chat_template" % transformers.__version__
    except Exception as e:  # noqa: BLE001
        log("transformers unavailable (%s): no chat references" % e)
        return
    for tname in ["glm45", "glm47"]:
        with open(os.path.join(DATA, tname + ".jinja"), encoding="utf-8") as f:
            tpl = f.read()
        for ci, conv in enumerate(CONVERSATIONS):
            for gen in (True, False):
                for think in (True, False):
                    text = ht.apply_chat_template(conv, chat_template=tpl, tokenize=False,
                                                  add_generation_prompt=gen, enable_thinking=think)
                    out.append({"template": tname, "conversation": ci, "messages": conv,
                                "add_generation_prompt": gen, "enable_thinking": think, "text": text})
    with open(os.path.join(DATA, "chat.json"), "w", encoding="utf-8") as f:
        json.dump({"renderer": renderer, "cases": out}, f, ensure_ascii=True, indent=0)
    log("chat.json: %d cases rendered with %s" % (len(out), renderer))


def random_text(seed, n_chars):
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 +
            list("     \n\n\t\r'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`") * 2 +
            list("éüßñçŁøæåÅΩπσЖжщ你好世界日本語한국어ひらがなカタカナ١٢٣४५६٧Ⅻ½²") +
            ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "e\u0301", "\u0308", "\u200d", "\u00a0", "\u3000", "\u2009",
             "'s", "'LL", "’s", "\r\n", "   ", "<|endoftext|>", "<think>", "ſ", "K", "İ", "1234567"])
    return "".join(rng.choice(pool) for _ in range(n_chars))


def bench_hf(name, tok, text):
    lines = text.splitlines(keepends=True)
    mb = len(text.encode("utf-8")) / 1e6
    best = 1e9
    ids = None
    for _ in range(2):
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        best = min(best, time.perf_counter() - t0)
    best_l = 1e9
    for _ in range(1):
        t0 = time.perf_counter()
        for line in lines:
            tok.encode(line, add_special_tokens=False)
        best_l = min(best_l, time.perf_counter() - t0)
    log("HF %-12s whole text %.1f MB/s (best of 2), line by line %.1f MB/s, %d tokens, %.2f MB"
        % (name, mb / best, mb / best_l, len(ids), mb))
    return ids


def compare_c(name, path, bin_, text_path, ref_ids):
    r = subprocess.run([bin_, "--tokenizer", path, "-f", text_path, "--ids"], capture_output=True, text=True)
    if r.returncode != 0:
        log("C   %-12s FAILED: %s" % (name, r.stderr.strip()))
        return
    ours = json.loads(r.stdout)
    if ours == ref_ids:
        log("C   %-12s %s: ids identical (%d tokens)" % (name, os.path.basename(text_path), len(ours)))
        return
    k = next((i for i, (a, b) in enumerate(zip(ours, ref_ids)) if a != b), min(len(ours), len(ref_ids)))
    log("C   %-12s %s: MISMATCH at token %d of %d/%d: ours %s hf %s"
        % (name, os.path.basename(text_path), k, len(ours), len(ref_ids), ours[max(0, k - 3):k + 5], ref_ids[max(0, k - 3):k + 5]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizers", default=os.path.join(ROOT, "..", "shared", "tokenizers"))
    ap.add_argument("--bench-text")
    ap.add_argument("--glm-tokenize")
    ap.add_argument("--log")
    args = ap.parse_args()

    log("tokenizers %s, python %s" % (tokenizers.__version__, sys.version.split()[0]))
    corpus = []
    with open(os.path.join(DATA, "corpus.jsonl"), encoding="utf-8") as f:
        for line in f:
            corpus.append(json.loads(line))
    variants = load_json(os.path.join(DATA, "variants.json"))
    names = REAL + ["glm-tiny"] + list(variants)
    toks = {}
    for name in names:
        tok = Tokenizer.from_str(tokenizer_json(name, args.tokenizers, variants))
        toks[name] = tok
        write_ids(name, tok, corpus)
    render_chats()

    if args.bench_text:
        with open(args.bench_text, encoding="utf-8") as f:
            text = f.read()
        rnd = random_text(2024, 200000)
        rnd_path = os.path.join(os.path.dirname(os.path.abspath(args.bench_text)), "random.txt")
        with open(rnd_path, "w", encoding="utf-8", newline="") as f:
            f.write(rnd)
        hf_ids = {}
        for name in ["llama3_1", "glm-tiny"]:
            hf_ids[name] = bench_hf(name, toks[name], text)
        part = text[:1500000]
        part_path = os.path.join(os.path.dirname(os.path.abspath(args.bench_text)), "part.txt")
        with open(part_path, "w", encoding="utf-8", newline="") as f:
            f.write(part)
        if args.glm_tokenize:
            for name in ["llama3_1", "glm-tiny"]:
                path = (os.path.join(ROOT, "models", "glm-tiny", "tokenizer.json") if name == "glm-tiny"
                        else os.path.join(args.tokenizers, name, "tokenizer.json"))
                r = subprocess.run([args.glm_tokenize, "--tokenizer", path, "-f", args.bench_text, "--bench", "3"],
                                   capture_output=True, text=True)
                for line in (r.stdout + r.stderr).strip().splitlines():
                    log("C   %-12s %s" % (name, line))
            for name in REAL + ["glm-tiny"]:
                path = (os.path.join(ROOT, "models", "glm-tiny", "tokenizer.json") if name == "glm-tiny"
                        else os.path.join(args.tokenizers, name, "tokenizer.json"))
                if name in hf_ids:
                    compare_c(name, path, args.glm_tokenize, args.bench_text, hf_ids[name])
                else:
                    compare_c(name, path, args.glm_tokenize, part_path, toks[name].encode(part, add_special_tokens=False).ids)
                compare_c(name, path, args.glm_tokenize, rnd_path, toks[name].encode(rnd, add_special_tokens=False).ids)
    if args.log:
        with open(args.log, "w", encoding="utf-8") as f:
            f.write("\n".join(LOG) + "\n")


if __name__ == "__main__":
    main()
