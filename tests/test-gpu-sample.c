/* test-gpu-sample.c - sampling on the device (ggml-free-kernels/sample.cu, glm_ctx_sample,
 * the scheduler's sample_batch) against the host sampler's rules (lib/sampler.c).
 *   - greedy_rows: random rows (with many ties, before and after the penalties; V 1000 and
 *     151552) give exactly glm_sampler_sample's choice at temp 0 under the same
 *     penalties and window.
 *   - distributions: 32 tokens of known logits, 40000 draws a setting (a step each):
 *     the counts against the exact distribution the host rules imply (temperature,
 *     top-k, top-p, min-p, penalties, all together); no draw outside the kept tokens and
 *     a chi-square below its 1e-7 tail; the same counts against the distribution of a
 *     cut one token longer and one shorter must fail (the test can tell them apart).
 *   - big_vocab: 151552 logits, top-p alone (the whole vocabulary as candidates) and
 *     with top-k and min-p: every draw inside the kept set, several distinct tokens.
 *   - ctx_greedy: a CUDA context on tests/data/tiny-fp8ch, four sequences: glm_ctx_sample
 *     greedy (with and without penalties) equals glm_sampler_sample on glm_ctx_logits of
 *     the same decode; a decode's rows are sampled once; rows of an earlier pass of a
 *     split decode are refused (GLM_ERR_NOT_IMPLEMENTED); the CPU backend refuses.
 *   - sched: the scheduler on that context with device sampling and with host_sampling
 *     gives the same greedy tokens; seeded sampled requests repeat exactly. */
#include "glm.h"
#include "test.h"
#include "../ggml-free-kernels/kernels.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CU(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { fprintf(stderr, "  %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); test_failed_now_ = 1; } } while (0)

