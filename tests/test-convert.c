/* test-convert.c - glm-convert -m (BF16 -> FP8): the fast E4M3 rounding against the
 * library's reference rounding; every converted tensor, in both formats, against the
 * checkpoints scripts/make-tiny-refs.py quantised in torch (tests/data/tiny-fp8ch,
 * tiny-fp8blk) and, dequantised, against the BF16 source element by element; the
 * converted model's logits against the fixture's; and the output folder's safety: the
 * input is never written, a non-empty folder needs --force and loses its stale shards,
 * tokenizer files are copied, and a failure leaves neither output nor temporary folder.
 * Every test works on a copy of tests/data/tiny-bf16 in its scratch folder. */
#include "convert.h"
#include "glm.h"
#include "internal.h"
#include "refs.h"
#include "test.h"

#include <dirent.h>
#include <stdarg.h>
#include <sys/wait.h>

#define tmp test_tmp

static const char *bin(void) { return getenv("GLM_BIN") ? getenv("GLM_BIN") : "build/bin"; }

/* Runs a shell command with stderr to tmp/stderr.txt; returns its exit status (-1: killed). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[4096], full[4400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "%s 2>%s/stderr.txt", cmd, tmp);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Returns 1 when tmp/stderr.txt (the last command's messages) contains s. */
static int stderr_has(const char *s) {
    char path[512], *text = NULL;
    snprintf(path, sizeof path, "%s/stderr.txt", tmp);
    if (glm_read_file(path, &text, NULL) != GLM_OK) return 0;
    int found = strstr(text, s) != NULL;
    if (!found) fprintf(stderr, "  stderr was: %s\n", text);
    free(text);
    return found;
}

/* FNV-1a over the names, sizes and bytes of every file in dir (sorted); 0 if unreadable. */
static uint64_t dir_sum(const char *dir) {
    struct dirent **list;
    int n = scandir(dir, &list, NULL, alphasort);
    if (n < 0) return 0;
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        char path[1024], *data = NULL;
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%s", dir, list[i]->d_name);
        for (const char *c = list[i]->d_name; *c; c++) { h ^= (unsigned char)*c; h *= 1099511628211ull; }
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && glm_read_file(path, &data, &len) == GLM_OK) {
            for (size_t k = 0; k < len; k++) { h ^= (unsigned char)data[k]; h *= 1099511628211ull; }
            h ^= len;
        }
        free(data);
        free(list[i]);
    }
    free(list);
    return h;
}

/* Number of entries of dir whose name contains s (".tmp-", ".old-"); -1 if unreadable. */
static int count_named(const char *dir, const char *s) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strstr(e->d_name, s) != NULL;
    closedir(d);
    return n;
}

static int exists(const char *path) { struct stat st; return stat(path, &st) == 0; }

/* A fresh copy of tests/data/tiny-bf16 at tmp/name (its path into dir); returns 0 on success. */
static int fresh_source(const char *name, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", tmp, name);
    return sh("rm -rf '%s' && cp -r tests/data/tiny-bf16 '%s'", dir, dir);
}

static const char *fmt_flag[2] = { "fp8-channel", "fp8-block" };
static const char *fixture[2] = { "tests/data/tiny-fp8ch", "tests/data/tiny-fp8blk" };

/* Converts tests/data/tiny-bf16 once per format into tmp/conv-<fmt>; returns its path or NULL. */
static const char *converted(int f) {
    static char dirs[2][512];
    static int done[2];
    if (!done[f]) {
        char src[512];
        snprintf(dirs[f], sizeof dirs[f], "%s/conv-%s", tmp, fmt_flag[f]);
        if (fresh_source("src-shared", src, sizeof src) != 0) return NULL;
        if (sh("%s/glm-convert -m '%s' --format %s -t 2 --out '%s'", bin(), src, fmt_flag[f], dirs[f]) != 0) return NULL;
        done[f] = 1;
    }
    return dirs[f];
}

/* ---- the rounding ---- */

/* Signed position of an E4M3 byte on the number line (-0 and +0 both 0). */
static int fp8_ord(uint8_t b) { return b & 0x80 ? -(b & 0x7f) : b; }

