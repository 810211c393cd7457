#!/usr/bin/env bash
# mutate.sh - mutation testing of the CPU test suite: applies one small bug at a time
# to a scratch copy of the tree (never the checkout itself), runs the CPU tests there,
# and prints a table: mutation, file, caught or missed, and which tests failed.
#
# Usage: scripts/mutate.sh [-f REGEX] [-t "test-a test-b"] [-r REV | -u] [-b] [-k] [-l]
#   -f REGEX   only the mutations whose name matches REGEX (grep -E)
#   -t TESTS   run only these test binaries (names under tests/, e.g. "test-parity test-ctx");
#              the default is the whole CPU suite (`make CUDA=0 test`)
#   -r REV     test the tree of commit REV (git archive) instead of the working tree
#   -u         also copy the untracked, not ignored files under the source folders
#   -b         go on when the unmutated tree already fails some tests (work in progress
#              elsewhere): a mutation is then caught when a test that passed fails
#   -k         keep the scratch directory (printed at the end)
#   -l         list the mutations and exit
# Environment: MUTATE_JOBS (make -j, default 1), MUTATE_TIMEOUT (seconds a mutation's
# build and tests may take, default 900), MUTATE_DIR (scratch parent, default /tmp).
#
# A mutation is (name, file, exact original text, replacement text). The original text
# must occur exactly once in the file, wherever it moved to; otherwise the mutation is
# reported "stale" and skipped (edit its text here). The scratch copy holds the
# checkout's tracked files as they are in the working tree now (with -u its untracked
# sources too; with -r a commit's tree); the unmutated tree must pass first (see -b).
# Exit status: 0 when every applicable mutation was caught, 1 when one was missed or
# stale, 2 on a usage error or when the unmutated tree fails.
set -u

NAMES=(); FILES=(); ORIGS=(); REPLS=()
# mut NAME FILE ORIGINAL REPLACEMENT
mut() { NAMES+=("$1"); FILES+=("$2"); ORIGS+=("$3"); REPLS+=("$4"); }

# ---- the mutations (issue 19's seven first) ----
mut rmsnorm-eps-outside-sqrt lib/backend-cpu.c \
    'float r = (float)(1.0 / sqrt(ss / (double)dim + eps));' \
    'float r = (float)(1.0 / (sqrt(ss / (double)dim) + eps));'
mut attn-online-rescale-dropped lib/backend-cpu.c \
    'float corr = expf(mx - nmx);' \
    'float corr = 1.0f;'
mut top-p-cut-strict lib/sampler.c \
    'if (c >= p->top_p) break;' \
    'if (c > p->top_p) break;'
mut min-p-cut-strict lib/sampler.c \
    'pr[m] >= p->min_p * pr[0]' \
    'pr[m] > p->min_p * pr[0]'
mut kld-in-bits tools/glm-perplexity.c \
    'kl += exp(bl[v]) * (bl[v] - lp[v]);' \
    'kl += exp(bl[v]) * (bl[v] - lp[v]) / log(2.0);'
mut kld-same-top-vs-target tools/glm-perplexity.c \
    'same_top += top_b == top_c;' \
    'same_top += top_b == ids[t];'
mut config-head-kv-divides-unchecked lib/model.c \
    'BAD(hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv,' \
    'BAD(hp->n_head_kv < 1,'
mut convert-block-scales-transposed lib/convert.c \
    'rc = pwrite_all(sh->fd, b->s, (size_t)bc * 4, base + o->scale_off + row_block * (uint64_t)bc * 4, sh->path);' \
    'for (int64_t jj = 0; jj < bc && !rc; jj++) rc = pwrite_all(sh->fd, (const char *)b->s + jj * 4, 4, base + o->scale_off + ((uint64_t)jj * (uint64_t)((o->rows + GLM_BLOCK - 1) / GLM_BLOCK) + row_block) * 4, sh->path);'
mut tokenizer-byte-fallback-accepted tokenizer/tokenizer.c \
    'if (jbool(model, "byte_fallback", 0)) {' \
    'if (0 && jbool(model, "byte_fallback", 0)) {'
# ---- more of the same kinds ----
mut rope-dims-off-by-one lib/backend-cpu.c \
    'double freq = pow((double)theta, -2.0 * i / n_rot);' \
    'double freq = pow((double)theta, -2.0 * (i + 1) / n_rot);'
mut rope-pairs-one-short lib/backend-cpu.c \
    'for (int i = 0; i < half; i++) {' \
    'for (int i = 0; i < half - 1; i++) {'
mut attn-gqa-group-index lib/backend-cpu.c \
    'h = (int)(it % H), g = h / G;' \
    'h = (int)(it % H), g = h % (H / G);'
mut attn-scale-n-rot lib/backend-cpu.c \
    'const float scale = 1.0f / sqrtf((float)hd);' \
    'const float scale = 1.0f / sqrtf((float)hp->n_rot);'
