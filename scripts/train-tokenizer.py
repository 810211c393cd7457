#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of the tiny default model (models/glm-tiny/).

Why: the engine's tokenizer must read GLM-4.x tokenizer.json files, and the real GLM
file is not available here. This script makes one with the same machinery, trained
with HF `tokenizers` on the project corpus (scripts/fetch-corpus.sh):

  pre_tokenizer   Sequence[Split(GLM regex, "isolated"), ByteLevel(add_prefix_space=false,
                  trim_offsets=false, use_regex=false)]
  model           BPE over the 256 byte-level symbols, no unk token, no byte fallback,
                  ignore_merges=false (encoding always follows the merge ranks)
  normalizer      none
  decoder         ByteLevel
  post_processor  Sequence[ByteLevel(trim_offsets=false),
                  TemplateProcessing(single "[gMASK]:0 <sop>:0 $A:0",
                                     pair   "[gMASK]:0 <sop>:0 $A:0 $B:1")]
                  as GLM's files have it: encode(..., add_special_tokens=True) prepends
                  [gMASK]<sop>.
  vocabulary      8192 ids: 8160 from BPE training (ids 0..8159), then the 32 added tokens
                  below in GLM's order (ids 8160..8191).

Added tokens. The control tokens (<|...|>, [MASK], [gMASK], [sMASK], <sop>, <eop>) are
special=true: decode(skip_special_tokens=True) drops them. /nothink, <think>, </think> and
the tool-call tags are added tokens with special=false: they are still matched whole in
input text (added tokens of both kinds are split off before the pre-tokenizer), but they
stay visible when decoding with skip_special_tokens, because a client needs them to
separate the reasoning and to parse tool calls. All have normalized=false, lstrip=rstrip=
single_word=false.

tokenizer_config.json gets eos_token and pad_token <|endoftext|>, no bos_token (the
post-processor adds [gMASK]<sop>), the added tokens, and a GLM-4.5-style chat template:
  [gMASK]<sop><|system|>\\n{sys}<|user|>\\n{msg}<|assistant|>
  thinking off (enable_thinking=false): "/nothink" is appended to user messages and the
  generation prompt is "<|assistant|>\\n<think></think>"; earlier assistant turns are
  rendered "<|assistant|>\\n<think>{reasoning}</think>\\n{content}" (reasoning kept only
  after the last user message), tool calls as
  "\\n<tool_call>{name}\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>\\n</tool_call>",
  tool results as "<|observation|>\\n<tool_response>\\n{out}\\n</tool_response>".

Runs where `tokenizers` is installed (the GPU machine; no GPU is used):
  bash scripts/fetch-corpus.sh
  python3 scripts/train-tokenizer.py [--train .data/corpus/train.txt] [--out models/glm-tiny]
Deterministic: the same corpus and tokenizers version give the same files.
"""

import argparse
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

GLM_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

VOCAB_TOTAL = 8192

# (content, special) in GLM's order; ids follow the BPE vocabulary.
ADDED = [
    ("<|endoftext|>", True), ("[MASK]", True), ("[gMASK]", True), ("[sMASK]", True),
    ("<sop>", True), ("<eop>", True), ("<|system|>", True), ("<|user|>", True),
    ("<|assistant|>", True), ("<|observation|>", True),
    ("<|begin_of_image|>", True), ("<|end_of_image|>", True),
    ("<|begin_of_video|>", True), ("<|end_of_video|>", True),
    ("<|begin_of_audio|>", True), ("<|end_of_audio|>", True),
    ("<|begin_of_transcription|>", True), ("<|end_of_transcription|>", True),
    ("<|code_prefix|>", True), ("<|code_middle|>", True), ("<|code_suffix|>", True),
    ("/nothink", False), ("<think>", False), ("</think>", False),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<tool_response>", False), ("</tool_response>", False),
    ("<arg_key>", False), ("</arg_key>", False),
    ("<arg_value>", False), ("</arg_value>", False),
]

# GLM-4.5-style chat template. Whitespace is controlled explicitly ({%- -%} and string
# literals), so it renders the same with or without trim_blocks/lstrip_blocks.
CHAT_TEMPLATE = (
    "{%- macro text(c) -%}"
    "{%- if c is string -%}{{- c -}}"
    "{%- elif c is iterable and c is not mapping -%}"
    "{%- for it in c -%}"
    "{%- if it is mapping and it.type == 'text' -%}{{- it.text -}}"
    "{%- elif it is string -%}{{- it -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- elif c is none -%}"
    "{%- else -%}{{- c -}}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set think_off = enable_thinking is defined and not enable_thinking -%}"
    "{{- '[gMASK]<sop>' -}}"
    "{%- if tools -%}"
    "{{- '<|system|>\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}"
    "{{- '</tools>\\n\\nFor each function call, output the function name and arguments within the "
    "following XML format:\\n<tool_call>{function-name}\\n<arg_key>{arg-key-1}</arg_key>\\n"
    "<arg_value>{arg-value-1}</arg_value>\\n<arg_key>{arg-key-2}</arg_key>\\n"
    "<arg_value>{arg-value-2}</arg_value>\\n...\\n</tool_call>' -}}"
    "{%- endif -%}"
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}"
    "{{- '<|system|>\\n' + text(m.content) -}}"
    "{%- elif m.role == 'user' -%}"
    "{%- set u = text(m.content) -%}"
    "{{- '<|user|>\\n' + u -}}"
    "{%- if think_off and not u.endswith('/nothink') -%}{{- '/nothink' -}}{%- endif -%}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set content = text(m.content) -%}"
    "{%- set reasoning = '' -%}"
    "{%- if m.reasoning_content is defined and m.reasoning_content is string -%}"
    "{%- set reasoning = m.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}"
    "{%- set content = content.split('</think>')[-1] -%}"
    "{%- endif -%}"
    "{{- '<|assistant|>' -}}"
    "{%- if loop.index0 > ns.last_user and reasoning.strip() -%}"
    "{{- '\\n<think>' + reasoning.strip() + '</think>' -}}"
    "{%- else -%}{{- '\\n<think></think>' -}}{%- endif -%}"
    "{%- if content.strip() -%}{{- '\\n' + content.strip() -}}{%- endif -%}"
    "{%- if m.tool_calls is defined and m.tool_calls -%}"
    "{%- for tc in m.tool_calls -%}"
    "{%- set f = tc.function if tc.function is defined else tc -%}"
    "{{- '\\n<tool_call>' + f.name -}}"
    "{%- set args = f.arguments if f.arguments is defined else {} -%}"
    "{%- if args is mapping -%}"
    "{%- for k, v in args.items() -%}"
    "{{- '\\n<arg_key>' + k + '</arg_key>\\n<arg_value>' -}}"
    "{%- if v is string -%}{{- v -}}{%- else -%}{{- v | tojson -}}{%- endif -%}"
    "{{- '</arg_value>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|observation|>' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + text(m.content) + '\\n</tool_response>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant|>' -}}"
    "{%- if think_off -%}{{- '\\n<think></think>' -}}{%- endif -%}"
    "{%- endif -%}"
)


def read_texts(path):
    """Yield the corpus a paragraph (line) at a time; BPE counts words, so lines suffice."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line