/* Returns the E4M3 byte nearest to f by the definition (the oracle of the branch-free
 * glm_f32_to_fp8e4m3): a binary search over the 127 magnitudes, ties to the even code,
 * saturating at +-448, NaN -> 0x7f. */
static uint8_t ref_fp8e4m3(float f) {
    if (isnan(f)) return 0x7f;
    uint8_t sign = f < 0 ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7e;
    int lo = 0, hi = 126;
    while (lo < hi) { /* smallest code with value >= a */
        int mid = (lo + hi) / 2;
        if (glm_fp8e4m3_to_f32((uint8_t)mid) < a) lo = mid + 1; else hi = mid;
    }
    int c = lo;
    if (c > 0) {
        float vhi = glm_fp8e4m3_to_f32((uint8_t)c), vlo = glm_fp8e4m3_to_f32((uint8_t)(c - 1));
        float dhi = vhi - a, dlo = a - vlo;
        if (dlo < dhi || (dlo == dhi && ((c - 1) & 1) == 0)) c = c - 1;
    }
    return sign | (uint8_t)c;
}

static int rounding_agrees(float f) {
    uint8_t a = glm_f32_to_fp8e4m3(f), b = ref_fp8e4m3(f);
    if (a != b) fprintf(stderr, "  %a (%g): fast 0x%02x, reference 0x%02x\n", (double)f, (double)f, a, b);
    return a == b;
}

TEST(fp8_rounding_matches_reference) {
    glm_numbers_init();
    int bad = 0;
    /* the rounding is a step function of |f|: agreeing at every code value, every midpoint
     * between codes and their neighbouring floats (ties go to the even code) pins it down */
    for (int c = 0; c < 127; c++)
        for (int sgn = 0; sgn < 2; sgn++) {
            float v = glm_fp8e4m3_to_f32((uint8_t)c), mid = (v + glm_fp8e4m3_to_f32((uint8_t)(c + 1))) / 2;
            float pts[2] = { v, mid };
            for (int p = 0; p < 2; p++) {
                float x = sgn ? -pts[p] : pts[p], lo = x, hi = x;
                bad += !rounding_agrees(x);
                for (int k = 0; k < 4; k++) {
                    lo = nextafterf(lo, -INFINITY);
                    hi = nextafterf(hi, INFINITY);
                    bad += !rounding_agrees(lo) + !rounding_agrees(hi);
                }
            }
        }
    float special[] = { 0.0f, -0.0f, 448.0f, -448.0f, 464.0f, 480.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN, -NAN,
                        1e-45f, -1e-45f, 1e-40f, 0x1p-10f, 0x1p-9f, 0x1.8p-10f, 0x1p-6f, 0x1.fp-7f, 447.9f, 432.0f, 431.9f };
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) bad += !rounding_agrees(special[i]);
    /* and a million random bit patterns across the whole float range */
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < 1000000 && bad < 20; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        uint32_t u = (uint32_t)s;
        if ((i & 1) == 0) u = (u & 0x80000000u) | (0x38000000u + (u & 0x0fffffffu)); /* half near E4M3's range */
        float f;
        memcpy(&f, &u, 4);
        bad += !rounding_agrees(f);
    }
    CHECK_MSG(bad == 0, "%d floats round differently", bad);
}

/* ---- every tensor against the torch-quantised fixture and the BF16 source ---- */

