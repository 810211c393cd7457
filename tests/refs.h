/* refs.h - the transformers reference that scripts/make-tiny-refs.py writes next to each
 * tiny checkpoint (dir/ref.bin), for the parity tests of the CPU and CUDA backends:
 *   char magic[8] = "GLMREF1\0"; int32 version = 1, n_prompt, n_vocab, n_gen;
 *   int32 prompt[n_prompt]; float32 logits[n_prompt][n_vocab]; int32 gen[n_gen]. */
#ifndef GLM_TEST_REFS_H
#define GLM_TEST_REFS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n_prompt, n_vocab, n_gen;
    int32_t *prompt, *gen;
    float *logits;
} ref_data;

/* Reads dir/ref.bin; returns 0 on success. */
static inline int ref_load(const char *dir, ref_data *r) {
    char path[512];
    snprintf(path, sizeof path, "%s/ref.bin", dir);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "  cannot open %s\n", path); return -1; }
    char magic[8];
    int32_t hdr[4];
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "GLMREF1", 8) == 0 && fread(hdr, 4, 4, f) == 4 && hdr[0] == 1;
    if (ok) {
        r->n_prompt = hdr[1]; r->n_vocab = hdr[2]; r->n_gen = hdr[3];
        r->prompt = malloc(sizeof(int32_t) * r->n_prompt);
        r->logits = malloc(sizeof(float) * r->n_prompt * r->n_vocab);
        r->gen = malloc(sizeof(int32_t) * r->n_gen);
        ok = fread(r->prompt, 4, r->n_prompt, f) == (size_t)r->n_prompt &&
             fread(r->logits, 4, (size_t)r->n_prompt * r->n_vocab, f) == (size_t)r->n_prompt * r->n_vocab &&
             fread(r->gen, 4, r->n_gen, f) == (size_t)r->n_gen;
    }
    fclose(f);
    if (!ok) fprintf(stderr, "  %s: bad reference file\n", path);
    return ok ? 0 : -1;
}

static inline void ref_free(ref_data *r) { free(r->prompt); free(r->gen); free(r->logits); }

/* Index of the largest of x[0..n) (the first on ties). */
static inline int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Per-row errors of a[rows, n] against b[rows, n]: *max_rel = the largest over rows of
 * max|a - b| / max|b| in the row, *rms_rel = the largest of ||a - b|| / ||b|| in the
 * row, *row = the row of the former; both infinite when a holds a NaN. An RMS or a
 * maximum over a whole array can hide one wrong row; these cannot. */
static inline void row_errors(const float *a, const float *b, int rows, int n, double *max_rel, double *rms_rel, int *row) {
    *max_rel = 0; *rms_rel = 0; *row = 0;
    for (int r = 0; r < rows; r++) {
        const float *x = a + (size_t)r * n, *y = b + (size_t)r * n;
        double md = 0, mb = 0, num = 0, den = 0;
        for (int i = 0; i < n; i++) {
            const double d = fabs((double)x[i] - y[i]);
            if (x[i] != x[i]) { *max_rel = *rms_rel = INFINITY; *row = r; return; }
            if (d > md) md = d;
            if (fabs(y[i]) > mb) mb = fabs(y[i]);
            num += d * d;
            den += (double)y[i] * y[i];
        }
        const double mr = mb > 0 ? md / mb : md, rr = den > 0 ? sqrt(num / den) : sqrt(num);
        if (mr > *max_rel) { *max_rel = mr; *row = r; }
        if (rr > *rms_rel) *rms_rel = rr;
    }
}

#endif