mut qk-norm-eps-1e-6 lib/backend-cpu.c \
    'if (hp->use_qk_norm) rmsnorm_row(qh, &L->q_norm, qh, hd, hp->rms_eps);' \
    'if (hp->use_qk_norm) rmsnorm_row(qh, &L->q_norm, qh, hd, 1e-6f);'
mut router-bias-sign lib/backend-cpu.c \
    'choice[e] = sc[e] + glm_weight_get1(&L->router_bias, e);' \
    'choice[e] = sc[e] - glm_weight_get1(&L->router_bias, e);'
mut norm-topk-prob-ignored lib/backend-cpu.c \
    'if (hp->norm_topk_prob) w[t * K + k] /= sum + 1e-20f;' \
    'if (0) w[t * K + k] /= sum + 1e-20f;'
mut routed-scale-dropped lib/backend-cpu.c \
    'w[t * K + k] *= hp->routed_scale;' \
    'w[t * K + k] *= 1.0f;'
mut kv-page-rounding-extra-page lib/ctx.c \
    'p1 = held_pages(c, s, (int64_t)c->seq_len[s] + add[s]);' \
    'p1 = held_pages(c, s, (int64_t)c->seq_len[s] + add[s] + 1);'
mut kv-page-need-undercounted lib/ctx.c \
    'need += held_pages(c, s, len) - held_pages(c, s, c->seq_len[s]);' \
    'need += (int)(len / GLM_PAGE) - (int)(c->seq_len[s] / GLM_PAGE);'
mut seq-clear-last-page-kept lib/ctx.c \
    'for (int i = 0; i < c->max_pages; i++)
        if (pt[i] >= 0)' \
    'for (int i = 0; i < c->max_pages - 1; i++)
        if (pt[i] >= 0)'
mut seq-clear-last-slot-rejected lib/ctx.c \
    'int glm_ctx_seq_clear(glm_ctx *c, int seq) {
    if (seq < 0 || seq >= c->p.n_seq_max)' \
    'int glm_ctx_seq_clear(glm_ctx *c, int seq) {
    if (seq < 0 || seq >= c->p.n_seq_max - 1)'
mut temperature-applied-twice lib/sampler.c \
    'pr[i] = exp((l[s->idx[i]] - mx) / p->temp);' \
    'pr[i] = exp((l[s->idx[i]] - mx) / p->temp / p->temp);'
mut repeat-penalty-wrong-sign lib/sampler.c \
    'l[t] = l[t] > 0 ? l[t] / p->repeat_penalty : l[t] * p->repeat_penalty;' \
    'l[t] = l[t] / p->repeat_penalty;'
mut top-k-off-by-one lib/sampler.c \
    'int n = p->top_k > 0 && p->top_k < n_vocab ? p->top_k : n_vocab;' \
    'int n = p->top_k > 1 && p->top_k < n_vocab ? p->top_k - 1 : n_vocab;'
mut draw-skips-last-candidate lib/sampler.c \
    'double r = uniform(s) * tot, c = 0;' \
    'double r = uniform(s) * (tot - pr[n - 1]), c = 0;'
mut silu-sign lib/backend-cpu.c \
    'return v / (1.0f + expf(-v));' \
    'return v / (1.0f + expf(v));'

# ---- driver ----
usage() { sed -n '2,/^set -u$/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
FILTER=''; TESTS=''; KEEP=0; LIST=0; REV=''; UNTRACKED=0; BASE_OK=0
while getopts 'f:t:r:ubklh' o; do
    case $o in
        f) FILTER=$OPTARG ;; t) TESTS=$OPTARG ;; r) REV=$OPTARG ;; u) UNTRACKED=1 ;; b) BASE_OK=1 ;;
        k) KEEP=1 ;; l) LIST=1 ;; *) usage ;;
    esac
done
if [ "$LIST" = 1 ]; then
    for i in "${!NAMES[@]}"; do printf '%-36s %s\n' "${NAMES[$i]}" "${FILES[$i]}"; done
    exit 0