/* Compares one format's conversion with its fixture and with the BF16 source. */
static void check_against_references(int f) {
    const char *dir = converted(f);
    CHECK(dir != NULL);
    if (!dir) return;
    glm_st_set *conv = NULL, *ref = NULL, *src = NULL;
    CHECK_MSG(glm_st_open_dir(dir, &conv) == GLM_OK, "%s", glm_last_error());
    CHECK(glm_st_open_dir(fixture[f], &ref) == GLM_OK);
    CHECK(glm_st_open_dir("tests/data/tiny-bf16", &src) == GLM_OK);
    if (!conv || !ref || !src) goto done;
    const char *sfx = f == 0 ? "_scale" : "_scale_inv";
    int n_quant = 0, n_copied = 0, code_far = 0, code_next = 0, scale_far = 0, bound_bad = 0, copy_bad = 0;
    int64_t n_codes = 0, n_scales = 0, scale_diff = 0;
    double worst_rel_block = 0;  /* the largest |q*s - w| over 2^-4 * (row/block max |w|) */
    for (size_t i = 0; i < glm_st_count(src); i++) {
        const glm_st_tensor *w = glm_st_at(src, i), *c = glm_st_find(conv, w->name), *r = glm_st_find(ref, w->name);
        CHECK_MSG(c != NULL, "%s missing from the conversion", w->name);
        if (!c) continue;
        if (!r || r->dtype != GLM_DT_F8E4M3) {
            /* not quantised by the reference either: copied byte for byte */
            CHECK_MSG(c->dtype != GLM_DT_F8E4M3, "%s quantised, the reference left it", w->name);
            if (c->dtype != w->dtype || c->end - c->begin != w->end - w->begin || memcmp(c->data, w->data, w->end - w->begin)) copy_bad++;
            n_copied++;
            continue;
        }
        n_quant++;
        char sname[600];
        snprintf(sname, sizeof sname, "%s%s", w->name, sfx);
        const glm_st_tensor *cs = glm_st_find(conv, sname), *rs = glm_st_find(ref, sname);
        CHECK_MSG(c->dtype == GLM_DT_F8E4M3 && cs && rs, "%s: not quantised, or a scale is missing", w->name);
        if (c->dtype != GLM_DT_F8E4M3 || !cs || !rs) continue;
        CHECK_MSG(cs->dtype == rs->dtype && cs->n_dims == rs->n_dims && cs->shape[0] == rs->shape[0] && cs->shape[1] == rs->shape[1] &&
                  c->shape[0] == r->shape[0] && c->shape[1] == r->shape[1], "%s: shapes or scale dtype differ from the reference", w->name);
        int64_t rows = w->shape[0], cols = w->shape[1], bc = (cols + GLM_BLOCK - 1) / GLM_BLOCK;
        /* the scales: channel BF16 [rows, 1], block F32 [ceil(rows/128), ceil(cols/128)] */
        int64_t ns = f == 0 ? rows : ((rows + GLM_BLOCK - 1) / GLM_BLOCK) * bc;
        float *sc = malloc(sizeof(float) * (size_t)ns), *sr = malloc(sizeof(float) * (size_t)ns);
        for (int64_t k = 0; k < ns; k++) {
            sc[k] = f == 0 ? glm_bf16_to_f32(((const uint16_t *)cs->data)[k]) : ((const float *)cs->data)[k];
            sr[k] = f == 0 ? glm_bf16_to_f32(((const uint16_t *)rs->data)[k]) : ((const float *)rs->data)[k];
            /* The reference takes amax from the float32 masters, we from their BF16 rounding
             * (relative difference <= 2^-8, half a BF16 ulp), so a scale may differ by that
             * much: F32 block scales by 2^-8 relative, BF16 channel scales (amax/448 rounded
             * again) by one BF16 step. Measured: see the message below. */
            if (f == 0) {
                int d = abs((int)((const uint16_t *)cs->data)[k] - (int)((const uint16_t *)rs->data)[k]);
                scale_far += d > 1;  /* positive BF16 values: adjacent bit patterns are adjacent numbers */
            } else {
                scale_far += fabs((double)sc[k] - sr[k]) > 0x1p-8 * sr[k];
            }
            scale_diff += sc[k] != sr[k];
            n_scales++;
        }
        const uint8_t *qc = c->data, *qr = r->data;
        const uint16_t *wb = w->data;
        for (int64_t row = 0; row < rows; row++) {
            for (int64_t k = 0; k < cols; k++) {
                /* Against the reference's codes: w/s differs from the reference's by < 2^-7
                 * relative (BF16 rounding of w, the scale above), far below one E4M3 step
                 * (2^-3 relative), so round-to-nearest lands on the same code or the next
                 * one: the bound is one code, and the count of neighbours is printed. */
                int d = abs(fp8_ord(qc[row * cols + k]) - fp8_ord(qr[row * cols + k]));
                code_far += d > 1;
                code_next += d == 1;
                n_codes++;
                /* Against the BF16 source: E4M3 keeps 3 mantissa bits, so rounding w/s to
                 * nearest errs by at most 2^-4 of |w/s| (normal codes) or half the subnormal
                 * step 2^-9 (|w/s| < 2^-6); times s, plus float rounding of w/s and q*s. */
                float s = f == 0 ? sc[row] : sc[(row / GLM_BLOCK) * bc + k / GLM_BLOCK];
                float x = glm_bf16_to_f32(wb[row * cols + k]), deq = glm_fp8_lut[qc[row * cols + k]] * s;
                double err = fabs((double)deq - x), bound = 0x1p-4 * fabs(x) + 0x1p-10 * s + 0x1p-20 * fabs(x);
                if (err > bound && bound_bad++ < 5)
                    fprintf(stderr, "  %s [%lld, %lld]: %g dequantises to %g (scale %g)\n", w->name, (long long)row,
                            (long long)k, (double)x, (double)deq, (double)s);
                /* the row's (channel) or block's largest |w| is 448 s up to the scale's rounding */
                double rel = err / (0x1p-4 * 448.0 * s);
                if (rel > worst_rel_block) worst_rel_block = rel;
            }
        }
        free(sc);
        free(sr);
    }
    fprintf(stderr, "  %s: %d tensors quantised, %d copied; codes one step from the reference: %lld of %lld; "
            "scales not equal: %lld of %lld; worst |error| / (2^-4 row/block max) %.3f\n", fmt_flag[f], n_quant, n_copied,
            (long long)code_next, (long long)n_codes, (long long)scale_diff, (long long)n_scales, worst_rel_block);
    /* tiny-bf16: 3 layers + the MTP layer (q/k/v/o each), the dense MLP, 2 MoE layers of 8 experts
     * and a shared expert, the MTP layer's shared expert (its routed ones are not saved), eh_proj */
    CHECK_MSG(n_quant == 4 * 4 + 3 + 2 * (8 * 3 + 3) + 3 + 1, "%d quantised tensors", n_quant);
    CHECK(n_copied > 0 && copy_bad == 0);
    CHECK_MSG(code_far == 0, "%d codes more than one step from the reference", code_far);
    CHECK_MSG(scale_far == 0, "%d scales further than the rounding of the masters allows", scale_far);
    CHECK_MSG(bound_bad == 0, "%d elements beyond the E4M3 rounding bound", bound_bad);
    CHECK(worst_rel_block <= 1.0 + 1e-6);
    /* and the conversion holds nothing besides: same tensor count as source + one scale per quantised */
    CHECK_MSG(glm_st_count(conv) == glm_st_count(src) + (size_t)n_quant, "%zu tensors", glm_st_count(conv));
done:
    glm_st_close(conv);
    glm_st_close(ref);
    glm_st_close(src);
}

