#!/usr/bin/env python3
"""Writes the seed corpora of the tokenizer fuzz targets (tests/fuzz/corpus/<name>/):
small real examples (a trimmed GLM-style tokenizer.json and variants, the split regexes
of real tokenizers with subjects, texts, id lists) and a reproducer of every finding
the targets guard against (repro-<what>). Run from the repository root:
    python3 tests/data/tok/fuzz-seeds.py
"""
import copy
import json
import os
import struct

ROOT = "tests/fuzz/corpus"
GLM_TINY = "models/glm-tiny/tokenizer.json"

GLM_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
             " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN_REGEX = GLM_REGEX.replace("\\p{N}{1,3}", "\\p{N}")
GPT4O_REGEX = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
               "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
               "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"
               "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
DEEPSEEK_REGEX = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
                  " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

TEXT = ("Hello world! It's 2024, isn't it? naïve café — 中文字符 日本語 한국어 ١٢٣ 😀👍🏽\r\n"
        "\tdef f(x):\n        return x**2  # done\n<|user|>hi<|assistant|> [gMASK]<sop>")


def write(name, fname, data):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    assert len(data) <= 8192, (name, fname, len(data))
    with open(os.path.join(d, fname), "wb") as f:
        f.write(data)


def trimmed_glm():
    """glm-tiny cut to its 256 byte tokens, the merges among them and a few more."""
    full = json.load(open(GLM_TINY, encoding="utf-8"))
    vocab = full["model"]["vocab"]
    keep = {k: v for k, v in vocab.items() if len(k) == 1}
    merges = []
    for m in full["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in keep and b in keep and a + b in vocab and len(merges) < 60:
            keep[a + b] = vocab[a + b]
            merges.append([a, b])
    t = copy.deepcopy(full)
    t["model"]["vocab"] = keep
    t["model"]["merges"] = merges
    specials = {"[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|endoftext|>"}
    t["added_tokens"] = [a for a in full["added_tokens"] if a["content"] in specials]
    return t


def mini():
    """A small GLM-style tokenizer: letters, a few merges, two special tokens."""
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}
    merges = [["a", "b"], ["Ġ", "a"], ["x", "y"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    specials = [{"id": len(vocab), "content": "[gMASK]", "special": True},
                {"id": len(vocab) + 1, "content": "<sop>", "special": True}]
    tpl = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[gMASK]"}}, {"SpecialToken": {"id": "<sop>"}},
                                                    {"Sequence": {"id": "A"}}],
           "special_tokens": {"[gMASK]": {"id": "[gMASK]", "ids": [len(vocab)]},
                              "<sop>": {"id": "<sop>", "ids": [len(vocab) + 1]}}}
    return {"added_tokens": specials, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": GLM_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
            "post_processor": {"type": "Sequence", "processors": [{"type": "ByteLevel"}, tpl]},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": merges}}


def dump(t):
    return json.dumps(t, ensure_ascii=False, separators=(",", ":"))


def tokenizer_json():
    base = trimmed_glm()
    write("tokenizer-json", "glm-trimmed.json", dump(base))
    v = copy.deepcopy(base)
    v["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "NFC"}]}
    v["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}
    v["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|endoftext|>", v["added_tokens"][0]["id"]],
                           "cls": ["[gMASK]", v["added_tokens"][0]["id"]]}
    write("tokenizer-json", "bytelevel-nfkc-roberta.json", dump(v))
    for beh in ("MergedWithPrevious", "MergedWithNext", "Contiguous", "Removed"):
        v = copy.deepcopy(base)
        v["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Split", "pattern": {"String": " "},
                                                        "behavior": beh, "invert": beh == "Removed"})
        write("tokenizer-json", "split-%s.json" % beh.lower(), dump(v))
    v = copy.deepcopy(base)
    v["model"]["unk_token"] = "a"
    v["model"]["fuse_unk"] = True
    v["model"]["ignore_merges"] = True
    for a in v["added_tokens"]:
        a.update(lstrip=True, rstrip=True, single_word=True, normalized=True, special=False)
    write("tokenizer-json", "unk-added-flags.json", dump(v))
    v = copy.deepcopy(base)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?>\\p{L}+)|\\d{2,3}?|[^\\s]++|(?=\\s)\\s|^$|\\bx\\B"
    write("tokenizer-json", "regex-constructs.json", dump(v))
    for tag, re_ in (("gpt4o", GPT4O_REGEX), ("deepseek", DEEPSEEK_REGEX)):
        v = copy.deepcopy(base)
        v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = re_
        write("tokenizer-json", "regex-%s.json" % tag, dump(v))

    # reproducers, on a smaller base
    base = mini()
    write("tokenizer-json", "mini.json", dump(base))
    v = copy.deepcopy(base)
    v["model"]["unk_token"] = "x" * 3000          # longer than every key: a heap overflow
    write("tokenizer-json", "repro-long-unk-token", dump(v))
    v = copy.deepcopy(base)
    v["model"]["vocab"] = {k: i for k, i in base["model"]["vocab"].items() if k != "z"}
    v["post_processor"]["processors"][1]["special_tokens"]["<sop>"]["ids"] = [base["model"]["vocab"]["z"]]  # in range, not a token
    write("tokenizer-json", "repro-template-id-missing", dump(v))
    v = copy.deepcopy(base)
    v["post_processor"]["processors"][1]["special_tokens"]["<sop>"]["ids"] = [1e20]
    write("tokenizer-json", "repro-template-id-huge", dump(v))
    for tag, val in (("string", "5"), ("bool", True)):
        v = copy.deepcopy(base)
        v["post_processor"] = {"type": "RobertaProcessing", "cls": ["[gMASK]", val], "sep": ["<sop>", 3]}
        write("tokenizer-json", "repro-roberta-%s-id" % tag, dump(v))
    v = copy.deepcopy(base)
    v["model"]["vocab"][""] = max(base["model"]["vocab"].values()) + 1000
    write("tokenizer-json", "repro-empty-vocab-key", dump(v))
    for tag, pat in (("groups", "(" * 2000 + "a" + ")" * 2000), ("classes", "[" * 2000 + "a" + "]" * 2000),
                     ("quantifiers", "a" + "*" * 4000),
                     ("empty-repeat-hang", "(?:(?i)(?i)){100000}{100000}{100000}"),
                     ("possessive", "a*+b|(?>a*)b|(?:x?){20000}y"), ("qmark-multibyte", "(?é")):
        v = copy.deepcopy(base)
        v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pat
        write("tokenizer-json", "repro-regex-%s" % tag, dump(v))
    v = copy.deepcopy(base)
    v["model"]["byte_fallback"] = True
    write("tokenizer-json", "repro-byte-fallback", dump(v))


