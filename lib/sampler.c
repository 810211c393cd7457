/* sampler.c - llama.cpp-style sampling: repetition/presence/frequency penalties over
 * recent history, then temperature, top-k, top-p and min-p, then a seeded draw.
 * temp <= 0 is greedy (argmax after penalties). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct glm_sampler {
    glm_sampler_params p;
    uint64_t state;
    float *work;       /* [n_vocab] penalised logits */
    int32_t *idx;      /* [n_vocab] candidate ids */
    int cap;
};

glm_sampler_params glm_sampler_default_params(void) {
    glm_sampler_params p = {0};
    p.temp = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 0x5eed;
    return p;
}

glm_sampler *glm_sampler_new(const glm_sampler_params *params) {
    glm_sampler *s = calloc(1, sizeof *s);
    if (!s) { glm_err(GLM_ERR_OOM, "out of memory"); return NULL; }
    s->p = params ? *params : glm_sampler_default_params();
    s->state = s->p.seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    if (!s->state) s->state = 1;
    return s;
}

void glm_sampler_free(glm_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->idx);
    free(s);
}

/* Returns a uniform double in [0, 1). */
static double uniform(glm_sampler *s) {
    s->state ^= s->state >> 12; s->state ^= s->state << 25; s->state ^= s->state >> 27;
    return (double)((s->state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* qsort_r order of token ids by logit (the array in arg), largest first, then by id. */
static int cmp_desc(const void *a, const void *b, void *arg) {
    const float *l = arg;
    float x = l[*(const int32_t *)a], y = l[*(const int32_t *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Restores the min-heap property of h[0..n) below position i (by logit, then id). */
static void sift_down(int32_t *h, int n, int i, const float *l) {
    for (;;) {
        int m = i, a = 2 * i + 1, b = a + 1;
        if (a < n && (l[h[a]] < l[h[m]] || (l[h[a]] == l[h[m]] && h[a] > h[m]))) m = a;
        if (b < n && (l[h[b]] < l[h[m]] || (l[h[b]] == l[h[m]] && h[b] > h[m]))) m = b;
        if (m == i) return;
        int32_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

/* Penalties over the last repeat_last_n tokens of history. */
void glm_apply_penalties(float *l, int n_vocab, const glm_sampler_params *p, const int32_t *history, int n_history) {
    int h0 = p->repeat_last_n < 0 || p->repeat_last_n > n_history ? 0 : n_history - p->repeat_last_n;
    if (history && n_history > h0 && (p->repeat_penalty != 1.0f || p->presence_penalty != 0 || p->frequency_penalty != 0)) {
        for (int i = h0; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || t >= n_vocab) continue;
            int first = 1, count = 0;
            for (int j = h0; j < i; j++) if (history[j] == t) { first = 0; break; }
            if (!first) continue;
            for (int j = h0; j < n_history; j++) count += history[j] == t;
            if (p->repeat_penalty != 1.0f) l[t] = l[t] > 0 ? l[t] / p->repeat_penalty : l[t] * p->repeat_penalty;
            l[t] -= (float)count * p->frequency_penalty + p->presence_penalty;
        }
    }
}

int32_t glm_sampler_sample(glm_sampler *s, const float *logits, int n_vocab, const int32_t *history, int n_history) {
    if (n_vocab > s->cap) {
        float *w = realloc(s->work, (size_t)n_vocab * sizeof *w);
        int32_t *ix = realloc(s->idx, (size_t)n_vocab * sizeof *ix);
        if (w) s->work = w;
        if (ix) s->idx = ix;
        if (!w || !ix) return glm_err(GLM_ERR_OOM, "out of memory");
        s->cap = n_vocab;
    }
    float *l = s->work;
    memcpy(l, logits, (size_t)n_vocab * sizeof *l);
    const glm_sampler_params *p = &s->p;
    glm_apply_penalties(l, n_vocab, p, history, n_history);
    if (p->temp <= 0) {
        int32_t best = 0;
        for (int i = 1; i < n_vocab; i++) if (l[i] > l[best]) best = i;
        return best;
    }
    /* candidates: the top-k (heap selection) or all, sorted by logit */
    int n = p->top_k > 0 && p->top_k < n_vocab ? p->top_k : n_vocab;
    if (n < n_vocab) {
        int32_t *h = s->idx; /* min-heap of the n largest seen so far */
        for (int i = 0; i < n; i++) h[i] = i;
        for (int i = n / 2 - 1; i >= 0; i--) sift_down(h, n, i, l);
        for (int i = n; i < n_vocab; i++) {
            if (l[i] <= l[h[0]]) continue;
            h[0] = i;
            sift_down(h, n, 0, l);
        }
    } else {
        for (int i = 0; i < n_vocab; i++) s->idx[i] = i;
    }
    qsort_r(s->idx, (size_t)n, sizeof(int32_t), cmp_desc, l);
    /* softmax with temperature over the candidates */
    double mx = l[s->idx[0]], sum = 0;
    double *pr = malloc((size_t)n * sizeof *pr);
    if (!pr) return glm_err(GLM_ERR_OOM, "out of memory");
    for (int i = 0; i < n; i++) { pr[i] = exp((l[s->idx[i]] - mx) / p->temp); sum += pr[i]; }
    for (int i = 0; i < n; i++) pr[i] /= sum;
    /* min-p: drop tokens below min_p * max probability */
    if (p->min_p > 0) {
        int m = 1;
        while (m < n && pr[m] >= p->min_p * pr[0]) m++;
        n = m;
    }
    /* top-p: the smallest prefix whose mass reaches top_p */
    if (p->top_p < 1.0f) {
        double c = 0;
        int m = 0;
        while (m < n) { c += pr[m++]; if (c >= p->top_p) break; }
        n = m;
    }
    double tot = 0;
    for (int i = 0; i < n; i++) tot += pr[i];
    double r = uniform(s) * tot, c = 0;
    int32_t pick = s->idx[n - 1];
    for (int i = 0; i < n; i++) { c += pr[i]; if (r < c) { pick = s->idx[i]; break; } }
    free(pr);
    return pick;
}