TEST(channel_every_tensor_against_references) { check_against_references(0); }
TEST(block_every_tensor_against_references) { check_against_references(1); }

/* Logits of every prompt position of the fixture's reference prompt; malloc'd [n_prompt * n_vocab]. */
static float *prompt_logits(const char *dir, const ref_data *rd) {
    glm_model *m = NULL;
    if (glm_model_load(dir, NULL, &m) != GLM_OK) { fprintf(stderr, "  %s: %s\n", dir, glm_last_error()); return NULL; }
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    glm_ctx *c = NULL;
    float *out = NULL;
    int8_t want[64];
    memset(want, 1, sizeof want);
    glm_batch b = { rd->n_prompt, rd->prompt, NULL, want };
    if (rd->n_prompt <= 64 && glm_ctx_new(m, &cp, &c) == GLM_OK && glm_ctx_decode(c, &b) == GLM_OK) {
        out = malloc(sizeof(float) * (size_t)rd->n_prompt * rd->n_vocab);
        for (int i = 0; i < rd->n_prompt; i++) memcpy(out + (size_t)i * rd->n_vocab, glm_ctx_logits(c, i), sizeof(float) * rd->n_vocab);
    }
    glm_ctx_free(c);
    glm_model_free(m);
    return out;
}

/* Largest |a - b| over the prompt's logits. */
static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* The converted model's logits against the fixture checkpoint's and the BF16 source's. */
static void check_logits(int f) {
    const char *dir = converted(f);
    ref_data rd;
    CHECK(dir != NULL);
    if (!dir || ref_load(fixture[f], &rd) != 0) return;
    float *a = prompt_logits(dir, &rd), *b = prompt_logits(fixture[f], &rd), *c = prompt_logits("tests/data/tiny-bf16", &rd);
    CHECK(a && b && c);
    if (a && b && c) {
        size_t n = (size_t)rd.n_prompt * rd.n_vocab;
        double conv_fix = max_diff(a, b, n), conv_src = max_diff(a, c, n), fix_src = max_diff(b, c, n);
        double rms_cf = rel_err(a, b, n), rms_cs = rel_err(a, c, n), rms_fs = rel_err(b, c, n);
        fprintf(stderr, "  %s logits, max |diff| (rms rel): converted-fixture %.4f (%.4f), converted-bf16 %.4f (%.4f), "
                "fixture-bf16 %.4f (%.4f)\n", fmt_flag[f], conv_fix, rms_cf, conv_src, rms_cs, fix_src, rms_fs);
        /* The fixture was quantised from the float32 masters and this conversion from their
         * BF16 rounding, so about 3% of the codes are one step apart (above) and the logits
         * cannot be equal: this tiny random model moves its logits by ~10% rms under FP8
         * rounding alone (fixture vs BF16: 0.095 channel, 0.109 block). What must hold is that
         * the conversion is as close to the fixture, and to the BF16 source, as the fixture's
         * own quantisation is to the source (measured ratios 0.75 / 1.07 channel, 0.97 / 1.19
         * block); a wrong scale or code layout gives several times more. */
        int finite = 1;
        for (size_t i = 0; i < n; i++) finite &= isfinite(a[i]);
        CHECK(finite);
        CHECK(rms_cf <= 1.25 * rms_fs);
        CHECK(rms_cs <= 1.35 * rms_fs);
    }
    free(a);
    free(b);
    free(c);
    ref_free(&rd);
}