def regex():
    subjects = [TEXT, "  leading and trailing  \n\n\t\r\n  ", "I'M HERE, YOU'RE THERE; we'll see 12345678"]
    for i, (tag, pat) in enumerate((("glm", GLM_REGEX), ("qwen3", QWEN_REGEX), ("gpt4o", GPT4O_REGEX),
                                    ("deepseek", DEEPSEEK_REGEX), ("gpt2", GPT2_REGEX))):
        write("regex", "split-%s" % tag, pat + "\0" + subjects[i % 3])
    for tag, pat, s in (("atomic", "(?>a+|ab)c|a*+b", "aaab aabc abc"),
                        ("lookahead", "\\s+(?!\\S)|\\w+(?=,)", "a,   b  c,"),
                        ("lazy-counted", "a{2,3}?b{,2}c{3}|x{1,}?", "aaabbccc xxx"),
                        ("case", "(?i:straße|K)(?m:.)", "STRASSE ſtraße \u212a\n"),
                        ("anchors", "^\\w+$|\\A.|.\\z|\\bx\\B|\\Z", "ab\ncd\nxy\n"),
                        ("classes", "[\\p{Lu}\\p{Nd}&&]+|[^\\s\\p{L}]|[a-c[x-z]]|[\\x41-\\x{5A}\\u00e9]", "ABC9 é xyz"),
                        ("escapes", "\\x41\\u00e9\\x{1F600}\\t\\n\\0", "Aé😀\t\n\0")):
        write("regex", tag, pat + "\0" + s)
    write("regex", "pattern-only", "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+")
    # reproducers
    write("regex", "repro-nesting-groups", "(" * 2000 + "a" + ")" * 2000 + "\0a")
    write("regex", "repro-nesting-classes", "[" * 2000 + "a" + "]" * 2000 + "\0a")
    write("regex", "repro-nesting-quantifiers", "a" + "{1}" * 1000 + "\0a")
    write("regex", "repro-empty-repeat-hang", "(?:(?i)(?i)){100000}{100000}{100000}\0ab")
    write("regex", "repro-possessive-slow", "a*+b\0" + "a" * 1500)
    write("regex", "repro-atomic-slow", "(?>a*)b\0" + "a" * 1500)
    write("regex", "repro-optional-repeat-slow", "a(?:x?){20000}c\0" + "a" * 1500)
    write("regex", "repro-qmark-multibyte", "(?\u00e9")
    write("regex", "repro-cut-subject", b"[^a]|\\b\0a\xe4")
    # an escaped U+1F600 was read as the end of a list of escape letters (fuzz-regex)
    write("regex", "repro-escaped-emoji", "\\x41\\u00e9\\x{1F600}\\t\\n\\\U0001F600\t\n\0")
    # backtracking over invalid UTF-8 stepped back before the repeat's start (fuzz-regex)
    write("regex", "repro-invalid-subject-backtrack", b"^\\w+$|\\A\\B|\\Z\0A" + b"\x85" * 60 + b".|.\\z|\\bx\\Bab\ncd\nxy\n")