static uint64_t rs = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
static float frand(void) { return (float)((rnd() >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f; }

static int have_gpu(void) { return glm_cuda_device_count() > 0; }

/* The penalty window of a history (as lib/backend-cuda.c builds it for the kernel). */
static int window(const glm_sampler_params *p, int n, int *h0) {
    *h0 = 0;
    if (n <= 0 || (p->repeat_penalty == 1.0f && p->presence_penalty == 0 && p->frequency_penalty == 0)) return 0;
    *h0 = p->repeat_last_n < 0 || p->repeat_last_n > n ? 0 : n - p->repeat_last_n;
    return n - *h0;
}

/* Samples R rows of V logits (host, [R, V]) on the device with params[r], histories
 * hist[r][0..nh[r]) and steps; writes ids[R]. Returns the kernel's status. */
static int dev_sample(const float *logits, int R, int V, const glm_sampler_params *par, const int32_t *const *hist,
                      const int *nh, const uint64_t *steps, int32_t *ids) {
    glm_cu_sample_row *rows = calloc((size_t)R, sizeof *rows);
    size_t tot = 0;
    for (int r = 0; r < R; r++) { int h0; tot += (size_t)window(&par[r], nh ? nh[r] : 0, &h0); }
    int32_t *hh = malloc((tot ? tot : 1) * sizeof *hh);
    int off = 0;
    for (int r = 0; r < R; r++) {
        int h0;
        const int w = window(&par[r], nh ? nh[r] : 0, &h0);
        if (w) memcpy(hh + off, hist[r] + h0, (size_t)w * sizeof *hh);
        rows[r].logit_off = (long long)r * V;
        rows[r].temp = par[r].temp;
        rows[r].top_k = par[r].top_k;
        rows[r].top_p = par[r].top_p;
        rows[r].min_p = par[r].min_p;
        rows[r].repeat_penalty = par[r].repeat_penalty;
        rows[r].presence_penalty = par[r].presence_penalty;
        rows[r].frequency_penalty = par[r].frequency_penalty;
        rows[r].hist_off = off;
        rows[r].n_hist = w;
        rows[r].seed = par[r].seed;
        rows[r].step = steps ? steps[r] : 0;
        off += w;
    }
    float *l_d = NULL;
    glm_cu_sample_row *rows_d = NULL;
    int32_t *h_d = NULL, *ids_d = NULL;
    int rc = -1;
    CU(cudaMalloc((void **)&l_d, (size_t)R * V * sizeof(float)));
    CU(cudaMalloc((void **)&rows_d, (size_t)R * sizeof *rows));
    CU(cudaMalloc((void **)&h_d, (tot ? tot : 1) * sizeof(int32_t)));
    CU(cudaMalloc((void **)&ids_d, (size_t)R * sizeof(int32_t)));
    if (l_d && rows_d && h_d && ids_d) {
        CU(cudaMemcpy(l_d, logits, (size_t)R * V * sizeof(float), cudaMemcpyHostToDevice));
        CU(cudaMemcpy(rows_d, rows, (size_t)R * sizeof *rows, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(h_d, hh, (tot ? tot : 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
        CU(cudaMemset(ids_d, 0xff, (size_t)R * sizeof(int32_t)));
        rc = glm_cu_sample(l_d, rows_d, R, h_d, V, ids_d, NULL);
        CHECK_MSG(rc == 0, "glm_cu_sample: %s", glm_last_error());
        CU(cudaDeviceSynchronize());
        CU(cudaMemcpy(ids, ids_d, (size_t)R * sizeof(int32_t), cudaMemcpyDeviceToHost));
    }
    cudaFree(l_d); cudaFree(rows_d); cudaFree(h_d); cudaFree(ids_d);
    free(rows);
    free(hh);
    return test_failed_now_ ? -1 : rc;
}

static glm_sampler_params plain(float temp) {
    glm_sampler_params p = glm_sampler_default_params();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0;
    return p;
}

/* ---- greedy ---- */

static void greedy_case(int V, int R) {
    float *l = malloc((size_t)R * V * sizeof *l);
    glm_sampler_params *par = calloc((size_t)R, sizeof *par);
    int32_t **hist = calloc((size_t)R, sizeof *hist);
    int *nh = calloc((size_t)R, sizeof *nh);
    int32_t *ids = malloc((size_t)R * sizeof *ids);
    for (int r = 0; r < R; r++) {
        float *x = l + (size_t)r * V;
        const int kind = r % 4;
        for (int i = 0; i < V; i++)
            x[i] = kind == 0 ? frand() * 8.f : kind == 1 ? (float)(int)(frand() * 3.f) : kind == 2 ? -1.f : (float)(int)(frand() * 2.f) * 0.5f;
        if (kind == 2) x[(int)(rnd() % V)] = -0.5f;  /* one token above a flat row, then ties after penalties */
        par[r] = plain(0);
        nh[r] = 1 + (int)(rnd() % 48);
        hist[r] = malloc((size_t)nh[r] * sizeof **hist);
        for (int j = 0; j < nh[r]; j++) {
            const int u = (int)(rnd() % 16);
            /* mostly the row's largest tokens (to move the argmax), some repeats, a few out of range */
            int32_t t = u == 0 ? -1 : u == 1 ? V + 3 : u < 6 && j ? hist[r][rnd() % j] : (int32_t)(rnd() % V);
            if (u >= 6 && u < 10) { int b = 0; for (int i = 1; i < V; i++) if (x[i] > x[b]) b = i; t = b; }
            hist[r][j] = t;
        }
        switch (r % 5) {
        case 0: break;  /* no penalties */
        case 1: par[r].repeat_penalty = 2.0f; par[r].repeat_last_n = 16; break;
        case 2: par[r].presence_penalty = 0.5f; par[r].frequency_penalty = 0.25f; par[r].repeat_last_n = -1; break;
        case 3: par[r].repeat_penalty = 1.3f; par[r].presence_penalty = 0.2f; par[r].frequency_penalty = 0.1f; par[r].repeat_last_n = 64; break;
        default: par[r].repeat_penalty = 0.7f; par[r].repeat_last_n = 8; break;
        }
    }
    if (dev_sample(l, R, V, par, (const int32_t *const *)hist, nh, NULL, ids) == 0) {
        int same = 0, ties = 0;
        for (int r = 0; r < R; r++) {
            glm_sampler *s = glm_sampler_new(&par[r]);
            const int32_t want = glm_sampler_sample(s, l + (size_t)r * V, V, hist[r], nh[r]);
            glm_sampler_free(s);
            int n_max = 0;
            const float *x = l + (size_t)r * V;
            for (int i = 0; i < V; i++) n_max += x[i] == x[want];
            ties += n_max > 1;
            same += ids[r] == want;
            CHECK_MSG(ids[r] == want, "V %d row %d (penalties %d): device %d, host %d", V, r, r % 5, ids[r], want);
        }
        fprintf(stderr, "  greedy V %d: %d/%d rows equal the host sampler (%d with a tied raw maximum)\n", V, same, R, ties);
    }
    for (int r = 0; r < R; r++) free(hist[r]);
    free(hist); free(nh); free(par); free(l); free(ids);
}

TEST(greedy_rows) {
    if (!have_gpu()) SKIP("no CUDA device");
    greedy_case(1000, 200);
    greedy_case(151552, 20);
}

/* ---- distributions ---- */

/* Sorts ids by (logit descending, id ascending). */
static const float *sort_l;
static int cmp_ids(const void *a, const void *b) {
    const int x = *(const int *)a, y = *(const int *)b;
    if (sort_l[x] != sort_l[y]) return sort_l[x] > sort_l[y] ? -1 : 1;
    return x - y;
}

/* The exact distribution lib/sampler.c draws from: prob[V]; the kept prefix changed by
 * shift tokens (0: the rules; +-1: a deliberately wrong cut). Returns the kept count
 * and the smallest relative distance of top-p's and min-p's tests to their bounds. */
static int expected(const float *logits, int V, const glm_sampler_params *p, const int32_t *h, int nh, int shift,
                    double *prob, double *margin) {
    float *l = malloc((size_t)V * sizeof *l);
    int *idx = malloc((size_t)V * sizeof *idx);
    double *pr = malloc((size_t)V * sizeof *pr);
    memcpy(l, logits, (size_t)V * sizeof *l);
    int h0;
    const int w = window(p, nh, &h0);
    for (int i = h0; i < h0 + w; i++) {
        const int32_t t = h[i];
        if (t < 0 || t >= V) continue;
        int first = 1, count = 0;
        for (int j = h0; j < i; j++) if (h[j] == t) { first = 0; break; }
        if (!first) continue;
        for (int j = h0; j < nh; j++) count += h[j] == t;
        if (p->repeat_penalty != 1.0f) l[t] = l[t] > 0 ? l[t] / p->repeat_penalty : l[t] * p->repeat_penalty;
        l[t] -= (float)count * p->frequency_penalty + p->presence_penalty;
    }
    for (int i = 0; i < V; i++) idx[i] = i;
    sort_l = l;
    qsort(idx, (size_t)V, sizeof *idx, cmp_ids);
    int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double sum = 0, mx = l[idx[0]];
    for (int i = 0; i < n; i++) { pr[i] = exp((l[idx[i]] - mx) / p->temp); sum += pr[i]; }
    for (int i = 0; i < n; i++) pr[i] /= sum;
    *margin = 1;
    if (p->min_p > 0) {
        int m = 1;
        while (m < n && pr[m] >= p->min_p * pr[0]) m++;
        for (int i = 1; i < n; i++) {
            const double d = fabs(pr[i] / pr[0] - p->min_p) / p->min_p;
            if (d < *margin) *margin = d;
        }
        n = m;
    }
    if (p->top_p < 1.0f) {
        double c = 0;
        int m = 0;
        while (m < n) { c += pr[m++]; if (c >= p->top_p) break; }
        c = 0;
        for (int i = 0; i < n; i++) {
            c += pr[i];
            const double d = fabs(c - p->top_p) / p->top_p;
            if (d < *margin) *margin = d;
        }
        n = m;
    }
    n += shift;
    if (n < 1) n = 1;
    if (n > V) n = V;
    /* a cut past top-k reaches tokens whose pr was not computed */
    for (int i = p->top_k > 0 && p->top_k < V ? p->top_k : V; i < n; i++) pr[i] = exp((l[idx[i]] - mx) / p->temp) / sum;
    double tot = 0;
    for (int i = 0; i < n; i++) tot += pr[i];
    for (int i = 0; i < V; i++) prob[i] = 0;
    for (int i = 0; i < n; i++) prob[idx[i]] = pr[i] / tot;
    free(l); free(idx); free(pr);
    return n;
}

/* Chi-square of counts against prob (N draws) over the tokens prob keeps; *outside =
 * draws of tokens it does not keep; *df = kept tokens - 1. */
static double chi2(const int *cnt, const double *prob, int V, int N, int *outside, int *df) {
    double x = 0;
    *outside = 0;
    *df = -1;
    for (int i = 0; i < V; i++) {
        if (prob[i] <= 0) { *outside += cnt[i]; continue; }
        const double e = prob[i] * N;
        x += (cnt[i] - e) * (cnt[i] - e) / e;
        (*df)++;
    }
    return x;
}

/* The chi-square value a df-degree variable passes with probability about 1e-7
 * (Wilson-Hilferty, z = 5.2). */
static double chi2_crit(int df) {
    if (df < 1) return 0;
    const double a = 2.0 / (9.0 * df), c = 1 - a + 5.2 * sqrt(a);
    return df * c * c * c;
}

static void dist_case(const char *name, const float *base, int V, glm_sampler_params p, const int32_t *h, int nh) {
    const int N = 40000;
    float *l = malloc((size_t)N * V * sizeof *l);
    glm_sampler_params *par = malloc((size_t)N * sizeof *par);
    const int32_t **hist = malloc((size_t)N * sizeof *hist);
    int *nhv = malloc((size_t)N * sizeof *nhv);
    uint64_t *steps = malloc((size_t)N * sizeof *steps);
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    for (int r = 0; r < N; r++) {
        memcpy(l + (size_t)r * V, base, (size_t)V * sizeof *l);
        par[r] = p;
        hist[r] = h;
        nhv[r] = nh;
        steps[r] = (uint64_t)r;
    }
    double prob[64], wrong[64], margin, m2;
    const int kept = expected(base, V, &p, h, nh, 0, prob, &margin);
    CHECK_MSG(margin > 1e-3, "%s: the test's logits put a cut within %.2g of its bound", name, margin);
    if (dev_sample(l, N, V, par, hist, nhv, steps, ids) == 0) {
        int cnt[64] = {0}, bad = 0;
        for (int r = 0; r < N; r++) {
            if (ids[r] < 0 || ids[r] >= V) bad++;
            else cnt[ids[r]]++;
        }
        CHECK_MSG(!bad, "%s: %d ids out of range", name, bad);
        int outside, df;
        const double x = chi2(cnt, prob, V, N, &outside, &df), crit = chi2_crit(df);
        fprintf(stderr, "  %s: %d tokens kept, chi2 %.1f (df %d, bound %.1f), %d draws outside", name, kept, x, df, crit, outside);
        CHECK_MSG(!outside, "%s: %d draws of tokens the rules drop", name, outside);
        CHECK_MSG(x < crit, "%s: chi2 %.1f above %.1f", name, x, crit);
        /* the cut one token longer or shorter must be told apart */
        for (int s = -1; s <= 1; s += 2) {
            const int k2 = expected(base, V, &p, h, nh, s, wrong, &m2);
            if (k2 == kept) continue;
            int o2, d2;
            const double x2 = chi2(cnt, wrong, V, N, &o2, &d2);
            fprintf(stderr, "; cut %+d: chi2 %.0f, %d outside", s, x2, o2);
            CHECK_MSG(o2 > 0 || x2 >= chi2_crit(d2), "%s: the counts fit a cut %+d tokens off (chi2 %.1f)", name, s, x2);
        }
        fputc('\n', stderr);
    }
    free(l); free(par); free(hist); free(nhv); free(steps); free(ids);
}

TEST(distributions) {
    if (!have_gpu()) SKIP("no CUDA device");
    enum { V = 32 };
    float base[V];
    /* distinct values spread over about 4 nats, two ties, in a shuffled order */
    for (int i = 0; i < V; i++) base[i] = 2.0f - 0.137f * (float)((i * 13) % V);
    base[7] = base[20];
    base[30] = base[3];
    const int32_t h[] = {5, 9, 5, 12, 31, 5, 9, 0, 40, -1};
    glm_sampler_params p;
    p = plain(0.7f);                    dist_case("temp 0.7", base, V, p, NULL, 0);
    p = plain(1.0f); p.top_k = 5;       dist_case("top_k 5", base, V, p, NULL, 0);
    p = plain(1.0f); p.top_p = 0.8f;    dist_case("top_p 0.8", base, V, p, NULL, 0);
    p = plain(1.0f); p.min_p = 0.1f;    dist_case("min_p 0.1", base, V, p, NULL, 0);
    p = plain(1.0f); p.repeat_penalty = 1.5f; p.presence_penalty = 0.3f; p.frequency_penalty = 0.2f; p.repeat_last_n = 8;
    dist_case("penalties", base, V, p, h, (int)(sizeof h / sizeof h[0]));
    p = plain(0.8f); p.top_k = 12; p.top_p = 0.9f; p.min_p = 0.05f; p.repeat_penalty = 1.2f; p.repeat_last_n = -1;
    dist_case("all together", base, V, p, h, (int)(sizeof h / sizeof h[0]));
    p = plain(1.3f); p.top_k = 20; p.top_p = 0.6f;
    dist_case("top_k 20 top_p 0.6", base, V, p, NULL, 0);
    /* top-p measures mass over the top-k candidates, before min-p's cut */
    p = plain(1.0f); p.min_p = 0.3f; p.top_p = 0.7f;
    dist_case("min_p 0.3 top_p 0.7", base, V, p, NULL, 0);
}

/* ---- a full vocabulary ---- */

static void big_case(const char *name, const float *base, int V, glm_sampler_params p) {
    const int R = 48;
    float *l = malloc((size_t)R * V * sizeof *l);
    glm_sampler_params par[48];
    uint64_t steps[48];
    int32_t ids[48];
    for (int r = 0; r < R; r++) {
        memcpy(l + (size_t)r * V, base, (size_t)V * sizeof *l);
        par[r] = p;
        steps[r] = 1000 + (uint64_t)r;
    }
    double *prob = malloc((size_t)V * sizeof *prob), *wide = malloc((size_t)V * sizeof *wide), margin;
    const int kept = expected(base, V, &p, NULL, 0, 0, prob, &margin);
    expected(base, V, &p, NULL, 0, 2, wide, &margin);  /* a token's rounding at the cut: accepted */
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaEventRecord(e0, NULL));
    const int rc = dev_sample(l, R, V, par, NULL, NULL, steps, ids);
    CU(cudaEventRecord(e1, NULL));
    CU(cudaEventSynchronize(e1));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    if (rc == 0) {
        int inside = 0, distinct = 0;
        for (int r = 0; r < R; r++) {
            const int ok = ids[r] >= 0 && ids[r] < V && (prob[ids[r]] > 0 || wide[ids[r]] > 0);
            inside += ok;
            CHECK_MSG(ok, "%s: draw %d is token %d, outside the %d kept", name, r, ids[r], kept);
            int seen = 0;
            for (int j = 0; j < r; j++) seen |= ids[j] == ids[r];
            distinct += !seen;
        }
        fprintf(stderr, "  %s: V %d, %d tokens kept, %d/%d draws inside, %d distinct (%.1f ms for %d rows with the copies)\n",
                name, V, kept, inside, R, distinct, ms, R);
        if (kept >= 100) CHECK_MSG(distinct >= 8, "%s: only %d distinct tokens in %d draws from %d", name, distinct, R, kept);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    free(l); free(prob); free(wide);
}

TEST(big_vocab) {
    if (!have_gpu()) SKIP("no CUDA device");
    const int V = 151552;
    float *base = malloc((size_t)V * sizeof *base);
    for (int i = 0; i < V; i++) base[i] = frand() * 3.f;
    glm_sampler_params p;
    p = plain(1.0f); p.top_p = 0.5f;                             big_case("top_p 0.5 over the vocabulary", base, V, p);
    p = plain(0.8f); p.top_k = 40; p.top_p = 0.95f; p.min_p = 0.05f; big_case("the defaults", base, V, p);
    p = plain(1.0f); p.top_k = 2000; p.min_p = 0.5f;             big_case("top_k 2000 min_p 0.5", base, V, p);
    free(base);
}

/* ---- through the library ---- */

static glm_ctx *cuda_ctx(glm_model *m, int n_seq, int n_batch) {
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = GLM_DEVICE_CUDA;
    cp.n_ctx = 256;
    cp.n_batch = n_batch;
    cp.n_seq_max = n_seq;
    cp.n_kv_pages = 128;
    glm_ctx *c = NULL;
    const int rc = glm_ctx_new(m, &cp, &c);
    CHECK_MSG(rc == GLM_OK, "glm_ctx_new(cuda): %s", glm_last_error());
    return c;
}

TEST(ctx_greedy) {
    if (!have_gpu()) SKIP("no CUDA device");
    glm_model *m = NULL;
    int rc = glm_model_load("tests/data/tiny-fp8ch", NULL, &m);
    CHECK_MSG(rc == GLM_OK, "%s", glm_last_error());
    if (rc) return;
    const int V = glm_model_hparams(m)->n_vocab;
    glm_ctx *c = cuda_ctx(m, 4, 64);
    if (!c) { glm_model_free(m); return; }
    CHECK(glm_ctx_samples_on_device(c) == 1);
    /* four sequences of different lengths, the last row of each wanted */
    int32_t tok[64], seq[64], hist[4][24];
    int8_t want[64];
    int T = 0, rows[4];
    for (int s = 0; s < 4; s++) {
        for (int i = 0; i < 5 + 3 * s; i++) { tok[T] = (int32_t)(rnd() % V); seq[T] = s; want[T] = 0; T++; }
        want[T - 1] = 1;
        rows[s] = T - 1;
    }
    glm_sampler_params par[4];
    int nh[4];
    int same = 0, steps_run = 0;
    for (int step = 0; step < 12; step++) {
        glm_batch b = {T, tok, seq, want};
        rc = glm_ctx_decode(c, &b);
        CHECK_MSG(rc == GLM_OK, "decode: %s", glm_last_error());
        if (rc) break;
        int32_t host[4], dev[4];
        const int32_t *hp[4];
        for (int s = 0; s < 4; s++) {
            par[s] = plain(0);
            if (step % 2 == 1 && s >= 2) { par[s].repeat_penalty = 1.5f; par[s].presence_penalty = 0.4f; par[s].repeat_last_n = 6; }
            nh[s] = step < 24 ? step : 24;
            hp[s] = hist[s];
            glm_sampler *sm = glm_sampler_new(&par[s]);
            host[s] = glm_sampler_sample(sm, glm_ctx_logits(c, rows[s]), V, hist[s], nh[s]);
            glm_sampler_free(sm);
        }
        rc = glm_ctx_sample(c, 4, rows, par, NULL, hp, nh, dev);
        CHECK_MSG(rc == GLM_OK, "glm_ctx_sample: %s", glm_last_error());
        if (rc) break;
        for (int s = 0; s < 4; s++) {
            CHECK_MSG(dev[s] == host[s], "step %d sequence %d: device %d, host %d", step, s, dev[s], host[s]);
            same += dev[s] == host[s];
        }
        steps_run++;
        /* sampled once */
        CHECK(glm_ctx_sample(c, 1, rows, par, NULL, NULL, NULL, dev) == GLM_ERR_NOT_IMPLEMENTED);
        /* next step: one token a sequence, the host's choice */
        for (int s = 0; s < 4; s++) {
            tok[s] = host[s];
            seq[s] = s;
            want[s] = 1;
            rows[s] = s;
            if (step < 24) hist[s][step] = host[s];
        }
        T = 4;
    }
    fprintf(stderr, "  ctx: %d/%d greedy tokens equal the host sampler's over %d steps of 4 sequences\n", same, 4 * steps_run, steps_run);
    glm_ctx_free(c);

    /* a decode split in passes: only the last pass's rows are on the device */
    c = cuda_ctx(m, 1, 8);
    if (c) {
        int32_t t20[20];
        int8_t w20[20] = {0};
        for (int i = 0; i < 20; i++) t20[i] = (int32_t)(rnd() % V);
        w20[3] = w20[19] = 1;
        glm_batch b = {20, t20, NULL, w20};
        CHECK(glm_ctx_decode(c, &b) == GLM_OK);
        glm_sampler_params g = plain(0);
        int32_t id = -1;
        const int32_t r3 = 3, r19 = 19;
        CHECK(glm_ctx_sample(c, 1, &r3, &g, NULL, NULL, NULL, &id) == GLM_ERR_NOT_IMPLEMENTED);
        CHECK(glm_ctx_sample(c, 1, &r19, &g, NULL, NULL, NULL, &id) == GLM_OK);
        glm_sampler *sm = glm_sampler_new(&g);
        CHECK(id == glm_sampler_sample(sm, glm_ctx_logits(c, 19), V, NULL, 0));
        glm_sampler_free(sm);
        /* a row without logits */
        const int32_t r5 = 5;
        CHECK(glm_ctx_sample(c, 1, &r5, &g, NULL, NULL, NULL, &id) == GLM_ERR_ARG);
        glm_ctx_free(c);
    }

    /* the CPU backend samples on the host */
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_kv_pages = 8;
    glm_ctx *cc = NULL;
    CHECK(glm_ctx_new(m, &cp, &cc) == GLM_OK);
    if (cc) {
        int32_t one = 1, id;
        glm_batch b = {1, &one, NULL, NULL};
        CHECK(glm_ctx_decode(cc, &b) == GLM_OK);
        CHECK(glm_ctx_samples_on_device(cc) == 0);
        glm_sampler_params g = plain(0);
        const int32_t r0 = 0;
        CHECK(glm_ctx_sample(cc, 1, &r0, &g, NULL, NULL, NULL, &id) == GLM_ERR_NOT_IMPLEMENTED);
        glm_ctx_free(cc);
    }
    glm_model_free(m);
}

typedef struct {
    int32_t toks[64];
    int n;
} gen_t;

static void on_event(void *user, const glm_sched_event *ev) {
    gen_t *g = user;
    if (ev->token >= 0 && g->n < 64) g->toks[g->n++] = ev->token;
}

/* Runs n of 6 requests (0-2 greedy, 3 greedy with penalties, 4-5 seeded draws) on c. */
static uint64_t sched_run(glm_ctx *c, int host_sampling, int n_req, gen_t *out) {
    glm_sched_params sp = glm_sched_default_params();
    sp.host_sampling = host_sampling;
    glm_sched *s = NULL;
    CHECK_MSG(glm_sched_new(c, &sp, &s) == GLM_OK, "%s", glm_last_error());
    if (!s) return 0;
    for (int i = 0; i < n_req; i++) {
        int32_t prompt[40];
        uint64_t x = 77 + (uint64_t)i * 1000003;
        const int n = 6 + 5 * i;
        for (int j = 0; j < n; j++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; prompt[j] = (int32_t)(x % 500); }
        glm_sampler_params p = plain(i < 4 ? 0.f : 0.9f);
        if (i == 3) { p.repeat_penalty = 1.3f; p.frequency_penalty = 0.2f; p.repeat_last_n = 16; }
        if (i >= 4) { p.top_k = 40; p.top_p = 0.95f; p.min_p = 0.02f; p.seed = 1234 + (uint64_t)i; }
        memset(&out[i], 0, sizeof out[i]);
        glm_request r = {prompt, n, 16, p, NULL, 0, 1, on_event, &out[i]};
        CHECK_MSG(glm_sched_submit(s, &r, NULL) == GLM_OK, "%s", glm_last_error());
    }
    int rc;
    while ((rc = glm_sched_step(s)) > 0) {}
    CHECK_MSG(rc == 0, "step: %s", glm_last_error());
    glm_sched_stats st;
    glm_sched_get_stats(s, &st);
    glm_sched_free(s);
    return st.device_sampled;
}

TEST(sched) {
    if (!have_gpu()) SKIP("no CUDA device");
    glm_model *m = NULL;
    int rc = glm_model_load("tests/data/tiny-fp8ch", NULL, &m);
    CHECK_MSG(rc == GLM_OK, "%s", glm_last_error());
    if (rc) return;
    glm_ctx *c = cuda_ctx(m, 6, 64);
    if (c) {
        /* the same batches (greedy requests alone), sampled on the device or the host */
        gen_t dev[6], host[6], all[6], again[6];
        const uint64_t n_dev = sched_run(c, 0, 4, dev), n_host = sched_run(c, 1, 4, host);
        CHECK_MSG(n_dev == 64 && n_host == 0, "tokens sampled on the device: %llu of 64, with host_sampling %llu",
                  (unsigned long long)n_dev, (unsigned long long)n_host);
        /* with the seeded draws, twice */
        sched_run(c, 0, 6, all);
        sched_run(c, 0, 6, again);
        int eq = 0, n = 0;
        for (int i = 0; i < 4; i++) {
            CHECK_MSG(dev[i].n == 16 && host[i].n == 16, "request %d: %d and %d tokens", i, dev[i].n, host[i].n);
            for (int j = 0; j < dev[i].n && j < host[i].n; j++) { eq += dev[i].toks[j] == host[i].toks[j]; n++; }
            CHECK_MSG(!memcmp(dev[i].toks, host[i].toks, sizeof dev[i].toks), "greedy request %d: device and host sampling differ", i);
        }
        int rep = 1;
        for (int i = 0; i < 6; i++) rep &= all[i].n == 16 && all[i].n == again[i].n && !memcmp(all[i].toks, again[i].toks, sizeof all[i].toks);
        fprintf(stderr, "  sched: %llu tokens sampled on the device; greedy tokens equal with device and host sampling %d/%d; "
                "seeded draws repeat: %s\n", (unsigned long long)n_dev, eq, n, rep ? "yes" : "no");
        CHECK_MSG(rep, "seeded requests gave other tokens on a second run");
        glm_ctx_free(c);
    }
    glm_model_free(m);
}

RUN_TESTS()