TEST(channel_logits_against_fixture) { check_logits(0); }
TEST(block_logits_against_fixture) { check_logits(1); }

/* Output split in small shards: loads and gives the same tensors; threads do not change a byte. */
TEST(shards_and_threads_do_not_change_bytes) {
    char src[512], one[512], many[512];
    CHECK(fresh_source("src-shards", src, sizeof src) == 0);
    snprintf(one, sizeof one, "%s/one-thread", tmp);
    snprintf(many, sizeof many, "%s/small-shards", tmp);
    CHECK(sh("%s/glm-convert -m '%s' -t 1 --out '%s'", bin(), src, one) == 0);
    CHECK(sh("%s/glm-convert -m '%s' -t 5 --shard-mb 1 --out '%s'", bin(), src, many) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", many);
    CHECK(exists(path));
    glm_st_set *a = NULL, *b = NULL;
    CHECK(glm_st_open_dir(one, &a) == GLM_OK);
    CHECK_MSG(glm_st_open_dir(many, &b) == GLM_OK, "%s", glm_last_error());
    if (a && b) {
        CHECK(glm_st_count(a) == glm_st_count(b));
        int differ = 0;
        for (size_t i = 0; i < glm_st_count(a); i++) {
            const glm_st_tensor *t = glm_st_at(a, i), *u = glm_st_find(b, t->name);
            differ += !u || u->end - u->begin != t->end - t->begin || memcmp(t->data, u->data, t->end - t->begin);
        }
        CHECK(differ == 0);
    }
    glm_st_close(a);
    glm_st_close(b);
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(many, NULL, &m) == GLM_OK, "%s", glm_last_error());
    glm_model_free(m);
}

/* ---- the output folder ---- */

TEST(refuses_the_input_as_output) {
    char src[512], link[600], parent[600];
    CHECK(fresh_source("src-self", src, sizeof src) == 0);
    uint64_t before = dir_sum(src);
    CHECK(before != 0);
    snprintf(link, sizeof link, "%s/link-to-src", tmp);
    CHECK(symlink(src, link) == 0);
    snprintf(parent, sizeof parent, "%s/src-self/../src-self/", tmp);
    const char *outs[3] = { src, parent, link };
    for (int i = 0; i < 3; i++) {
        for (int force = 0; force < 2; force++) {
            int rc = sh("%s/glm-convert -m '%s' --out '%s'%s", bin(), src, outs[i], force ? " --force" : "");
            CHECK_MSG(rc == 2, "--out %s%s: exit %d", outs[i], force ? " --force" : "", rc);
            CHECK(stderr_has("is the input folder") || stderr_has("unknown argument '--force'"));
        }
    }
    /* a folder that holds the input, even with --force */
    CHECK(sh("%s/glm-convert -m '%s' --out '%s' --force", bin(), src, tmp) == 2);
    CHECK(stderr_has("contains the input"));
    CHECK_MSG(dir_sum(src) == before, "the input folder changed");
    CHECK(count_named(tmp, ".tmp-") == 0);
}