def build(train_path):
    n_bpe = VOCAB_TOTAL - len(ADDED)
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False,
                               ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(read_texts(train_path), trainer=trainer)
    got = tok.get_vocab_size(with_added_tokens=False)
    if got != n_bpe:
        sys.exit("BPE training gave %d tokens, want %d" % (got, n_bpe))

    for content, special in ADDED:
        at = AddedToken(content, single_word=False, lstrip=False, rstrip=False,
                        normalized=False, special=special)
        if special:
            tok.add_special_tokens([at])
        else:
            tok.add_tokens([at])
    for i, (content, _) in enumerate(ADDED):
        if tok.token_to_id(content) != n_bpe + i:
            sys.exit("added token %r got id %s, want %d" % (content, tok.token_to_id(content), n_bpe + i))
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_TOTAL:
        sys.exit("vocabulary is %d, want %d" % (tok.get_vocab_size(with_added_tokens=True), VOCAB_TOTAL))

    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="[gMASK]:0 <sop>:0 $A:0",
            pair="[gMASK]:0 <sop>:0 $A:0 $B:1",
            special_tokens=[("[gMASK]", tok.token_to_id("[gMASK]")), ("<sop>", tok.token_to_id("<sop>"))],
        ),
    ])
    return tok


def tokenizer_config(tok):
    decoder = {}
    for content, special in ADDED:
        decoder[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": special,
        }
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [c for c, s in ADDED if s and c != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 2048,
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def self_check(tok):
    samples = [
        "The jury said it did find that many of Georgia's registration laws are outmoded.",
        "  Hello,\tworld!\n\n  It's 12345 o'clock -- I'LL SEE.  ",
        "数字 123 和 emoji 😀 ok",
        "<|user|>\nhi/nothink<|assistant|>\n<think></think>\nok<|endoftext|>",
    ]
    for s in samples:
        enc = tok.encode(s, add_special_tokens=False)
        back = tok.decode(enc.ids, skip_special_tokens=False)
        if back != s:
            sys.exit("round trip failed: %r -> %r" % (s, back))
    with_sp = tok.encode("The jury said", add_special_tokens=True).ids
    if with_sp[:2] != [tok.token_to_id("[gMASK]"), tok.token_to_id("<sop>")]:
        sys.exit("post-processor did not prepend [gMASK]<sop>: %s" % with_sp)
    enc = tok.encode(samples[3], add_special_tokens=False)
    print("  %r -> %s" % (samples[3], enc.tokens))
    print("  'The jury said' ->", tok.encode("The jury said", add_special_tokens=False).tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", default=".data/corpus/train.txt")
    ap.add_argument("--heldout", default=".data/corpus/heldout.txt")
    ap.add_argument("--out", default="models/glm-tiny")
    args = ap.parse_args()

    tok = build(args.train)
    self_check(tok)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    tok.save(path, pretty=True)
    # the Python ByteLevel pre-tokenizer constructor takes no trim_offsets; set it in the
    # file (offsets only, ids are unaffected) so the file says what GLM's says
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    for pt in tj["pre_tokenizer"]["pretokenizers"]:
        if pt["type"] == "ByteLevel":
            pt["trim_offsets"] = False
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(tok), f, indent=2, ensure_ascii=False)
        f.write("\n")

    # reload what was written, and report the compression on both splits
    tok2 = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
    self_check(tok2)
    for name, path in (("train", args.train), ("heldout", args.heldout)):
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        n = len(tok2.encode(text, add_special_tokens=False).ids)
        print("  %-8s %10d bytes %9d tokens %.2f bytes/token" % (name, len(text.encode()), n,
                                                                 len(text.encode()) / n))
    try:
        from transformers import AutoTokenizer
        ht = AutoTokenizer.from_pretrained(args.out)
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        for kw in ({}, {"enable_thinking": False}):
            r = ht.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
            print("  chat %s: %r" % (kw or "default", r))
    except Exception as e:  # transformers is optional for the tokenizer itself
        print("  (transformers check skipped: %s)" % e)
    print("wrote %s/tokenizer.json and tokenizer_config.json (vocab %d)" % (args.out, VOCAB_TOTAL))


if __name__ == "__main__":
    main()
