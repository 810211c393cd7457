#!/bin/sh
# make-tiny-tp.sh - writes tests/data/tiny-tp/{bf16,fp8ch}: the tensor-parallel test
# checkpoints, random weights from the library's synthetic writer (glm_synthetic_write)
# with a geometry made for splitting: 8 KV heads (2 query heads each, so --tp 1/2/4/8
# give 8/4/2/1 KV heads a rank), 16 routed experts (ep: 16/N each), intermediate sizes
# that 8 does not divide (dense 36, experts 20: the tp slices differ by a row), and a
# vocabulary of 509 (prime: the lm_head rows split unevenly for every N > 1).
# Usage: scripts/make-tiny-tp.sh [BUILD]   (BUILD holds lib/libglm.a; default build)
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build}
LIB="$BUILD/lib/libglm.a"
[ -f "$LIB" ] || { echo "make-tiny-tp.sh: $LIB not found: run make BUILD=$BUILD first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/gen.c" <<'C'
#include "glm.h"
#include <stdio.h>
#include <string.h>
/* Writes the tiny-tp geometry in format argv[2] (bf16 | fp8ch) into directory argv[1]. */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    glm_hparams hp;
    if (glm_preset("tiny", 3, &hp)) return 1;
    hp.n_vocab = 509;
    hp.n_embd = 32;
    hp.n_head = 16;
    hp.n_head_kv = 8;
    hp.head_dim = 8;
    hp.n_rot = 4;
    hp.n_ff = 36;
    hp.n_ff_exp = 20;
    hp.n_expert = 16;
    hp.n_expert_used = 4;
    hp.n_expert_shared = 1;
    hp.n_dense_layer = 1;
    hp.n_ctx_train = 256;
    hp.eos[0] = 508;
    glm_weight_format f = strcmp(argv[2], "bf16") == 0 ? GLM_FMT_BF16 : GLM_FMT_FP8_CHANNEL;
    if (glm_synthetic_write(&hp, f, argv[1], 7, NULL, NULL)) {
        fprintf(stderr, "%s\n", glm_last_error());
        return 1;
    }
    return 0;
}
C
${CC:-cc} -std=c11 -D_GNU_SOURCE -Ilib "$tmp/gen.c" -o "$tmp/gen" "$LIB" -lutf8proc -lm -pthread
for fmt in bf16 fp8ch; do
    out=tests/data/tiny-tp/$fmt
    rm -rf "$out"
    mkdir -p "$out"
    "$tmp/gen" "$out" "$fmt"
done
du -sh tests/data/tiny-tp