fi
command -v python3 >/dev/null || { echo "mutate.sh: python3 is needed to apply the mutations" >&2; exit 2; }
ROOT=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel) || exit 2
JOBS=${MUTATE_JOBS:-1}
LIMIT=${MUTATE_TIMEOUT:-900}
WORK=$(mktemp -d "${MUTATE_DIR:-/tmp}/glm-mutate.XXXXXX") || exit 2
TREE=$WORK/main
cleanup() { if [ "$KEEP" = 1 ]; then echo "scratch kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# the scratch copy: a commit's tree, or the working tree's tracked files (and untracked sources)
mkdir -p "$TREE"
if [ -n "$REV" ]; then
    git -C "$ROOT" archive "$REV" | tar -xf - -C "$TREE" || exit 2
else
    ( cd "$ROOT" && { git ls-files -z
        [ "$UNTRACKED" = 1 ] && git ls-files -z --others --exclude-standard -- lib tokenizer models tools tests scripts ggml-free-kernels docs; } |
      while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf - ) | tar -xf - -C "$TREE" || exit 2
fi
# the reference tokenizers the tokenizer tests read from ../shared/tokenizers
[ -d "$ROOT/../shared" ] && ln -s "$(cd "$ROOT/../shared" && pwd)" "$WORK/shared"
if [ -z "${GLM_TOKENIZERS:-}" ] && [ -d "$ROOT/.data/tokenizers" ]; then export GLM_TOKENIZERS=$ROOT/.data/tokenizers; fi

BUILD=build-mut
# Runs the tests in the scratch tree; output in $WORK/log. Returns make's status.
run_suite() {
    if [ -z "$TESTS" ]; then
        ( cd "$TREE" && timeout "$LIMIT" nice make CUDA=0 BUILD=$BUILD -j"$JOBS" test ) >"$WORK/log" 2>&1
    else
        local bins=''
        for t in $TESTS; do bins="$bins $BUILD/tests/$t"; done
        ( cd "$TREE" && timeout "$LIMIT" nice make CUDA=0 BUILD=$BUILD -j"$JOBS" all $bins &&
          GLM_BIN=$BUILD/bin timeout "$LIMIT" sh tests/run-tests.sh $bins ) >"$WORK/log" 2>&1
    fi
}
# Prints the failed tests of the last run (binary:test, or binary:crash), space-separated.
failures() {
    awk '/^== /{b=$2; sub(/.*\//, "", b)}
         /^\[ FAIL \]/{printf "%s:%s ", b, $4}
         /exited [0-9]+ without a summary line|FAILED: exited with status [0-9]+ without a summary/{printf "%s:crash ", b}
         /FAILED: still running after/{printf "%s:hang ", b}
         /FAILED: exited with status [0-9]+ after its summary/{printf "%s:exit-status ", b}' "$WORK/log"
}

echo "mutate.sh: scratch tree $TREE; baseline run" >&2
BASE_FAILS=''
if ! run_suite; then
    BASE_FAILS=$(failures)
    if [ "$BASE_OK" = 0 ] || ! grep -q '^== ' "$WORK/log"; then
        echo "mutate.sh: the unmutated tree fails: ${BASE_FAILS:-see below}" >&2
        tail -n 40 "$WORK/log" >&2
        KEEP=1
        exit 2
    fi
    echo "mutate.sh: the unmutated tree already fails (not counted below): $BASE_FAILS" >&2
fi
echo "mutate.sh: baseline: $(tail -n 1 "$WORK/log")" >&2

printf '%-36s %-24s %-8s %s\n' mutation file result "failed tests"
printf '%-36s %-24s %-8s %s\n' -------- ---- ------ ------------
n_caught=0; n_missed=0; n_stale=0
for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]} file=${FILES[$i]}
    if [ -n "$FILTER" ] && ! printf '%s' "$name" | grep -Eq -- "$FILTER"; then continue; fi
    src=$TREE/$file
    cp -p "$src" "$WORK/orig" 2>/dev/null || { printf '%-36s %-24s %-8s %s\n' "$name" "$file" stale "no such file"; n_stale=$((n_stale + 1)); continue; }
    count=$(ORIG=${ORIGS[$i]} REPL=${REPLS[$i]} python3 -c '
import os, sys
p = sys.argv[1]; s = open(p, encoding="utf-8").read()
o, r = os.environ["ORIG"], os.environ["REPL"]
n = s.count(o)
if n == 1: open(p, "w", encoding="utf-8").write(s.replace(o, r))
print(n)' "$src")
    if [ "$count" != 1 ]; then
        printf '%-36s %-24s %-8s %s\n' "$name" "$file" stale "original text found $count times"
        n_stale=$((n_stale + 1)); continue
    fi
    touch "$src"
    run_suite; st=$?
    fails=''
    for f in $(failures); do case " $BASE_FAILS " in *" $f "*) ;; *) fails="$fails$f " ;; esac; done
    if [ $st -eq 124 ]; then result=caught; fails="${fails}timeout"
    elif grep -q 'Error [0-9]' "$WORK/log" && ! grep -q '^== ' "$WORK/log"; then result=build; fails="does not compile"
    elif [ $st -ne 0 ] && { [ -z "$BASE_FAILS" ] || [ -n "$fails" ]; }; then result=caught
    else result=MISSED
    fi
    [ "$result" = caught ] && [ -z "$fails" ] && fails="(make exited $st)"
    printf '%-36s %-24s %-8s %s\n' "$name" "$file" "$result" "$fails"
    case $result in caught) n_caught=$((n_caught + 1)) ;; *) n_missed=$((n_missed + 1)) ;; esac
    cp -p "$WORK/orig" "$src" && touch "$src"
done
echo "caught $n_caught, missed $n_missed (including any that do not compile), stale $n_stale"
[ $n_missed -eq 0 ] && [ $n_stale -eq 0 ]