def encode():
    for i, t in enumerate((TEXT, "The quick brown fox jumps over the lazy dog.\n" * 3,
                           "    indented\n\n\n\t\ttabs   \r\n", "1234567890 3.14159 1,000,000",
                           "<|user|><|user|>[gMASK]<sop><|endoftext|>", "e\u0301 \u00e9 \U0001F468\u200d\U0001F469")):
        write("encode", "text-%d" % i, t)
    for tag, b in (("ff", b"abc\xff"), ("cut", b"ab\xe4\xb8"), ("surrogate", b"x\xed\xa0\x80y"),
                   ("overlong", b"\xc0\xaf"), ("too-big", b"ok\xf4\x90\x80\x80"), ("lone-cont", b"\x80abc")):
        write("encode", "repro-invalid-utf8-%s" % tag, b)


def decode():
    full = json.load(open(GLM_TINY, encoding="utf-8"))
    vocab = full["model"]["vocab"]
    special = [a["id"] for a in full["added_tokens"]]
    n = max(list(vocab.values()) + special) + 1

    def ids(*v):
        return struct.pack("<%di" % len(v), *v)
    write("decode", "hello-world", ids(744, 300, 78, 864))
    write("decode", "specials", ids(*special[:8]))
    write("decode", "bytes-partial-utf8", ids(vocab["â"], vocab["Ĥ"], vocab["A"], vocab["ð"]))
    write("decode", "all-bytes", ids(*[vocab[k] for k in sorted(vocab) if len(k) == 1][:256]))
    write("decode", "empty", b"")
    write("decode", "repro-out-of-range", ids(744, n, 300))
    write("decode", "repro-negative", ids(-1, 744))
    write("decode", "repro-huge", ids(2**31 - 1, -2**31))
    write("decode", "repro-odd-length", ids(744, 300) + b"\x01\x02")


if __name__ == "__main__":
    tokenizer_json()
    regex()
    encode()
    decode()