TEST(non_empty_output_needs_force_and_loses_stale_shards) {
    char src[512], out[512], path[700];
    CHECK(fresh_source("src-stale", src, sizeof src) == 0);
    /* another checkpoint in the output folder: two shards and an index */
    snprintf(out, sizeof out, "%s/stale", tmp);
    CHECK(sh("rm -rf '%s' && cp -r tests/data/tiny-fp8blk '%s'", out, out) == 0);
    uint64_t before = dir_sum(out);
    CHECK(sh("%s/glm-convert -m '%s' --out '%s'", bin(), src, out) == 2);
    CHECK(stderr_has("not empty"));
    CHECK(dir_sum(out) == before);
    CHECK(sh("%s/glm-convert -m '%s' --out '%s' --force", bin(), src, out) == 0);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", out);
    CHECK_MSG(!exists(path), "stale shard %s left", path);
    snprintf(path, sizeof path, "%s/ref.bin", out);
    CHECK(!exists(path));
    /* the folder holds the new checkpoint alone, and it loads as channel FP8 */
    struct dirent **list;
    int n = scandir(out, &list, NULL, alphasort);
    CHECK(n == 5); /* ., .., config.json, model-00001-of-00001.safetensors, model.safetensors.index.json */
    for (int i = 0; i < n; i++) free(list[i]);
    if (n >= 0) free(list);
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(out, NULL, &m) == GLM_OK, "%s", glm_last_error());
    if (m) CHECK(m->layers[0].wq.scale_kind == GLM_SCALE_CHANNEL);
    glm_model_free(m);
    CHECK(count_named(tmp, ".tmp-") == 0 && count_named(tmp, ".old-") == 0);
    /* an empty folder is fine without --force */
    snprintf(out, sizeof out, "%s/empty", tmp);
    CHECK(mkdir(out, 0755) == 0);
    CHECK(sh("%s/glm-convert -m '%s' --out '%s'", bin(), src, out) == 0);
    snprintf(path, sizeof path, "%s/config.json", out);
    CHECK(exists(path));
}

TEST(copies_tokenizer_files) {
    char src[512], out[512], a[700], b[700];
    static const char *names[] = { "tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja" };
    CHECK(fresh_source("src-tok", src, sizeof src) == 0);
    CHECK(sh("cp tests/data/tok/glm47.jinja '%s/chat_template.jinja' && printf '{\"eos_token_id\": [1, 2]}\\n' > '%s/generation_config.json'"
             " && printf '{\"model_max_length\": 512}\\n' > '%s/tokenizer_config.json' && printf '{\"model\": {\"type\": \"BPE\"}}\\n' > '%s/tokenizer.json'",
             src, src, src, src) == 0);
    snprintf(out, sizeof out, "%s/with-tok", tmp);
    CHECK(sh("%s/glm-convert -m '%s' --out '%s'", bin(), src, out) == 0);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(a, sizeof a, "%s/%s", src, names[i]);
        snprintf(b, sizeof b, "%s/%s", out, names[i]);
        CHECK_MSG(sh("cmp -s '%s' '%s'", a, b) == 0, "%s not copied", names[i]);
    }
}

