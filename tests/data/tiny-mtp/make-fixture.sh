#!/bin/sh
# make-fixture.sh - writes tests/data/tiny-mtp/: a tiny BF16 checkpoint with an MTP layer
# (random weights from the library's synthetic writer, glm_synthetic_write with n_nextn 1)
# and mtp-ref.bin, the draft head's logits from scripts/mtp-ref.py (plain PyTorch, fp32)
# for its default id sequence. Needs torch for python3 (Debian: apt-get install python3-torch).
# Usage: tests/data/tiny-mtp/make-fixture.sh [BUILD]   (BUILD holds lib/libglm.a; default build)
set -eu
cd "$(dirname "$0")/../../.."
BUILD=${1:-build}
LIB="$BUILD/lib/libglm.a"
OUT=tests/data/tiny-mtp
[ -f "$LIB" ] || { echo "make-fixture.sh: $LIB not found: run make BUILD=$BUILD first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/gen.c" <<'C'
#include "glm.h"
#include <stdio.h>
/* Writes the tiny-mtp geometry (BF16) into directory argv[1]. */
int main(int argc, char **argv) {
    if (argc != 2) return 2;
    glm_hparams hp;
    if (glm_preset("tiny", 2, &hp)) return 1;
    hp.n_vocab = 256;
    hp.n_embd = 64;
    hp.n_head = 4;
    hp.n_head_kv = 2;
    hp.head_dim = 16;
    hp.n_rot = 8;
    hp.n_ff = 96;
    hp.n_ff_exp = 32;
    hp.n_expert = 4;
    hp.n_expert_used = 2;
    hp.n_dense_layer = 1;
    hp.n_ctx_train = 512;
    hp.n_nextn = 1;
    hp.eos[0] = 255;
    if (glm_synthetic_write(&hp, GLM_FMT_BF16, argv[1], 11, NULL, NULL)) {
        fprintf(stderr, "%s\n", glm_last_error());
        return 1;
    }
    return 0;
}
C
cc -std=c11 -D_GNU_SOURCE -Ilib "$tmp/gen.c" "$LIB" -lutf8proc -lm -pthread -o "$tmp/gen"
rm -f "$OUT"/config.json "$OUT"/model-*.safetensors "$OUT"/model.safetensors.index.json "$OUT"/mtp-ref.bin
"$tmp/gen" "$OUT"
/usr/bin/python3 scripts/mtp-ref.py "$OUT" "$OUT/mtp-ref.bin"