/* A NaN in the last quantised tensor of the source: the run fails midway, naming it. */
TEST(failure_midway_leaves_nothing) {
    char src[512], out[512];
    CHECK(fresh_source("src-nan", src, sizeof src) == 0);
    glm_st_set *st = NULL;
    CHECK(glm_st_open_dir(src, &st) == GLM_OK);
    if (!st) return;
    const glm_st_tensor *t = glm_st_find(st, "model.layers.3.mlp.shared_experts.down_proj.weight");
    CHECK(t != NULL);
    uint64_t off = t ? t->begin + 2 * 1000 : 0;
    glm_st_close(st);
    if (!t) return;
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (!f) return;
    unsigned char nan_bf16[2] = { 0xc0, 0x7f };
    fseek(f, (long)off, SEEK_SET);
    fwrite(nan_bf16, 1, 2, f);
    fclose(f);
    snprintf(out, sizeof out, "%s/nan-out", tmp);
    for (int fmt = 0; fmt < 2; fmt++) {
        CHECK(sh("%s/glm-convert -m '%s' --format %s -t 2 --out '%s'", bin(), src, fmt_flag[fmt], out) == 1);
        CHECK(stderr_has("model.layers.3.mlp.shared_experts.down_proj.weight") && stderr_has("NaN"));
        CHECK(!exists(out));
        CHECK(count_named(tmp, ".tmp-") == 0);
    }
}

/* The disk fills up (a file size limit) halfway through the shard: nothing is left. */
TEST(write_failure_leaves_nothing) {
    char src[512], out[512];
    CHECK(fresh_source("src-full", src, sizeof src) == 0);
    snprintf(out, sizeof out, "%s/full-out", tmp);
    /* 1024 blocks of 512 bytes (dash) or 1 KB (bash): below the 1.3 MB shard */
    int rc = sh("ulimit -f 1024; trap '' XFSZ; exec %s/glm-convert -m '%s' --out '%s'", bin(), src, out);
    CHECK_MSG(rc == 1, "exit %d", rc);
    CHECK(stderr_has("write failed") || stderr_has("File too large"));
    CHECK(!exists(out));
    CHECK(count_named(tmp, ".tmp-") == 0);
    /* an existing output is kept as it was when the new one fails */
    CHECK(sh("cp -r tests/data/tiny-fp8ch '%s'", out) == 0);
    uint64_t before = dir_sum(out);
    rc = sh("ulimit -f 1024; trap '' XFSZ; exec %s/glm-convert -m '%s' --force --out '%s'", bin(), src, out);
    CHECK(rc == 1);
    CHECK(dir_sum(out) == before);
    CHECK(count_named(tmp, ".tmp-") == 0 && count_named(tmp, ".old-") == 0);
}

TEST(usage_errors_and_help) {
    char src[512];
    CHECK(fresh_source("src-usage", src, sizeof src) == 0);
    CHECK(sh("%s/glm-convert -m '%s'", bin(), src) == 2);                        /* no --out */
    CHECK(sh("%s/glm-convert -m '%s' --out %s/x -t 0", bin(), src, tmp) == 2);   /* bad -t */
    CHECK(sh("%s/glm-convert -m '%s' --out %s/x --format fp4", bin(), src, tmp) == 2);
    CHECK(sh("%s/glm-convert -m '%s' --out %s/x --format bf16", bin(), src, tmp) == 2);
    CHECK(sh("%s/glm-convert -m '%s' --out %s/x --bogus", bin(), src, tmp) == 2);
    CHECK(sh("%s/glm-convert -m %s/no-such-dir --out %s/x", bin(), tmp, tmp) == 1);
    CHECK(stderr_has("no-such-dir"));
    CHECK(sh("%s/glm-convert -m tests/data/tiny-fp8ch --out %s/x", bin(), tmp) == 1);
    CHECK(stderr_has("already quantised"));
    CHECK(sh("%s/glm-convert -m '%s' --out %s/no-such-parent/x", bin(), src, tmp) == 1);
    CHECK(stderr_has("no-such-parent"));
    /* --help names every flag the parser takes */
    char path[600], *text = NULL;
    snprintf(path, sizeof path, "%s/help.txt", tmp);
    CHECK(sh("%s/glm-convert --help > '%s'", bin(), path) == 0);
    CHECK(glm_read_file(path, &text, NULL) == GLM_OK);
    static const char *flags[] = { "-m,", "--model", "--synthetic", "--preset", "--layers", "--vocab", "--format", "--seed",
                                   "-t,", "--threads", "--shard-mb", "-o,", "--out", "--force", "-h,", "--help" };
    for (size_t i = 0; text && i < sizeof flags / sizeof flags[0]; i++) CHECK_MSG(strstr(text, flags[i]) != NULL, "--help lacks %s", flags[i]);
    free(text);
}

RUN_TESTS_IN_TMP("glm-convert-test")
