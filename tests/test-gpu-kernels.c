/* test-gpu-kernels.c - every CUDA kernel against a float64/float32 CPU reference on
 * fresh random inputs, with outputs poisoned (NaN bytes) before each launch so an
 * unwritten element fails. Error measure: ||out - ref|| / ||ref|| (NaN never passes).
 * Tolerances: float32 accumulation 1e-5; activations quantised to FP8 are compared
 * against a reference on the same dequantised values, so the same 1e-5 holds; the
 * FP8 GEMV from two tokens up rounds activations to f16 (1e-3, gemv_tol);
 * BF16/FP8 KV stored values are emulated exactly on the CPU (1e-4). */
#include "glm.h"
#include "backend.h"
#include "test.h"
#include "refs.h"
#include "../ggml-free-kernels/kernels.h"

#include <cuda_runtime_api.h>
#include <stdint.h>

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
static float frand(void) { return (float)((rnd() >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f; }

#define CU(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { fprintf(stderr, "  %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); test_failed_now_ = 1; } } while (0)
#define OK(call) do { int rc_ = (call); if (rc_) { fprintf(stderr, "  %s:%d: %s: %s\n", __FILE__, __LINE__, #call, glm_last_error()); test_failed_now_ = 1; } } while (0)

static void *dnew(size_t n) { void *p = NULL; CU(cudaMalloc(&p, n ? n : 16)); CU(cudaMemset(p, 0xff, n ? n : 16)); return p; }
static void *dup_h(const void *h, size_t n) { void *p = dnew(n); CU(cudaMemcpy(p, h, n, cudaMemcpyHostToDevice)); return p; }
static void poison(void *p, size_t n) { CU(cudaMemset(p, 0xff, n)); }
static void down(void *h, const void *d, size_t n) { CU(cudaDeviceSynchronize()); CU(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost)); }
static float *frandv(size_t n, float amp) { float *v = malloc(n * 4); for (size_t i = 0; i < n; i++) v[i] = frand() * amp; return v; }

/* rel_err (test.h): ||a - b|| / ||b||, infinite when a holds a NaN. */
#define CHECK_REL(out, ref, n, tol, what)                                                   \
    do {                                                                                    \
        double e__ = rel_err(out, ref, n);                                                  \
        CHECK_MSG(e__ <= (tol), "%s: rel err %.3g > %.3g", what, e__, (double)(tol));       \
    } while (0)

/* GEMV tolerance: FP8 weights from two tokens up run on the tensor cores with the
 * activations rounded to f16 (relative rounding up to 2^-11; about 3e-4 in the L2 norm of
 * a product), elsewhere everything is float32 but the summation order. */
static double gemv_tol(int fmt, int T) { return fmt < 2 && T >= 2 ? 1e-3 : 1e-5; }

/* ---- host weights ---- */
typedef struct {
    int dtype, sk, N, K, ld;
    void *data; float *scale; float *wf;   /* host: stored, scales, dequantised [N, K] */
    size_t data_bytes, scale_floats;
} hweight;

static size_t esz(int dt) { return dt == GLM_CU_FP8 ? 1 : dt == GLM_CU_BF16 ? 2 : 4; }

static hweight hw_make(int dtype, int sk, int N, int K) {
    hweight w = {dtype, sk, N, K, glm_cu_block_ld(K), NULL, NULL, NULL, 0, 0};
    w.data_bytes = (size_t)N * K * esz(dtype);
    w.data = malloc(w.data_bytes);
    w.wf = malloc(sizeof(float) * N * K);
    if (sk == GLM_CU_SCALE_CHANNEL) w.scale_floats = N;
    if (sk == GLM_CU_SCALE_BLOCK) w.scale_floats = (size_t)((N + 127) / 128) * w.ld;
    w.scale = calloc(w.scale_floats + 1, sizeof(float));
    for (size_t i = 0; i < w.scale_floats; i++) w.scale[i] = (0.5f + 0.5f * fabsf(frand())) / 448.f / sqrtf((float)K);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)n * K + k;
            if (dtype == GLM_CU_FP8) {
                uint8_t q = glm_f32_to_fp8e4m3(frand() * 448.f);
                ((uint8_t *)w.data)[i] = q;
                float s = sk == GLM_CU_SCALE_CHANNEL ? w.scale[n] : w.scale[(n / 128) * w.ld + k / 128];
                w.wf[i] = glm_fp8e4m3_to_f32(q) * s;
            } else if (dtype == GLM_CU_BF16) {
                uint16_t b = glm_f32_to_bf16(frand() / sqrtf((float)K));
                ((uint16_t *)w.data)[i] = b;
                w.wf[i] = glm_bf16_to_f32(b);
            } else {
                float f = frand() / sqrtf((float)K);
                ((float *)w.data)[i] = f;
                w.wf[i] = f;
            }
        }
    return w;
}

static glm_cu_mat hw_upload(const hweight *w) {
    glm_cu_mat m = {0};
    m.data = dup_h(w->data, w->data_bytes);
    m.scale = w->scale_floats ? dup_h(w->scale, w->scale_floats * 4) : NULL;
    m.dtype = w->dtype; m.scale_kind = w->sk; m.N = w->N; m.K = w->K; m.s_ld = w->ld;
    return m;
}

static void hw_free(hweight *w, glm_cu_mat *m) {
    free(w->data); free(w->scale); free(w->wf);
    if (m) { cudaFree((void *)m->data); cudaFree((void *)m->scale); }
}

static float silu(float g) { return g / (1.f + expf(-g)); }

/* y[t, n] = sum_k wf[n, k] x[t, k] */
static void ref_mm(const float *wf, int N, int K, const float *x, int T, float *y, int ldy) {
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double a = 0;
            for (int k = 0; k < K; k++) a += (double)wf[(size_t)n * K + k] * x[(size_t)t * K + k];
            y[(size_t)t * ldy + n] = (float)a;
        }
}

static const int FMTS[4][2] = {{GLM_CU_FP8, GLM_CU_SCALE_CHANNEL}, {GLM_CU_FP8, GLM_CU_SCALE_BLOCK},
                               {GLM_CU_BF16, GLM_CU_SCALE_NONE}, {GLM_CU_F32, GLM_CU_SCALE_NONE}};
static const char *FMT_NAMES[4] = {"fp8-channel", "fp8-block", "bf16", "f32"};

TEST(elementwise) {
    const int T = 7, D = 300, V = 50;
    float *emb = frandv((size_t)V * D, 1.f);
    uint16_t *embb = malloc((size_t)V * D * 2);
    for (int i = 0; i < V * D; i++) { embb[i] = glm_f32_to_bf16(emb[i]); emb[i] = glm_bf16_to_f32(embb[i]); }
    int32_t tok[7] = {3, 0, 49, 17, 17, 8, 22};
    void *d_emb = dup_h(embb, (size_t)V * D * 2);
    int32_t *d_tok = dup_h(tok, sizeof tok);
    float *d_x = dnew((size_t)T * D * 4), *x = malloc((size_t)T * D * 4), *ref = malloc((size_t)T * D * 4);
    OK(glm_cu_embed(d_emb, GLM_CU_BF16, d_tok, T, D, V, d_x, 0));
    down(x, d_x, (size_t)T * D * 4);
    for (int t = 0; t < T; t++) memcpy(ref + (size_t)t * D, emb + (size_t)tok[t] * D, (size_t)D * 4);
    CHECK_REL(x, ref, (size_t)T * D, 0, "embed");

    /* rmsnorm over gathered rows */
    float *w = frandv(D, 1.f);
    float *d_w = dup_h(w, (size_t)D * 4), *d_o = dnew((size_t)T * D * 4), *o = malloc((size_t)T * D * 4);
    int32_t idx[3] = {6, 0, 3};
    int32_t *d_idx = dup_h(idx, sizeof idx);
    float *oref = malloc((size_t)3 * D * 4);
    /* rows of 300 (float4s in registers) and of 299 (the scalar kernel) */
    for (int Dn = D; Dn >= D - 1; Dn--) {
        poison(d_o, (size_t)3 * Dn * 4);
        OK(glm_cu_rmsnorm(d_x, d_idx, d_w, d_o, 3, Dn, 1e-5f, 0));
        down(o, d_o, (size_t)3 * Dn * 4);
        for (int r = 0; r < 3; r++) {
            const float *xr = ref + (size_t)idx[r] * Dn;
            double ss = 0;
            for (int i = 0; i < Dn; i++) ss += (double)xr[i] * xr[i];
            const float inv = (float)(1.0 / sqrt(ss / Dn + 1e-5));
            for (int i = 0; i < Dn; i++) oref[(size_t)r * Dn + i] = xr[i] * inv * w[i];
        }
        char what[48];
        snprintf(what, sizeof what, "rmsnorm (%d columns)", Dn);
        CHECK_REL(o, oref, (size_t)3 * Dn, 1e-6, what);
    }
    free(oref);

    /* add, add_bias, swiglu */
    const size_t n = (size_t)T * D;
    float *a = frandv(n, 1.f), *b = frandv(n, 1.f), *r2 = malloc(n * 4);
    float *d_a = dup_h(a, n * 4), *d_b = dup_h(b, n * 4);
    OK(glm_cu_add(d_a, d_b, n, 0));
    down(r2, d_a, n * 4);
    for (size_t i = 0; i < n; i++) a[i] += b[i];
    CHECK_REL(r2, a, n, 1e-7, "add");
    OK(glm_cu_add(d_a + 1, d_b + 1, n - 1, 0));  /* unaligned tail path */
    down(r2, d_a, n * 4);
    for (size_t i = 1; i < n; i++) a[i] += b[i];
    CHECK_REL(r2, a, n, 1e-7, "add unaligned");
    OK(glm_cu_add_bias(d_a, d_w, T, D, D, 0));
    down(r2, d_a, n * 4);
    for (int t = 0; t < T; t++) for (int i = 0; i < D; i++) a[(size_t)t * D + i] += w[i];
    CHECK_REL(r2, a, n, 1e-7, "add_bias");
    const int F = 150;  /* gu rows [T, 2F] inside a (ld 300) */
    float *d_y = dnew((size_t)T * F * 4), *y = malloc((size_t)T * F * 4), *yr = malloc((size_t)T * F * 4);
    OK(glm_cu_swiglu(d_a, 2 * F, d_y, F, T, F, 0));
    down(y, d_y, (size_t)T * F * 4);
    for (int t = 0; t < T; t++) for (int i = 0; i < F; i++) yr[t * F + i] = silu(a[(size_t)t * 2 * F + i]) * a[(size_t)t * 2 * F + F + i];
    CHECK_REL(y, yr, (size_t)T * F, 1e-6, "swiglu");
    free(emb); free(embb); free(x); free(ref); free(w); free(o); free(a); free(b); free(r2); free(y); free(yr);
    cudaFree(d_emb); cudaFree(d_tok); cudaFree(d_x); cudaFree(d_w); cudaFree(d_o); cudaFree(d_idx);
    cudaFree(d_a); cudaFree(d_b); cudaFree(d_y);
}

/* Both quantisers (16-byte rows with K % 128 == 0, and any K), the three scale layouts,
 * rows gathered through an index; the fused SwiGLU variant against SwiGLU then quant. */
TEST(quant_fp8) {
    const int T = 9, Ks[] = {384, 200};
    for (int ki = 0; ki < 2; ki++) {
        const int K = Ks[ki], nkb = (K + 127) / 128, ld = (T + 3) / 4 * 4;
        float *x = frandv((size_t)T * K, 3.f);
        x[5] = 0;  /* keep a zero */
        float *d_x = dup_h(x, (size_t)T * K * 4);
        int32_t idx[9] = {3, 0, 8, 8, 1, 2, 7, 5, 4}, *d_idx = dup_h(idx, sizeof idx);
        for (int blk = 0; blk < 3; blk++) {
            uint8_t *d_q = dnew((size_t)T * K), *q = malloc((size_t)T * K);
            float *d_s = dnew((size_t)ld * nkb * 4), *s = malloc((size_t)ld * nkb * 4);
            OK(glm_cu_quant_fp8(d_x, K, d_idx, T, K, blk, d_q, d_s, ld, 0));
            down(q, d_q, (size_t)T * K);
            down(s, d_s, (size_t)ld * nkb * 4);
            double worst = 0;
            int bad_scale = 0;
            for (int t = 0; t < T; t++) {
                const float *xr = x + (size_t)idx[t] * K;
                for (int kb = 0; kb < (blk ? nkb : 1); kb++) {
                    const int k0 = blk ? kb * 128 : 0, k1 = blk ? (kb * 128 + 128 < K ? kb * 128 + 128 : K) : K;
                    float amax = 0;
                    for (int k = k0; k < k1; k++) amax = fmaxf(amax, fabsf(xr[k]));
                    const float sc = !blk ? s[t] : blk == 1 ? s[kb * ld + t] : s[t * nkb + kb];
                    bad_scale += fabsf(sc - amax / 448.f) > 1e-6f * sc;
                    for (int k = k0; k < k1; k++) {
                        const float back = glm_fp8e4m3_to_f32(q[(size_t)t * K + k]) * sc;
                        const double e = fabs(back - xr[k]) / (448.f * sc);  /* error in units of the range */
                        if (!(e <= worst)) worst = e;
                    }
                }
            }
            /* e4m3 spacing is 32 in [256, 448]: half of it, 16/448 of the range, is the worst rounding */
            CHECK_MSG(worst <= 16.0 / 448 + 1e-6, "quant (K=%d, block=%d): worst error %.4g of range", K, blk, worst);
            CHECK_MSG(bad_scale == 0, "quant (K=%d, block=%d): %d scales differ from amax/448", K, blk, bad_scale);
            free(q); free(s); cudaFree(d_q); cudaFree(d_s);
        }
        free(x); cudaFree(d_x); cudaFree(d_idx);
    }
    /* SwiGLU fused in front: the same bytes and scales as SwiGLU, then quant */
    const int N = 256, nkb = N / 128, ld = (T + 3) / 4 * 4;
    /* gu as BF16 (the wgmma route's output); the two-step reference on the same values */
    float *gu = frandv((size_t)T * 2 * N, 4.f);
    uint16_t *gu16 = malloc((size_t)T * 2 * N * 2);
    for (size_t i = 0; i < (size_t)T * 2 * N; i++) {
        gu16[i] = glm_f32_to_bf16(gu[i]);
        gu[i] = glm_bf16_to_f32(gu16[i]);
    }
    float *d_gu = dup_h(gu, (size_t)T * 2 * N * 4), *d_y = dnew((size_t)T * N * 4);
    uint16_t *d_gu16 = dup_h(gu16, (size_t)T * 2 * N * 2);
    for (int blk = 0; blk < 3; blk++) {
        uint8_t *d_q = dnew((size_t)T * N), *d_q2 = dnew((size_t)T * N), *q = malloc((size_t)T * N), *q2 = malloc((size_t)T * N);
        float *d_s = dnew((size_t)ld * nkb * 4), *d_s2 = dnew((size_t)ld * nkb * 4), *s = malloc((size_t)ld * nkb * 4), *s2 = malloc((size_t)ld * nkb * 4);
        OK(glm_cu_swiglu(d_gu, 2 * N, d_y, N, T, N, 0));
        OK(glm_cu_quant_fp8(d_y, N, NULL, T, N, blk, d_q, d_s, ld, 0));
        OK(glm_cu_swiglu_quant_fp8(d_gu16, 2 * N, T, N, blk, d_q2, d_s2, ld, 0));
        down(q, d_q, (size_t)T * N); down(q2, d_q2, (size_t)T * N);
        down(s, d_s, (size_t)ld * nkb * 4); down(s2, d_s2, (size_t)ld * nkb * 4);
        const size_t ns = blk ? (size_t)T * nkb : (size_t)T;
        int same_s = 1;
        for (size_t i = 0; i < ns; i++) {
            const size_t at = blk == 1 ? (i % nkb) * ld + i / nkb : i;
            same_s &= s[at] == s2[at];
        }
        CHECK_MSG(!memcmp(q, q2, (size_t)T * N) && same_s, "swiglu+quant (block=%d) differs from swiglu then quant", blk);
        free(q); free(q2); free(s); free(s2); cudaFree(d_q); cudaFree(d_q2); cudaFree(d_s); cudaFree(d_s2);
    }
    free(gu); free(gu16); cudaFree(d_gu); cudaFree(d_gu16); cudaFree(d_y);
}

/* Dense GEMV and tiled GEMM in every format, with bias, odd N, T across the chunk sizes. */
TEST(gemv_dense) {
    const int Ts[] = {1, 2, 3, 4, 5, 8, 11, 16};
    for (int f = 0; f < 4; f++) {
        const int N = 201, K = 384;
        hweight hw = hw_make(FMTS[f][0], FMTS[f][1], N, K), hu = hw_make(FMTS[f][0], FMTS[f][1], N, K);
        glm_cu_mat w = hw_upload(&hw), u = hw_upload(&hu);
        float *bias = frandv(N, 1.f), *d_bias = dup_h(bias, (size_t)N * 4);
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            float *x = frandv((size_t)T * K, 1.f), *d_x = dup_h(x, (size_t)T * K * 4);
            float *y = malloc((size_t)T * N * 4), *ref = malloc((size_t)T * N * 4), *ru = malloc((size_t)T * N * 4);
            float *d_y = dnew((size_t)T * N * 4);
            ref_mm(hw.wf, N, K, x, T, ref, N);
            for (int t = 0; t < T; t++) for (int n = 0; n < N; n++) ref[t * N + n] += bias[n];
            char what[96];
            OK(glm_cu_gemv(&w, NULL, d_x, K, d_bias, d_y, N, T, NULL, 0, 0, 0));
            down(y, d_y, (size_t)T * N * 4);
            snprintf(what, sizeof what, "gemv %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(y, ref, (size_t)T * N, gemv_tol(f, T), what);
            poison(d_y, (size_t)T * N * 4);
            OK(glm_cu_gemm_tiled(&w, d_x, K, d_bias, d_y, N, T, NULL, 0, 0));
            down(y, d_y, (size_t)T * N * 4);
            snprintf(what, sizeof what, "gemm_tiled %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(y, ref, (size_t)T * N, 1e-5, what);
            /* glu */
            ref_mm(hw.wf, N, K, x, T, ref, N);
            ref_mm(hu.wf, N, K, x, T, ru, N);
            for (int i = 0; i < T * N; i++) ref[i] = silu(ref[i]) * ru[i];
            poison(d_y, (size_t)T * N * 4);
            OK(glm_cu_gemv(&w, &u, d_x, K, NULL, d_y, N, T, NULL, 0, 0, 0));
            down(y, d_y, (size_t)T * N * 4);
            snprintf(what, sizeof what, "gemv glu %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(y, ref, (size_t)T * N, gemv_tol(f, T), what);
            free(x); free(y); free(ref); free(ru); cudaFree(d_x); cudaFree(d_y);
        }
        free(bias); cudaFree(d_bias);
        hw_free(&hw, &w); hw_free(&hu, &u);
    }
    /* ragged shapes: N not a multiple of 16, K not of 128 (a partial 128-k block,
     * partial 64-k steps, a partial stage of the bulk ring); one token on the bulk ring
     * and on the register loop (GLM_CU_GEMV_NO_BULK), and several passes of 8 tokens on
     * the tensor cores and on the CUDA-core loop (GLM_CU_GEMV_CUDA_CORES) */
    for (int f = 0; f < 2; f++) {
        const int N = 37, K = 208;
        hweight hw = hw_make(FMTS[f][0], FMTS[f][1], N, K), hu = hw_make(FMTS[f][0], FMTS[f][1], N, K);
        glm_cu_mat w = hw_upload(&hw), u = hw_upload(&hu);
        for (int T = 1; T <= 19; T += 18) {
            float *x = frandv((size_t)T * K, 2.f), *d_x = dup_h(x, (size_t)T * K * 4);
            float *y = malloc((size_t)T * N * 4), *ref = malloc((size_t)T * N * 4), *ru = malloc((size_t)T * N * 4);
            float *d_y = dnew((size_t)T * N * 4);
            ref_mm(hw.wf, N, K, x, T, ref, N);
            ref_mm(hu.wf, N, K, x, T, ru, N);
            for (int i = 0; i < T * N; i++) ru[i] = silu(ref[i]) * ru[i];
            for (int cc = 0; cc < 2; cc++) {  /* the default path, then the other one */
                const unsigned flags = !cc ? 0u : T == 1 ? GLM_CU_GEMV_NO_BULK : GLM_CU_GEMV_CUDA_CORES;
                const double tol = T >= 2 && !cc ? 1e-3 : 1e-5;
                const char *path = T == 1 ? (cc ? "register loop" : "bulk ring") : cc ? "cuda cores" : "mma";
                char what[96];
                poison(d_y, (size_t)T * N * 4);
                OK(glm_cu_gemv(&w, NULL, d_x, K, NULL, d_y, N, T, NULL, 0, flags, 0));
                down(y, d_y, (size_t)T * N * 4);
                snprintf(what, sizeof what, "gemv %s %dx%d T=%d %s", FMT_NAMES[f], N, K, T, path);
                CHECK_REL(y, ref, (size_t)T * N, tol, what);
                poison(d_y, (size_t)T * N * 4);
                OK(glm_cu_gemv(&w, &u, d_x, K, NULL, d_y, N, T, NULL, 0, flags, 0));
                down(y, d_y, (size_t)T * N * 4);
                snprintf(what, sizeof what, "gemv glu %s %dx%d T=%d %s", FMT_NAMES[f], N, K, T, path);
                CHECK_REL(y, ru, (size_t)T * N, tol, what);
            }
            free(x); free(y); free(ref); free(ru); cudaFree(d_x); cudaFree(d_y);
        }
        hw_free(&hw, &w); hw_free(&hu, &u);
    }
    /* full-width shapes: GLM-4.7's expert down projection (block scales), and the widest
     * row the bulk ring takes (12288 columns, twelve stages; channel scales), one token
     * on both one-token paths and three tokens */
    for (int s = 0; s < 2; s++) {
        const int N = s ? 40 : 5120, K = s ? 12288 : 1536, f = s ? 0 : 1;
        hweight hw = hw_make(FMTS[f][0], FMTS[f][1], N, K);
        glm_cu_mat w = hw_upload(&hw);
        for (int T = 1; T <= 3; T += 2) {
            float *x = frandv((size_t)T * K, 1.f), *d_x = dup_h(x, (size_t)T * K * 4);
            float *y = malloc((size_t)T * N * 4), *ref = malloc((size_t)T * N * 4), *d_y = dnew((size_t)T * N * 4);
            ref_mm(hw.wf, N, K, x, T, ref, N);
            for (int nb = 0; nb < (T == 1 ? 2 : 1); nb++) {
                char what[96];
                poison(d_y, (size_t)T * N * 4);
                OK(glm_cu_gemv(&w, NULL, d_x, K, NULL, d_y, N, T, NULL, 0, nb ? GLM_CU_GEMV_NO_BULK : 0u, 0));
                down(y, d_y, (size_t)T * N * 4);
                snprintf(what, sizeof what, "gemv %dx%d %s T=%d%s", N, K, FMT_NAMES[f], T, nb ? " register loop" : "");
                CHECK_REL(y, ref, (size_t)T * N, gemv_tol(f, T), what);
            }
            free(x); free(y); free(ref); cudaFree(d_x); cudaFree(d_y);
        }
        hw_free(&hw, &w);
    }
}

/* q, k and v in one launch; the residual add fused with RMSNorm. */
TEST(gemv_multi_and_add_norm) {
    const int K = 512, Ns[3] = {1544, 120, 136}, Ts[] = {1, 3, 8};  /* ragged: tiles end inside a weight */
    for (int f = 0; f < 4; f++) {
        hweight hw[3];
        glm_cu_mat m[3];
        float *bias[3], *d_bias[3];
        for (int i = 0; i < 3; i++) {
            hw[i] = hw_make(FMTS[f][0], FMTS[f][1], Ns[i], K);
            m[i] = hw_upload(&hw[i]);
            bias[i] = frandv(Ns[i], 1.f);
            d_bias[i] = dup_h(bias[i], (size_t)Ns[i] * 4);
        }
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            float *x = frandv((size_t)T * K, 1.f), *d_x = dup_h(x, (size_t)T * K * 4);
            float *d_y[3], *ys[3];
            int ld[3];
            const float *bs[3] = {d_bias[0], NULL, d_bias[2]};
            for (int i = 0; i < 3; i++) { d_y[i] = dnew((size_t)T * Ns[i] * 4); ys[i] = d_y[i]; ld[i] = Ns[i]; }
            OK(glm_cu_gemv_multi(m, bs, ys, ld, 3, d_x, K, T, 0, 0));
            for (int i = 0; i < 3; i++) {
                float *y = malloc((size_t)T * Ns[i] * 4), *ref = malloc((size_t)T * Ns[i] * 4);
                ref_mm(hw[i].wf, Ns[i], K, x, T, ref, Ns[i]);
                if (bs[i]) for (int t = 0; t < T; t++) for (int n = 0; n < Ns[i]; n++) ref[t * Ns[i] + n] += bias[i][n];
                down(y, d_y[i], (size_t)T * Ns[i] * 4);
                char what[96];
                snprintf(what, sizeof what, "gemv_multi %s T=%d weight %d", FMT_NAMES[f], T, i);
                CHECK_REL(y, ref, (size_t)T * Ns[i], gemv_tol(f, T), what);
                free(y); free(ref); cudaFree(d_y[i]);
            }
            free(x); cudaFree(d_x);
        }
        for (int i = 0; i < 3; i++) { hw_free(&hw[i], &m[i]); free(bias[i]); cudaFree(d_bias[i]); }
    }
    /* add + rmsnorm: rows held in registers (5120), and the scalar kernel (5118) */
    const int R = 5, Ds[2] = {5120, 5118};
    for (int di = 0; di < 2; di++) {
        const int D = Ds[di];
        float *x = frandv((size_t)R * D, 1.f), *y = frandv((size_t)R * D, 1.f), *w = frandv(D, 1.f);
        float *d_x = dup_h(x, (size_t)R * D * 4), *d_y = dup_h(y, (size_t)R * D * 4), *d_w = dup_h(w, (size_t)D * 4);
        float *d_o = dnew((size_t)R * D * 4), *o = malloc((size_t)R * D * 4), *xo = malloc((size_t)R * D * 4);
        float *ref = malloc((size_t)R * D * 4);
        OK(glm_cu_add_rmsnorm(d_x, d_y, d_w, d_o, R, D, 1e-5f, 0));
        down(o, d_o, (size_t)R * D * 4);
        down(xo, d_x, (size_t)R * D * 4);
        for (int r = 0; r < R; r++) {
            double ss = 0;
            for (int i = 0; i < D; i++) { x[r * D + i] += y[r * D + i]; ss += (double)x[r * D + i] * x[r * D + i]; }
            const float inv = (float)(1.0 / sqrt(ss / D + 1e-5));
            for (int i = 0; i < D; i++) ref[r * D + i] = x[r * D + i] * inv * w[i];
        }
        char what[64];
        snprintf(what, sizeof what, "add_rmsnorm residual (D=%d)", D);
        CHECK_REL(xo, x, (size_t)R * D, 1e-7, what);
        snprintf(what, sizeof what, "add_rmsnorm output (D=%d)", D);
        CHECK_REL(o, ref, (size_t)R * D, 1e-6, what);
        free(x); free(y); free(w); free(o); free(xo); free(ref);
        cudaFree(d_x); cudaFree(d_y); cudaFree(d_w); cudaFree(d_o);
    }
}

/* E experts of one format, gate and up [F, D] side by side and down [D, F], at a stride
 * on the device as the backend lays them out; host copies kept for references. */
typedef struct {
    hweight *hg, *hu, *hd;
    glm_cu_mat mg, mu, md;
    void *d_gu, *d_dn;
    float *d_gus, *d_dns;
} hexperts;

static hexperts experts_make(int f, int E, int D, int F) {
    hexperts x;
    x.hg = malloc(sizeof(hweight) * E); x.hu = malloc(sizeof(hweight) * E); x.hd = malloc(sizeof(hweight) * E);
    for (int e = 0; e < E; e++) {
        x.hg[e] = hw_make(FMTS[f][0], FMTS[f][1], F, D);
        x.hu[e] = hw_make(FMTS[f][0], FMTS[f][1], F, D);
        x.hd[e] = hw_make(FMTS[f][0], FMTS[f][1], D, F);
    }
    const size_t gb = x.hg[0].data_bytes, gs = x.hg[0].scale_floats, db = x.hd[0].data_bytes, ds = x.hd[0].scale_floats;
    uint8_t *gu = malloc(E * 2 * gb), *dn = malloc(E * db);
    float *gus = calloc(E * 2 * gs + 1, 4), *dns = calloc(E * ds + 1, 4);
    for (int e = 0; e < E; e++) {
        memcpy(gu + e * 2 * gb, x.hg[e].data, gb);
        memcpy(gu + e * 2 * gb + gb, x.hu[e].data, gb);
        memcpy(dn + e * db, x.hd[e].data, db);
        if (gs) { memcpy(gus + e * 2 * gs, x.hg[e].scale, gs * 4); memcpy(gus + e * 2 * gs + gs, x.hu[e].scale, gs * 4); }
        if (ds) memcpy(dns + e * ds, x.hd[e].scale, ds * 4);
    }
    x.d_gu = dup_h(gu, E * 2 * gb);
    x.d_dn = dup_h(dn, E * db);
    x.d_gus = dup_h(gus, (E * 2 * gs + 1) * 4);
    x.d_dns = dup_h(dns, (E * ds + 1) * 4);
    free(gu); free(dn); free(gus); free(dns);
    glm_cu_mat mg = {x.d_gu, gs ? x.d_gus : NULL, (long long)(2 * gb), (long long)(2 * gs), FMTS[f][0], FMTS[f][1], F, D, glm_cu_block_ld(D)};
    x.mg = x.mu = mg;
    x.mu.data = (uint8_t *)x.d_gu + gb;
    x.mu.scale = gs ? x.d_gus + gs : NULL;
    glm_cu_mat md = {x.d_dn, ds ? x.d_dns : NULL, (long long)db, (long long)ds, FMTS[f][0], FMTS[f][1], D, F, glm_cu_block_ld(F)};
    x.md = md;
    return x;
}

static void experts_free(hexperts *x, int E) {
    for (int e = 0; e < E; e++) { hw_free(&x->hg[e], NULL); hw_free(&x->hu[e], NULL); hw_free(&x->hd[e], NULL); }
    free(x->hg); free(x->hu); free(x->hd);
    cudaFree(x->d_gu); cudaFree(x->d_dn); cudaFree(x->d_gus); cudaFree(x->d_dns);
}

/* Top-k and grouping at GLM-4.7's width (160 experts, top 8) against a host reference
 * of both steps, with the shared expert appended; 160 experts take five warps of the
 * grouping's block-wide scan. */
TEST(moe_group_wide) {
    const int E = 160, k = 8, Ts[] = {1, 9, 64};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
        const int T = Ts[ti], R = T * k;
        float *lg = frandv((size_t)T * E, 4.f), *bias = frandv(E, 0.5f);
        float *d_lg = dup_h(lg, (size_t)T * E * 4), *d_bias = dup_h(bias, (size_t)E * 4);
        /* host reference: choice by score + bias, weights the scores normalised, times 2.5 */
        int32_t *ids = malloc((size_t)R * 4), cnt[160] = {0}, off[162], off4[162], act[161], na = 0;
        float *wref = malloc((size_t)R * 4);
        for (int t = 0; t < T; t++) {
            float sc[160], ch[160], sum = 0;
            for (int e = 0; e < E; e++) { sc[e] = 1.f / (1.f + expf(-lg[t * E + e])); ch[e] = sc[e] + bias[e]; }
            for (int j = 0; j < k; j++) {
                int b = 0;
                for (int e = 1; e < E; e++) if (ch[e] > ch[b]) b = e;
                ids[t * k + j] = b; wref[t * k + j] = sc[b]; sum += sc[b]; ch[b] = -1e38f;
                cnt[b]++;
            }
            for (int j = 0; j < k; j++) wref[t * k + j] = wref[t * k + j] / sum * 2.5f;
        }
        for (int e = 0, a = 0, a4 = 0; e <= E; e++) {
            off[e] = a; off4[e] = a4;
            if (e < E) { a += cnt[e]; a4 += (cnt[e] + 3) & ~3; if (cnt[e]) act[na++] = e; }
        }
        act[na++] = E;
        off[E + 1] = R + T;
        off4[E + 1] = off4[E] + ((T + 3) & ~3);
        int32_t *rows = malloc((size_t)(R + T) * 4), *slot = malloc((size_t)(R + T) * 4), run[160];
        memcpy(run, off, sizeof run);
        for (int i = 0; i < R; i++) { slot[i] = run[ids[i]]++; rows[slot[i]] = i / k; }
        for (int t = 0; t < T; t++) { rows[R + t] = t; slot[R + t] = R + t; }
        {
            int32_t *d_ids = dnew((size_t)R * 4), *d_off = dnew((E + 2) * 4), *d_off4 = dnew((E + 2) * 4);
            int32_t *d_act = dnew((E + 1) * 4), *d_na = dnew(4), *d_rows = dnew((size_t)(R + T) * 4);
            int32_t *d_slot = dnew((size_t)(R + T) * 4);
            float *d_w = dnew((size_t)R * 4);
            OK(glm_cu_moe_topk(d_lg, d_bias, T, E, k, 1, 2.5f, d_ids, d_w, 0));
            OK(glm_cu_moe_group(d_ids, T, k, E, 1, d_off, d_off4, d_act, d_na, d_rows, d_slot, 0));
            int32_t *gi = malloc((size_t)R * 4), go[162], go4[162], ga[161], gna = 0;
            int32_t *gr = malloc((size_t)(R + T) * 4), *gs = malloc((size_t)(R + T) * 4);
            float *gw = malloc((size_t)R * 4);
            down(gi, d_ids, (size_t)R * 4); down(gw, d_w, (size_t)R * 4);
            down(go, d_off, (E + 2) * 4); down(go4, d_off4, (E + 2) * 4); down(ga, d_act, (size_t)na * 4);
            down(&gna, d_na, 4); down(gr, d_rows, (size_t)(R + T) * 4); down(gs, d_slot, (size_t)(R + T) * 4);
            int bad_w = 0;
            for (int i = 0; i < R; i++) bad_w += fabsf(gw[i] - wref[i]) > 1e-5f;
            if (memcmp(gi, ids, (size_t)R * 4) || bad_w || memcmp(go, off, (E + 2) * 4) || memcmp(go4, off4, (E + 2) * 4) ||
                gna != na || memcmp(ga, act, (size_t)na * 4) || memcmp(gr, rows, (size_t)(R + T) * 4) ||
                memcmp(gs, slot, (size_t)(R + T) * 4)) {
                fprintf(stderr, "  topk+group T=%d: ids %d w %d off %d off4 %d active %d/%d rows %d slots %d differ\n", T,
                        !!memcmp(gi, ids, (size_t)R * 4), bad_w,
                        !!memcmp(go, off, (E + 2) * 4), !!memcmp(go4, off4, (E + 2) * 4), gna, na,
                        !!memcmp(gr, rows, (size_t)(R + T) * 4), !!memcmp(gs, slot, (size_t)(R + T) * 4));
                CHECK(0);
            }
            free(gi); free(gr); free(gs); free(gw);
            cudaFree(d_ids); cudaFree(d_off); cudaFree(d_off4); cudaFree(d_act); cudaFree(d_na); cudaFree(d_rows);
            cudaFree(d_slot); cudaFree(d_w);
        }
        free(lg); free(bias); free(ids); free(wref); free(rows); free(slot); cudaFree(d_lg); cudaFree(d_bias);
    }
}

/* Tokens quantised once and copied to their sorted positions: the same bytes and scales
 * as quantising each position's row where it lands (glm_cu_quant_fp8 gathering), with
 * 1x128 block scales and with one scale a token. */
TEST(gather_fp8) {
    const int T = 37, K = 640, R = 101, KB = K / 128, ld_s = (R + 3) & ~3;
    float *x = frandv((size_t)T * K, 3.f), *d_x = dup_h(x, (size_t)T * K * 4);
    int32_t rows[101];
    for (int p = 0; p < R; p++) rows[p] = (int32_t)(frand() * 0.5f * T + 0.5f * T) % T;
    int32_t *d_rows = dup_h(rows, sizeof rows);
    uint8_t *d_qt = dnew((size_t)T * K), *d_qa = dnew((size_t)R * K), *d_qb = dnew((size_t)R * K);
    float *d_st = dnew((size_t)T * KB * 4), *d_sa = dnew((size_t)KB * ld_s * 4), *d_sb = dnew((size_t)KB * ld_s * 4);
    uint8_t *qa = malloc((size_t)R * K), *qb = malloc((size_t)R * K);
    float *sa = malloc((size_t)KB * ld_s * 4), *sb = malloc((size_t)KB * ld_s * 4);
    for (int blk = 1; blk >= 0; blk--) {
        const int n_s = blk ? KB : 1;
        poison(d_qb, (size_t)R * K);
        poison(d_sb, (size_t)KB * ld_s * 4);
        OK(glm_cu_quant_fp8(d_x, K, d_rows, R, K, blk, d_qa, d_sa, ld_s, 0));
        OK(glm_cu_quant_fp8(d_x, K, NULL, T, K, blk ? 2 : 0, d_qt, d_st, 0, 0));
        OK(glm_cu_gather_fp8(d_qt, d_st, n_s, d_rows, R, K, d_qb, d_sb, ld_s, 0));
        down(qa, d_qa, (size_t)R * K); down(qb, d_qb, (size_t)R * K);
        down(sa, d_sa, (size_t)KB * ld_s * 4); down(sb, d_sb, (size_t)KB * ld_s * 4);
        CHECK_MSG(!memcmp(qa, qb, (size_t)R * K), "gather_fp8: FP8 rows differ (%s scales)", blk ? "block" : "token");
        for (int kb = 0; kb < n_s; kb++)
            CHECK_MSG(!memcmp(sa + (size_t)kb * ld_s, sb + (size_t)kb * ld_s, (size_t)R * 4),
                      "gather_fp8: scales of block %d differ (%s scales)", kb, blk ? "block" : "token");
    }
    CHECK(glm_cu_gather_fp8(d_qt, d_st, 3, d_rows, R, K, d_qb, d_sb, ld_s, 0) != 0);  /* neither 1 nor K/128 */
    free(x); free(qa); free(qb); free(sa); free(sb);
    cudaFree(d_x); cudaFree(d_rows); cudaFree(d_qt); cudaFree(d_qa); cudaFree(d_qb); cudaFree(d_st); cudaFree(d_sa);
    cudaFree(d_sb);
}

/* Router top-k, grouping by expert, grouped GEMV/GEMM over the groups, combine. */
TEST(moe_path) {
    const int E = 12, k = 3, D = 256, F = 96;
    const int Ts[] = {1, 5, 40};
    for (int f = 0; f < 4; f++) {
        hexperts X = experts_make(f, E, D, F);
        const hweight *hg = X.hg, *hu = X.hu, *hd = X.hd;
        glm_cu_mat mg = X.mg, mu = X.mu, md = X.md;

        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti], R = T * k;
            /* router */
            float *lg = frandv((size_t)T * E, 3.f), *bias = frandv(E, 0.3f);
            float *d_lg = dup_h(lg, (size_t)T * E * 4), *d_bias = dup_h(bias, (size_t)E * 4);
            int32_t *d_ids = dnew((size_t)R * 4), *ids = malloc((size_t)R * 4);
            float *d_w = dnew((size_t)R * 4), *wv = malloc((size_t)R * 4);
            OK(glm_cu_moe_topk(d_lg, d_bias, T, E, k, 1, 2.5f, d_ids, d_w, 0));
            down(ids, d_ids, (size_t)R * 4);
            down(wv, d_w, (size_t)R * 4);
            for (int t = 0; t < T; t++) {
                float sc[64], ch[64];
                for (int e = 0; e < E; e++) { sc[e] = 1.f / (1.f + expf(-lg[t * E + e])); ch[e] = sc[e] + bias[e]; }
                float sum = 0, wref[8];
                int idr[8];
                for (int j = 0; j < k; j++) {
                    int b = -1;
                    for (int e = 0; e < E; e++) if (ch[e] > -1e30f && (b < 0 || ch[e] > ch[b])) b = e;
                    idr[j] = b; wref[j] = sc[b]; sum += sc[b]; ch[b] = -1e38f;
                }
                for (int j = 0; j < k; j++) {
                    CHECK(ids[t * k + j] == idr[j]);
                    CHECK_NEAR(wv[t * k + j], wref[j] / sum * 2.5f, 1e-5);
                }
            }
            /* grouping */
            int32_t *d_off = dnew((E + 1) * 4), *d_off4 = dnew((E + 1) * 4), *d_act = dnew((E + 1) * 4), *d_na = dnew(4);
            int32_t *d_rows = dnew((size_t)R * 4), *d_slot = dnew((size_t)R * 4);
            OK(glm_cu_moe_group(d_ids, T, k, E, 0, d_off, d_off4, d_act, d_na, d_rows, d_slot, 0));
            int32_t off[64], off4[64], act[64], na = 0, *rows = malloc((size_t)R * 4), *slot = malloc((size_t)R * 4);
            down(off, d_off, (E + 1) * 4); down(off4, d_off4, (E + 1) * 4); down(act, d_act, (E + 1) * 4); down(&na, d_na, 4);
            down(rows, d_rows, (size_t)R * 4); down(slot, d_slot, (size_t)R * 4);
            int cnt[64] = {0}, nact = 0;
            for (int i = 0; i < R; i++) cnt[ids[i]]++;
            for (int e = 0, acc = 0; e < E; e++) { CHECK(off[e] == acc); acc += cnt[e]; if (cnt[e]) { CHECK(act[nact] == e); nact++; } }
            CHECK(off[E] == R);
            CHECK(na == nact);
            for (int e = 0, acc = 0; e <= E; e++) { CHECK(off4[e] == acc); if (e < E) acc += (cnt[e] + 3) / 4 * 4; }
            for (int i = 0; i < R; i++) {
                const int p = slot[i], e = ids[i];
                CHECK(p >= off[e] && p < off[e + 1]);
                CHECK(rows[p] == i / k);
                if (i > 0) for (int i2 = 0; i2 < i; i2++) if (ids[i2] == e) CHECK(slot[i2] < p);  /* stable */
            }
            /* with the shared expert as expert E: the routed part unchanged, then every token in order */
            int32_t *d_off2 = dnew((E + 2) * 4), *d_act2 = dnew((E + 1) * 4), *d_rows2 = dnew((size_t)(R + T) * 4);
            int32_t *d_slot2 = dnew((size_t)(R + T) * 4), *d_off42 = dnew((E + 2) * 4);
            OK(glm_cu_moe_group(d_ids, T, k, E, 1, d_off2, d_off42, d_act2, d_na, d_rows2, d_slot2, 0));
            int32_t off2[66], act2[65], na2 = 0, *rows2 = malloc((size_t)(R + T) * 4), *slot2 = malloc((size_t)(R + T) * 4);
            down(off2, d_off2, (E + 2) * 4); down(act2, d_act2, (E + 1) * 4); down(&na2, d_na, 4);
            down(rows2, d_rows2, (size_t)(R + T) * 4); down(slot2, d_slot2, (size_t)(R + T) * 4);
            CHECK(!memcmp(off2, off, (E + 1) * 4) && off2[E + 1] == R + T);
            CHECK(na2 == nact + 1 && !memcmp(act2, act, (size_t)nact * 4) && act2[nact] == E);
            CHECK(!memcmp(rows2, rows, (size_t)R * 4) && !memcmp(slot2, slot, (size_t)R * 4));
            for (int t = 0; t < T; t++) CHECK(rows2[R + t] == t && slot2[R + t] == R + t);
            /* grouped expert products: GEMV (decode path) and tiled (any T) */
            float *h = frandv((size_t)T * D, 1.f), *d_h = dup_h(h, (size_t)T * D * 4);
            {   /* grouped block quantisation: expert e's scales a [KB][round4(n_e)] tensor at KB*off4[e] */
                const int KB = D / 128;
                uint8_t *d_q = dnew((size_t)R * D), *q = malloc((size_t)R * D);
                float *d_s = dnew((size_t)KB * off4[E] * 4 + 16), *sc = malloc((size_t)KB * off4[E] * 4 + 16);
                OK(glm_cu_quant_fp8_grouped(d_h, D, d_rows, d_off, d_off4, E, R, D, 0, d_q, d_s, 0));
                down(q, d_q, (size_t)R * D);
                down(sc, d_s, (size_t)KB * off4[E] * 4);
                double worst = 0;
                for (int e = 0; e < E; e++)
                    for (int p = off[e]; p < off[e + 1]; p++)
                        for (int d = 0; d < D; d++) {
                            const float s1 = sc[(size_t)KB * off4[e] + (size_t)(d / 128) * (off4[e + 1] - off4[e]) + (p - off[e])];
                            const double err = fabs(glm_fp8e4m3_to_f32(q[(size_t)p * D + d]) * s1 - h[(size_t)rows[p] * D + d]) / (448.0 * s1);
                            if (!(err <= worst)) worst = err;
                        }
                CHECK_MSG(worst <= 16.0 / 448 + 1e-6, "grouped block quant: worst error %.4g of range", worst);
                /* per-row scales at off4[e] + p - off[e] */
                OK(glm_cu_quant_fp8_grouped(d_h, D, d_rows, d_off, d_off4, E, R, D, 1, d_q, d_s, 0));
                down(q, d_q, (size_t)R * D);
                down(sc, d_s, (size_t)off4[E] * 4);
                worst = 0;
                for (int e = 0; e < E; e++)
                    for (int p = off[e]; p < off[e + 1]; p++)
                        for (int d = 0; d < D; d++) {
                            const float s1 = sc[off4[e] + p - off[e]];
                            const double err = fabs(glm_fp8e4m3_to_f32(q[(size_t)p * D + d]) * s1 - h[(size_t)rows[p] * D + d]) / (448.0 * s1);
                            if (!(err <= worst)) worst = err;
                        }
                CHECK_MSG(worst <= 16.0 / 448 + 1e-6, "grouped channel quant: worst error %.4g of range", worst);
                free(q); free(sc); cudaFree(d_q); cudaFree(d_s);
            }
            float *mid = malloc((size_t)R * F * 4), *mref = malloc((size_t)R * F * 4), *tmp = malloc((size_t)F * 4), *tmp2 = malloc((size_t)F * 4);
            float *eo = malloc((size_t)R * D * 4), *eref = malloc((size_t)R * D * 4), *out = malloc((size_t)T * D * 4), *oref = malloc((size_t)T * D * 4);
            float *d_mid = dnew((size_t)R * F * 4), *d_eo = dnew((size_t)R * D * 4), *d_out = dnew((size_t)T * D * 4);
            float *d_gt = dnew((size_t)R * 2 * F * 4);
            for (int i = 0; i < R; i++) {
                const int t = i / k, e = ids[i];
                ref_mm(hg[e].wf, F, D, h + (size_t)t * D, 1, tmp, F);
                ref_mm(hu[e].wf, F, D, h + (size_t)t * D, 1, tmp2, F);
                for (int n = 0; n < F; n++) mref[(size_t)slot[i] * F + n] = silu(tmp[n]) * tmp2[n];
            }
            glm_cu_groups g = {d_act, d_na, d_off, d_rows, R < E ? R : E, T};
            glm_cu_groups gv = g;
            gv.max_count = T < 4 ? T : 4;
            char what[96];
            OK(glm_cu_gemv(&mg, &mu, d_h, D, NULL, d_mid, F, T, &gv, 1, 0, 0));
            down(mid, d_mid, (size_t)R * F * 4);
            snprintf(what, sizeof what, "grouped gemv glu %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(mid, mref, (size_t)R * F, gemv_tol(f, T), what);
            for (int i = 0; i < R; i++) {
                const int e = ids[i], p = slot[i];
                ref_mm(hd[e].wf, D, F, mid + (size_t)p * F, 1, eref + (size_t)p * D, D);
            }
            OK(glm_cu_gemv(&md, NULL, d_mid, F, NULL, d_eo, D, T, &gv, 0, 0, 0));
            down(eo, d_eo, (size_t)R * D * 4);
            snprintf(what, sizeof what, "grouped gemv down %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(eo, eref, (size_t)R * D, gemv_tol(f, T), what);
            /* tiled: gate and up into [R, 2F], then down */
            OK(glm_cu_gemm_tiled(&mg, d_h, D, NULL, d_gt, 2 * F, T, &g, 1, 0));
            OK(glm_cu_gemm_tiled(&mu, d_h, D, NULL, d_gt + F, 2 * F, T, &g, 1, 0));
            poison(d_mid, (size_t)R * F * 4);
            OK(glm_cu_swiglu(d_gt, 2 * F, d_mid, F, R, F, 0));
            down(mid, d_mid, (size_t)R * F * 4);
            snprintf(what, sizeof what, "grouped tiled glu %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(mid, mref, (size_t)R * F, 1e-5, what);
            poison(d_eo, (size_t)R * D * 4);
            OK(glm_cu_gemm_tiled(&md, d_mid, F, NULL, d_eo, D, T, &g, 0, 0));
            down(eo, d_eo, (size_t)R * D * 4);
            for (int i = 0; i < R; i++) {
                const int e = ids[i], p = slot[i];
                ref_mm(hd[e].wf, D, F, mid + (size_t)p * F, 1, eref + (size_t)p * D, D);
            }
            snprintf(what, sizeof what, "grouped tiled down %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(eo, eref, (size_t)R * D, 1e-5, what);
            /* combine */
            OK(glm_cu_moe_combine(d_eo, 0, d_slot, d_w, T, k, D, 0, d_out, 0));
            down(out, d_out, (size_t)T * D * 4);
            for (int t = 0; t < T; t++)
                for (int d = 0; d < D; d++) {
                    double a = 0;
                    for (int j = 0; j < k; j++) a += (double)wv[t * k + j] * eo[(size_t)slot[t * k + j] * D + d];
                    oref[(size_t)t * D + d] = (float)a;
                }
            CHECK_REL(out, oref, (size_t)T * D, 1e-6, "moe combine");
            {   /* ... and with the shared expert's rows after the routed ones, BF16 rows (the
                 * wgmma route's) */
                float *eo2 = frandv((size_t)(R + T) * D, 1.f);
                uint16_t *e16 = malloc((size_t)(R + T) * D * 2);
                for (size_t i = 0; i < (size_t)(R + T) * D; i++) {
                    e16[i] = glm_f32_to_bf16(eo2[i]);
                    eo2[i] = glm_bf16_to_f32(e16[i]);
                }
                uint16_t *d_eo2 = dup_h(e16, (size_t)(R + T) * D * 2);
                poison(d_out, (size_t)T * D * 4);
                OK(glm_cu_moe_combine(d_eo2, 1, d_slot2, d_w, T, k, D, 1, d_out, 0));
                down(out, d_out, (size_t)T * D * 4);
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < D; d++) {
                        double a = eo2[(size_t)(R + t) * D + d];
                        for (int j = 0; j < k; j++) a += (double)wv[t * k + j] * eo2[(size_t)slot[t * k + j] * D + d];
                        oref[(size_t)t * D + d] = (float)a;
                    }
                CHECK_REL(out, oref, (size_t)T * D, 1e-6, "moe combine with the shared expert, BF16 rows");
                free(eo2); free(e16); cudaFree(d_eo2);
            }
            free(rows2); free(slot2);
            cudaFree(d_off2); cudaFree(d_off42); cudaFree(d_act2); cudaFree(d_rows2); cudaFree(d_slot2);
            free(lg); free(bias); free(ids); free(wv); free(rows); free(slot); free(h); free(mid); free(mref);
            free(tmp); free(tmp2); free(eo); free(eref); free(out); free(oref);
            cudaFree(d_lg); cudaFree(d_bias); cudaFree(d_ids); cudaFree(d_w); cudaFree(d_off); cudaFree(d_off4); cudaFree(d_act);
            cudaFree(d_na); cudaFree(d_rows); cudaFree(d_slot); cudaFree(d_h); cudaFree(d_mid); cudaFree(d_eo);
            cudaFree(d_out); cudaFree(d_gt);
        }
        experts_free(&X, E);
    }
}

/* The FP8 tensor-core expert kernel: grouped glu and down, and dense, against
 * references on the dequantised FP8 activations the device produced. Hopper's FP8
 * MMA accumulates with fewer bits than float32: tolerance 2e-3. */
static void dequant_rows(const uint8_t *q, const float *s, int R, int K, float *out) {
    const int KB = K / 128;
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) out[(size_t)r * K + k] = glm_fp8e4m3_to_f32(q[(size_t)r * K + k]) * s[(size_t)r * KB + k / 128];
}

TEST(moe_mma) {
    const int E = 12, k = 3, D = 256, F = 128, Ts[] = {5, 13, 40};
    for (int f = 0; f < 2; f++) {
        hexperts X = experts_make(f, E, D, F);
        const hweight *hg = X.hg, *hu = X.hu, *hd = X.hd;
        glm_cu_mat mg = X.mg, mu = X.mu, md = X.md;
        CHECK(glm_cu_mma_ok(&mg) && glm_cu_mma_ok(&md));
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti], R = T * k;
            int32_t *ids = malloc((size_t)R * 4);
            for (int t = 0; t < T; t++)
                for (int j = 0; j < k; j++) {
                    int e;
                    do { e = (int)(rnd() % E); } while ((j > 0 && ids[t * k] == e) || (j > 1 && ids[t * k + 1] == e));
                    ids[t * k + j] = e;
                }
            int32_t *d_ids = dup_h(ids, (size_t)R * 4);
            int32_t *d_off = dnew((E + 1) * 4), *d_off4 = dnew((E + 1) * 4), *d_act = dnew((E + 1) * 4), *d_na = dnew(4);
            int32_t *d_rows = dnew((size_t)R * 4), *d_slot = dnew((size_t)R * 4), *slot = malloc((size_t)R * 4);
            OK(glm_cu_moe_group(d_ids, T, k, E, 0, d_off, d_off4, d_act, d_na, d_rows, d_slot, 0));
            down(slot, d_slot, (size_t)R * 4);
            float *h = frandv((size_t)T * D, 2.f), *d_h = dup_h(h, (size_t)T * D * 4);
            uint8_t *d_q = dnew((size_t)R * D), *q = malloc((size_t)R * D);
            float *d_s = dnew((size_t)R * (D / 128) * 4), *sc = malloc((size_t)R * (D / 128) * 4);
            float *hd_ = malloc((size_t)T * D * 4), *mref = malloc((size_t)R * F * 4), *mid = malloc((size_t)R * F * 4);
            float *tmp = malloc((size_t)F * 4), *tmp2 = malloc((size_t)F * 4);
            float *d_mid = dnew((size_t)R * F * 4), *d_eo = dnew((size_t)R * D * 4), *eo = malloc((size_t)R * D * 4), *eref = malloc((size_t)R * D * 4);
            OK(glm_cu_quant_fp8(d_h, D, NULL, T, D, 2, d_q, d_s, 0, 0));
            down(q, d_q, (size_t)T * D);
            down(sc, d_s, (size_t)T * (D / 128) * 4);
            dequant_rows(q, sc, T, D, hd_);
            for (int i = 0; i < R; i++) {
                const int t = i / k, e = ids[i];
                ref_mm(hg[e].wf, F, D, hd_ + (size_t)t * D, 1, tmp, F);
                ref_mm(hu[e].wf, F, D, hd_ + (size_t)t * D, 1, tmp2, F);
                for (int n = 0; n < F; n++) mref[(size_t)slot[i] * F + n] = silu(tmp[n]) * tmp2[n];
            }
            glm_cu_groups g = {d_act, d_na, d_off, d_rows, R < E ? R : E, T < 8 ? T : 8};
            OK(glm_cu_gemm_fp8_mma(&mg, &mu, d_q, d_s, d_mid, F, T, &g, 1, 0));
            down(mid, d_mid, (size_t)R * F * 4);
            char what[96];
            snprintf(what, sizeof what, "mma glu %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(mid, mref, (size_t)R * F, 2e-3, what);
            /* down over the device's mid, requantised per position */
            OK(glm_cu_quant_fp8(d_mid, F, NULL, R, F, 2, d_q, d_s, 0, 0));
            down(q, d_q, (size_t)R * F);
            down(sc, d_s, (size_t)R * (F / 128) * 4);
            float *midd = malloc((size_t)R * F * 4);
            dequant_rows(q, sc, R, F, midd);
            for (int i = 0; i < R; i++) ref_mm(hd[ids[i]].wf, D, F, midd + (size_t)slot[i] * F, 1, eref + (size_t)slot[i] * D, D);
            OK(glm_cu_gemm_fp8_mma(&md, NULL, d_q, d_s, d_eo, D, T, &g, 0, 0));
            down(eo, d_eo, (size_t)R * D * 4);
            snprintf(what, sizeof what, "mma down %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(eo, eref, (size_t)R * D, 2e-3, what);
            /* dense: expert 0's down weight over the first T positions */
            glm_cu_mat m0 = md;
            poison(d_eo, (size_t)R * D * 4);
            OK(glm_cu_gemm_fp8_mma(&m0, NULL, d_q, d_s, d_eo, D, T, NULL, 0, 0));
            down(eo, d_eo, (size_t)T * D * 4);
            ref_mm(hd[0].wf, D, F, midd, T, eref, D);
            snprintf(what, sizeof what, "mma dense %s T=%d", FMT_NAMES[f], T);
            CHECK_REL(eo, eref, (size_t)T * D, 2e-3, what);
            free(ids); free(slot); free(h); free(q); free(sc); free(hd_); free(mref); free(mid); free(tmp); free(tmp2);
            free(eo); free(eref); free(midd);
            cudaFree(d_ids); cudaFree(d_off); cudaFree(d_off4); cudaFree(d_act); cudaFree(d_na); cudaFree(d_rows);
            cudaFree(d_slot); cudaFree(d_h); cudaFree(d_q); cudaFree(d_s); cudaFree(d_mid); cudaFree(d_eo);
        }
        experts_free(&X, E);
    }
}

/* Dense products of graph-sized batches split along K (glm_cu_gemm_fp8_mma_splitk):
 * 1, 3 and 8 splits of 8 column blocks and the split count glm_cu_mma_splits picks,
 * with a bias and an output row stride past N, against the reference on the device's
 * dequantised activations; the rows past N in the output stay as they were. */
TEST(mma_splitk) {
    const int N = 192, K = 1024, Ts[] = {5, 33, 64}, ldy = N + 8;
    for (int f = 0; f < 2; f++) {
        hweight hw = hw_make(FMTS[f][0], FMTS[f][1], N, K);
        glm_cu_mat m = hw_upload(&hw);
        float *bias = frandv(N, 1.f), *d_bias = dup_h(bias, (size_t)N * 4);
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti];
            float *x = frandv((size_t)T * K, 2.f), *d_x = dup_h(x, (size_t)T * K * 4);
            uint8_t *d_q = dnew((size_t)T * K), *q = malloc((size_t)T * K);
            float *d_s = dnew((size_t)T * (K / 128) * 4), *sc = malloc((size_t)T * (K / 128) * 4);
            float *xd = malloc((size_t)T * K * 4), *ref = malloc((size_t)T * ldy * 4), *y = malloc((size_t)T * ldy * 4);
            OK(glm_cu_quant_fp8(d_x, K, NULL, T, K, 2, d_q, d_s, 0, 0));
            down(q, d_q, (size_t)T * K);
            down(sc, d_s, (size_t)T * (K / 128) * 4);
            dequant_rows(q, sc, T, K, xd);
            ref_mm(hw.wf, N, K, xd, T, ref, ldy);
            for (int t = 0; t < T; t++)
                for (int n = 0; n < N; n++) ref[(size_t)t * ldy + n] += bias[n];
            const size_t part_floats = (size_t)8 * T * N;
            float *d_part = dnew(part_floats * 4), *d_y = dnew((size_t)T * ldy * 4);
            const int picked = glm_cu_mma_splits(&m, T, 132, part_floats);
            CHECK_MSG(picked >= 1 && picked <= 8, "glm_cu_mma_splits: %d", picked);
            CHECK(glm_cu_mma_splits(&m, T, 132, (size_t)T * N) == 1);  /* no room for partials: one split */
            const int splits[4] = {1, 3, 8, picked};
            for (int si = 0; si < 4; si++) {
                poison(d_y, (size_t)T * ldy * 4);
                OK(glm_cu_gemm_fp8_mma_splitk(&m, d_q, d_s, d_bias, d_y, ldy, T, splits[si], splits[si] > 1 ? d_part : NULL, 0));
                down(y, d_y, (size_t)T * ldy * 4);
                int pad_ok = 1;
                for (int t = 0; t < T; t++)
                    for (int n = N; n < ldy; n++) {
                        uint32_t u;
                        memcpy(&u, &y[(size_t)t * ldy + n], 4);
                        pad_ok &= u == 0xffffffffu;
                        y[(size_t)t * ldy + n] = ref[(size_t)t * ldy + n] = 0.f;
                    }
                char what[96];
                snprintf(what, sizeof what, "mma split-K %s T=%d, %d splits", FMT_NAMES[f], T, splits[si]);
                CHECK_REL(y, ref, (size_t)T * ldy, 2e-3, what);
                CHECK_MSG(pad_ok, "%s: wrote past N", what);
            }
            CHECK(glm_cu_gemm_fp8_mma_splitk(&m, d_q, d_s, NULL, d_y, ldy, T, K / 128 + 1, d_part, 0) != 0);  /* more splits than blocks */
            free(x); free(q); free(sc); free(xd); free(ref); free(y);
            cudaFree(d_x); cudaFree(d_q); cudaFree(d_s); cudaFree(d_part); cudaFree(d_y);
        }
        free(bias);
        cudaFree(d_bias);
        hw_free(&hw, &m);
    }
}

/* The grouped wgmma GEMM (prefill experts): gate and up as one [2F, D] weight over
 * positions gathered by expert, down over the device's SwiGLU output, and dense; some
 * experts get more positions than one 128-position tile. References on the
 * dequantised FP8 activations the device produced (1x128 scales, column-major, or one
 * scale a position: ld_s = 0). */
static void dequant_cols(const uint8_t *q, const float *s, int ld_s, int R, int K, float *out) {
    for (int r = 0; r < R; r++)
        for (int k = 0; k < K; k++) out[(size_t)r * K + k] = glm_fp8e4m3_to_f32(q[(size_t)r * K + k]) * s[(size_t)(k / 128) * ld_s + r];
}

/* The device tile list of groups off[0..E]: each expert's positions in runs of 128, in order. */
static void check_tiles(const int32_t *off, int E, const int32_t *d_tiles) {
    const size_t ni = glm_cu_wgmma_tiles_ints(off[E], E);
    int32_t *tl = malloc(ni * 4), n = 0;
    down(tl, d_tiles, ni * 4);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < off[e + 1] - off[e]; r += 128, n++)
            CHECK(n < tl[0] && tl[1 + 3 * n] == e && tl[2 + 3 * n] == off[e] + r &&
                  tl[3 + 3 * n] == (off[e + 1] - off[e] - r < 128 ? off[e + 1] - off[e] - r : 128));
    CHECK(tl[0] == n);
    free(tl);
}

/* BF16 outputs: their rounding (2^-9 relative at most) on top of the products' own */
#define WG_TOL 4e-3
static void down_bf16(float *h, const uint16_t *d, size_t n) {
    uint16_t *b = malloc(n * 2);
    down(b, d, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = glm_bf16_to_f32(b[i]);
    free(b);
}

TEST(moe_wgmma) {
    /* 1152 x 640: k blocks past the rings (six and four stages), odd counts; at 700
     * tokens more row-tile x position-tile items than SMs, so blocks take several in
     * turn; down's 1152 rows end in half a 256-row tile */
    const int E = 12, k = 3, D = 1152, F = 640, Ts[] = {5, 40, 700};
    {   /* the tile list at 160 experts (five rounds of the warp's 32), empty experts among them */
        int32_t off[161];
        off[0] = 0;
        for (int e = 0; e < 160; e++) off[e + 1] = off[e] + (rnd() % 3 ? (int)(rnd() % 300) : 0);
        int32_t *d_off = dup_h(off, sizeof off), *d_tiles = dnew(glm_cu_wgmma_tiles_ints(off[160], 160) * 4);
        OK(glm_cu_wgmma_tiles(d_off, 160, d_tiles, 0));
        check_tiles(off, 160, d_tiles);
        cudaFree(d_off); cudaFree(d_tiles);
    }
    /* channel weights with 1x128 activation scales, block weights, channel weights with
     * one activation scale a position (the 256-row kernel) */
    for (int v = 0; v < 3; v++) {
        const int f = v == 1, blk = v != 2;
        const char *how = blk ? "" : " token scales";
        hexperts X = experts_make(f, E, D, F);
        glm_cu_mat mgu = X.mg, md = X.md;
        mgu.N = 2 * F;
        if (!glm_cu_wgmma_ok(&mgu)) { CHECK_MSG(0, "wgmma refuses %s [%d x %d] on this device", FMT_NAMES[f], mgu.N, mgu.K); break; }
        CHECK(glm_cu_wgmma_ok(&md));
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti], R = T * k, ld_s = (R + 3) / 4 * 4;
            int32_t *ids = malloc((size_t)R * 4), *slot = malloc((size_t)R * 4), *off = malloc((E + 1) * 4);
            for (int t = 0; t < T; t++)
                for (int j = 0; j < k; j++) {
                    int e;
                    do { e = (int)(rnd() % E); } while ((j > 0 && ids[t * k] == e) || (j > 1 && ids[t * k + 1] == e));
                    ids[t * k + j] = e;
                }
            int32_t *d_ids = dup_h(ids, (size_t)R * 4), *d_tiles = dnew(glm_cu_wgmma_tiles_ints(R, E) * 4);
            int32_t *d_off = dnew((E + 1) * 4), *d_off4 = dnew((E + 1) * 4), *d_act = dnew((E + 1) * 4), *d_na = dnew(4);
            int32_t *d_rows = dnew((size_t)R * 4), *d_slot = dnew((size_t)R * 4);
            OK(glm_cu_moe_group(d_ids, T, k, E, 0, d_off, d_off4, d_act, d_na, d_rows, d_slot, 0));
            down(slot, d_slot, (size_t)R * 4);
            down(off, d_off, (E + 1) * 4);
            int maxc = 0;
            for (int e = 0; e < E; e++) if (off[e + 1] - off[e] > maxc) maxc = off[e + 1] - off[e];
            float *h = frandv((size_t)T * D, 2.f), *d_h = dup_h(h, (size_t)T * D * 4);
            uint8_t *d_q = dnew((size_t)R * D), *q = malloc((size_t)R * D);
            float *d_s = dnew((size_t)ld_s * (D / 128) * 4), *sc = malloc((size_t)ld_s * (D / 128) * 4);
            float *xd = malloc((size_t)R * D * 4), *gt = malloc((size_t)R * 2 * F * 4), *gref = malloc((size_t)R * 2 * F * 4);
            uint16_t *d_gt = dnew((size_t)R * 2 * F * 2), *d_eo = dnew((size_t)R * D * 2);
            float *eo = malloc((size_t)R * D * 4), *eref = malloc((size_t)R * D * 4);
            /* gate and up over the positions gathered by expert */
            OK(glm_cu_quant_fp8(d_h, D, d_rows, R, D, blk, d_q, d_s, ld_s, 0));
            down(q, d_q, (size_t)R * D);
            down(sc, d_s, (size_t)ld_s * (D / 128) * 4);
            dequant_cols(q, sc, blk ? ld_s : 0, R, D, xd);
            for (int i = 0; i < R; i++) {
                const int e = ids[i], p = slot[i];
                ref_mm(X.hg[e].wf, F, D, xd + (size_t)p * D, 1, gref + (size_t)p * 2 * F, 2 * F);
                ref_mm(X.hu[e].wf, F, D, xd + (size_t)p * D, 1, gref + (size_t)p * 2 * F + F, 2 * F);
            }
            OK(glm_cu_wgmma_tiles(d_off, E, d_tiles, 0));
            check_tiles(off, E, d_tiles);
            poison(d_gt, (size_t)R * 2 * F * 2);
            OK(glm_cu_gemm_fp8_wgmma(&mgu, d_q, d_s, ld_s, d_gt, 2 * F, R, E, d_tiles, blk, 0));
            down_bf16(gt, d_gt, (size_t)R * 2 * F);
            char what[128];
            snprintf(what, sizeof what, "wgmma gate+up %s%s T=%d (largest expert %d positions)", FMT_NAMES[f], how, T, maxc);
            CHECK_REL(gt, gref, (size_t)R * 2 * F, WG_TOL, what);
            /* down over the device's SwiGLU output, quantised as it is made */
            OK(glm_cu_swiglu_quant_fp8(d_gt, 2 * F, R, F, blk, d_q, d_s, ld_s, 0));
            down(q, d_q, (size_t)R * F);
            down(sc, d_s, (size_t)ld_s * (F / 128) * 4);
            dequant_cols(q, sc, blk ? ld_s : 0, R, F, xd);
            for (int i = 0; i < R; i++)
                ref_mm(X.hd[ids[i]].wf, D, F, xd + (size_t)slot[i] * F, 1, eref + (size_t)slot[i] * D, D);
            poison(d_eo, (size_t)R * D * 2);
            OK(glm_cu_gemm_fp8_wgmma(&md, d_q, d_s, ld_s, d_eo, D, R, E, d_tiles, blk, 0));
            down_bf16(eo, d_eo, (size_t)R * D);
            snprintf(what, sizeof what, "wgmma down %s%s T=%d", FMT_NAMES[f], how, T);
            CHECK_REL(eo, eref, (size_t)R * D, WG_TOL, what);
            /* dense: expert 0's down weight over all R positions */
            poison(d_eo, (size_t)R * D * 2);
            OK(glm_cu_gemm_fp8_wgmma(&md, d_q, d_s, ld_s, d_eo, D, R, 0, NULL, blk, 0));
            down_bf16(eo, d_eo, (size_t)R * D);
            ref_mm(X.hd[0].wf, D, F, xd, R, eref, D);
            snprintf(what, sizeof what, "wgmma dense %s%s R=%d", FMT_NAMES[f], how, R);
            CHECK_REL(eo, eref, (size_t)R * D, WG_TOL, what);
            free(ids); free(slot); free(off); free(h); free(q); free(sc); free(xd); free(gt); free(gref); free(eo); free(eref);
            cudaFree(d_ids); cudaFree(d_tiles); cudaFree(d_off); cudaFree(d_off4); cudaFree(d_act); cudaFree(d_na);
            cudaFree(d_rows); cudaFree(d_slot); cudaFree(d_h); cudaFree(d_q); cudaFree(d_s); cudaFree(d_gt);
            cudaFree(d_eo);
        }
        if (f == 1)  /* one activation scale a position needs channel weight scales */
            CHECK(glm_cu_gemm_fp8_wgmma(&md, NULL, NULL, 4, NULL, D, 4, 0, NULL, 0, 0) != 0);
        experts_free(&X, E);
    }
}

/* cuBLASLt: FP8 outer-vector and block scales, BF16; references on the dequantised
 * activations the device produced. For block scales the layouts are probed: the test
 * reports which layout of activation and weight scales cuBLASLt reads. */
TEST(cublaslt) {
    void *ws = dnew(32u << 20), *yb = dnew(8u << 20);
    glm_cu_lt *lt = NULL;
    OK(glm_cu_lt_new(&lt, ws, 32u << 20, yb, 8u << 20));
    if (!lt) return;
    const int N = 384, K = 512, Ts[] = {13, 16, 40, 256};
    for (int f = 0; f < 4; f++) {
        hweight hw = hw_make(FMTS[f][0], FMTS[f][1], N, K);
        glm_cu_mat w = hw_upload(&hw);
        CHECK(glm_cu_lt_shape_ok(&w));
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int T = Ts[ti], ld = (T + 3) / 4 * 4, nkb = K / 128;
            float *x = frandv((size_t)T * K, 2.f), *d_x = dup_h(x, (size_t)T * K * 4);
            uint8_t *d_q = dnew((size_t)T * K * 2), *q = malloc((size_t)T * K * 2);
            float *d_s = dnew((size_t)ld * nkb * 4), *s = malloc((size_t)ld * nkb * 4);
            float *xd = malloc((size_t)T * K * 4), *y = malloc((size_t)T * N * 4), *ref = malloc((size_t)T * N * 4);
            float *d_y = dnew((size_t)T * N * 4);
            if (FMTS[f][0] == GLM_CU_FP8) {
                const int blk = FMTS[f][1] == GLM_CU_SCALE_BLOCK;
                OK(glm_cu_quant_fp8(d_x, K, NULL, T, K, blk, d_q, d_s, ld, 0));
                down(q, d_q, (size_t)T * K);
                down(s, d_s, (size_t)ld * nkb * 4);
                for (int t = 0; t < T; t++)
                    for (int kk = 0; kk < K; kk++)
                        xd[(size_t)t * K + kk] = glm_fp8e4m3_to_f32(q[(size_t)t * K + kk]) * (blk ? s[(kk / 128) * ld + t] : s[t]);
            } else if (FMTS[f][0] == GLM_CU_BF16) {
                OK(glm_cu_to_bf16(d_x, K, NULL, T, K, (uint16_t *)d_q, 0));
                down(q, d_q, (size_t)T * K * 2);
                for (int i = 0; i < T * K; i++) xd[i] = glm_bf16_to_f32(((uint16_t *)q)[i]);
            } else {  /* float32 weights (the router) take the activations as they are */
                memcpy(xd, x, (size_t)T * K * 4);
            }
            ref_mm(hw.wf, N, K, xd, T, ref, N);
            int rc = glm_cu_lt_matmul(lt, &w, 0, FMTS[f][0] == GLM_CU_F32 ? (const void *)d_x : d_q, d_s, ld, T, d_y, N, 0);
            char what[96];
            snprintf(what, sizeof what, "cuBLASLt %s T=%d", FMT_NAMES[f], T);
            if (FMTS[f][1] == GLM_CU_SCALE_BLOCK && T % 4) {  /* 1x128 scales: cuBLASLt wants 4k tokens; the backend splits */
                CHECK_MSG(rc == 0 || rc == GLM_ERR_UNSUPPORTED, "%s: %s", what, glm_last_error());
                fprintf(stderr, "  %s: %s\n", what, rc ? "no algorithm (expected; the backend sends the tail rows to the GEMV)" : "ok");
                if (rc) goto next;
            }
            CHECK_MSG(rc == 0, "%s: %s", what, glm_last_error());
            if (!rc) {
                fprintf(stderr, "  %s: cuBLASLt route %d\n", what, glm_cu_lt_variant(lt, &w, T, N));
                down(y, d_y, (size_t)T * N * 4);
                const double e = rel_err(y, ref, (size_t)T * N);
                /* BF16 output: 2^-9 rounding; FP8 MMA accumulates with fewer bits than float32 */
                const double tol = glm_cu_lt_variant(lt, &w, T, N) == 1 ? 4e-3 : FMTS[f][0] == GLM_CU_FP8 ? 5e-4 : 1e-5;
                CHECK_MSG(e <= tol, "%s: rel err %.3g", what, e);
                if (e > tol && FMTS[f][1] == GLM_CU_SCALE_BLOCK) {
                    /* probe the other scale layouts to say which one cuBLASLt reads */
                    const int nb = N / 128, ldw = (nb + 3) / 4 * 4;
                    float *st = calloc((size_t)nkb * ld + (size_t)T * 4, 4), *wt = calloc((size_t)nkb * ldw, 4);
                    for (int t = 0; t < T; t++) for (int b = 0; b < nkb; b++) st[t * nkb + b] = s[b * ld + t];
                    for (int i = 0; i < nb; i++) for (int j = 0; j < nkb; j++) wt[j * ldw + i] = hw.scale[i * hw.ld + j];
                    float *d_st = dup_h(st, ((size_t)nkb * ld + T * 4) * 4), *d_wt = dup_h(wt, (size_t)nkb * ldw * 4);
                    for (int v = 1; v < 4; v++) {
                        glm_cu_mat w2 = w;
                        if (v & 2) w2.scale = d_wt;
                        poison(d_y, (size_t)T * N * 4);
                        if (glm_cu_lt_matmul(lt, &w2, 0, d_q, (v & 1) ? d_st : d_s, ld, T, d_y, N, 0)) continue;
                        down(y, d_y, (size_t)T * N * 4);
                        fprintf(stderr, "  probe: activation scales %s, weight scales %s: rel err %.3g\n",
                                (v & 1) ? "[T][kb]" : "[kb][T]", (v & 2) ? "[kb][nb]" : "[nb][kb]", rel_err(y, ref, (size_t)T * N));
                    }
                    free(st); free(wt); cudaFree(d_st); cudaFree(d_wt);
                }
            }
        next:
            free(x); free(q); free(s); free(xd); free(y); free(ref);
            cudaFree(d_x); cudaFree(d_q); cudaFree(d_s); cudaFree(d_y);
        }
        hw_free(&hw, &w);
    }
    glm_cu_lt_free(lt);
    cudaFree(ws);
    cudaFree(yb);
}

/* q/k norm + RoPE + paged store, then attention over pages, against a CPU model of
 * the same cache (values rounded exactly as stored), over three sequences in
 * n_passes passes: passes[i][s] new tokens of sequence s in pass i (one token for each
 * of several sequences is a decode step). The split kernel with 1, 3, 8 and 64 splits
 * (64 when the longest sequence passes 512 keys: CU_MAX_SPLIT, as the backend picks
 * for a decode step of one token), and the tensor-core prefill kernel over tiles.
 * long_rows: also check every (token, head) row of the output on its own. */
static void attention_case_passes(int n_head, int n_kv, int hd, int n_rot, int fp8, const int (*passes)[3], int n_passes,
                                  int long_rows) {
    const int n_seq = 3, P = GLM_PAGE;
    int total[3] = {0, 0, 0}, max_T = 0;
    for (int pass = 0; pass < n_passes; pass++) {
        int T = 0;
        for (int s = 0; s < n_seq; s++) { total[s] += passes[pass][s]; T += passes[pass][s]; }
        if (T > max_T) max_T = T;
    }
    int max_pages = 1;
    for (int s = 0; s < n_seq; s++) if ((total[s] + P - 1) / P > max_pages) max_pages = (total[s] + P - 1) / P;
    const int n_pages = n_seq * max_pages + 4, n_splits = max_pages * P > 512 ? 4 : 3;
    const float theta = 10000.f, eps = 1e-5f;
    const size_t page_el = (size_t)n_kv * P * hd;
    void *d_k = dnew((size_t)n_pages * page_el * (fp8 ? 1 : 2)), *d_v = dnew((size_t)n_pages * page_el * (fp8 ? 1 : 2));
    float *d_ks = fp8 ? dnew((size_t)n_pages * n_kv * P * 4) : NULL, *d_vs = fp8 ? dnew((size_t)n_pages * n_kv * P * 4) : NULL;
    glm_cu_kv kv = {d_k, d_v, d_ks, d_vs, fp8};
    /* page table: pages assigned out of order */
    int32_t *pt = malloc(sizeof(int32_t) * n_seq * max_pages);
    int32_t *seq = malloc(sizeof(int32_t) * max_T), *pos = malloc(sizeof(int32_t) * max_T), *tiles = malloc(sizeof(int32_t) * (max_T + 1));
    for (int i = 0; i < n_seq * max_pages; i++) pt[i] = -1;
    int next = n_pages - 1;
    float *qn = frandv(hd, 1.f), *kn = frandv(hd, 1.f);
    for (int i = 0; i < hd; i++) { qn[i] += 1.5f; kn[i] += 1.5f; }
    float *d_qn = dup_h(qn, (size_t)hd * 4), *d_kn = dup_h(kn, (size_t)hd * 4);
    /* CPU cache: [seq][pos][n_kv][hd] as stored */
    const int maxlen = max_pages * P;
    float *ck = calloc((size_t)n_seq * maxlen * n_kv * hd, 4), *cv = calloc((size_t)n_seq * maxlen * n_kv * hd, 4);
    int len[3] = {0, 0, 0};
    for (int pass = 0; pass < n_passes; pass++) {
        int T = 0;
        for (int s = 0; s < n_seq; s++)
            for (int i = 0; i < passes[pass][s]; i++) { seq[T] = s; pos[T] = len[s] + i; T++; }
        for (int t = 0; t < T; t++) {
            int32_t *slot = &pt[seq[t] * max_pages + pos[t] / P];
            if (*slot < 0) *slot = next--;
        }
        const int Q = n_head * hd, KV = n_kv * hd;
        float *q = frandv((size_t)T * Q, 2.f), *k = frandv((size_t)T * KV, 2.f), *v = frandv((size_t)T * KV, 2.f);
        float *d_q = dup_h(q, (size_t)T * Q * 4), *d_kk = dup_h(k, (size_t)T * KV * 4), *d_vv = dup_h(v, (size_t)T * KV * 4);
        int32_t *d_pos = dup_h(pos, (size_t)T * 4), *d_seq = dup_h(seq, (size_t)T * 4);
        int32_t *d_pt = dup_h(pt, sizeof(int32_t) * n_seq * max_pages);
        glm_cu_plan plan = {d_pos, d_seq, d_pt, max_pages};
        /* the projections' biases, added here, in the two prefill passes (the second has
         * more than 64 tokens: several heads a warp) */
        const int with_bias = pass != 1;
        float *bq = frandv(Q, 1.f), *bk = frandv(KV, 1.f), *bv = frandv(KV, 1.f);
        float *d_bq = dup_h(bq, (size_t)Q * 4), *d_bk = dup_h(bk, (size_t)KV * 4), *d_bv = dup_h(bv, (size_t)KV * 4);
        OK(glm_cu_rope_store(d_q, d_kk, d_vv, with_bias ? d_bq : NULL, with_bias ? d_bk : NULL, with_bias ? d_bv : NULL,
                             T, n_head, n_kv, hd, n_rot, theta, d_qn, d_kn, eps, &plan, &kv, 0));
        if (with_bias) {
            for (int t = 0; t < T; t++) {
                for (int i = 0; i < Q; i++) q[(size_t)t * Q + i] += bq[i];
                for (int i = 0; i < KV; i++) { k[(size_t)t * KV + i] += bk[i]; v[(size_t)t * KV + i] += bv[i]; }
            }
            float *vg = malloc((size_t)T * KV * 4);
            down(vg, d_vv, (size_t)T * KV * 4);
            CHECK(!memcmp(vg, v, (size_t)T * KV * 4));  /* v + bv written back */
            free(vg);
        }
        free(bq); free(bk); free(bv); cudaFree(d_bq); cudaFree(d_bk); cudaFree(d_bv);
        /* CPU: norm + rope on q and k, store k and v as the device rounds them */
        for (int t = 0; t < T; t++)
            for (int h = 0; h < n_head + n_kv; h++) {
                float *vec = h < n_head ? q + ((size_t)t * n_head + h) * hd : k + ((size_t)t * n_kv + h - n_head) * hd;
                const float *nw = h < n_head ? qn : kn;
                double ss = 0;
                for (int d = 0; d < hd; d++) ss += (double)vec[d] * vec[d];
                const float inv = (float)(1.0 / sqrt(ss / hd + eps));
                float tmp[256];
                for (int d = 0; d < hd; d++) tmp[d] = vec[d] * inv * nw[d];
                for (int d = 0; d < hd; d++) {
                    float x = tmp[d];
                    if (d < n_rot) {
                        const int half = n_rot / 2, i = d < half ? d : d - half;
                        const float ang = (float)pos[t] * powf(theta, -2.f * i / n_rot);
                        x = d < half ? tmp[d] * cosf(ang) - tmp[d + half] * sinf(ang) : tmp[d] * cosf(ang) + tmp[d - half] * sinf(ang);
                    }
                    vec[d] = x;
                }
            }
        for (int t = 0; t < T; t++)
            for (int j = 0; j < n_kv; j++) {
                const float *kr = k + ((size_t)t * n_kv + j) * hd, *vr = v + ((size_t)t * n_kv + j) * hd;
                float *ckr = ck + (((size_t)seq[t] * maxlen + pos[t]) * n_kv + j) * hd;
                float *cvr = cv + (((size_t)seq[t] * maxlen + pos[t]) * n_kv + j) * hd;
                float ka = 0, va = 0;
                for (int d = 0; d < hd; d++) { ka = fmaxf(ka, fabsf(kr[d])); va = fmaxf(va, fabsf(vr[d])); }
                const float ks = ka > 0 ? ka / 448.f : 1.f, vs = va > 0 ? va / 448.f : 1.f;
                for (int d = 0; d < hd; d++) {
                    if (fp8) {
                        ckr[d] = glm_fp8e4m3_to_f32(glm_f32_to_fp8e4m3(kr[d] / ks)) * ks;
                        cvr[d] = glm_fp8e4m3_to_f32(glm_f32_to_fp8e4m3(vr[d] / vs)) * vs;
                    } else {
                        ckr[d] = glm_bf16_to_f32(glm_f32_to_bf16(kr[d]));
                        cvr[d] = glm_bf16_to_f32(glm_f32_to_bf16(vr[d]));
                    }
                }
            }
        float *qg = malloc((size_t)T * Q * 4), *kg = malloc((size_t)T * KV * 4);
        down(qg, d_q, (size_t)T * Q * 4);
        down(kg, d_kk, (size_t)T * KV * 4);
        char what[128];
        snprintf(what, sizeof what, "rope q (heads %d/%d hd %d fp8 %d)", n_head, n_kv, hd, fp8);
        CHECK_REL(qg, q, (size_t)T * Q, 2e-5, what);
        snprintf(what, sizeof what, "rope k (heads %d/%d hd %d fp8 %d)", n_head, n_kv, hd, fp8);
        CHECK_REL(kg, k, (size_t)T * KV, 2e-5, what);
        /* reference attention */
        float *ref = malloc((size_t)T * Q * 4), *out = malloc((size_t)T * Q * 4), *d_out = dnew((size_t)T * Q * 4);
        const int G = n_head / n_kv;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < n_head; h++) {
                const int j = h / G, L = pos[t] + 1;
                const float *qq = q + ((size_t)t * n_head + h) * hd;
                double *sc = malloc(sizeof(double) * L), mx = -1e300, sum = 0;
                for (int i = 0; i < L; i++) {
                    const float *kk = ck + (((size_t)seq[t] * maxlen + i) * n_kv + j) * hd;
                    double a = 0;
                    for (int d = 0; d < hd; d++) a += (double)qq[d] * kk[d];
                    sc[i] = a / sqrt((double)hd);
                    if (sc[i] > mx) mx = sc[i];
                }
                for (int i = 0; i < L; i++) { sc[i] = exp(sc[i] - mx); sum += sc[i]; }
                double acc[256] = {0};
                for (int i = 0; i < L; i++) {
                    const float *vv = cv + (((size_t)seq[t] * maxlen + i) * n_kv + j) * hd;
                    for (int d = 0; d < hd; d++) acc[d] += sc[i] * vv[d];
                }
                for (int d = 0; d < hd; d++) ref[((size_t)t * n_head + h) * hd + d] = (float)(acc[d] / sum);
                free(sc);
            }
        const int splits[4] = {1, 3, 8, 64};
        double mr, rr;
        int row;
        for (int si = 0; si < n_splits; si++) {
            const int ns = splits[si];
            float *d_ws = dnew((size_t)T * n_head * ns * (hd + 2) * 4);
            poison(d_out, (size_t)T * Q * 4);
            OK(glm_cu_attention(d_q, d_out, T, n_head, n_kv, hd, &plan, &kv, ns, d_ws, 0));
            down(out, d_out, (size_t)T * Q * 4);
            snprintf(what, sizeof what, "attention pass %d split %d (heads %d/%d hd %d fp8 %d)", pass, ns, n_head, n_kv, hd, fp8);
            CHECK_REL(out, ref, (size_t)T * Q, 1e-4, what);
            if (long_rows) {
                /* each (token, head) row: float32 sums over up to a few thousand keys,
                 * 10x the whole-array bound (a wrong row scores about 1); the tensor-core
                 * kernel (BF16 pages) 2.5x that: its worst measured row, 1.3e-3 over
                 * about 1,400 keys at head_dim 32, against 8e-6 for the CUDA-core kernel
                 * (whose worst measured row is 2.3e-4, at head_dim 128) */
                const double mk = glm_cu_attention_mma(n_head, n_kv, hd, fp8) ? 2.5 : 1.0;
                row_errors(out, ref, T * n_head, hd, &mr, &rr, &row);
                fprintf(stderr, "  %s: rel err %.3g, per row: max %.3g (row %d), rms %.3g\n", what, rel_err(out, ref, (size_t)T * Q), mr, row, rr);
                CHECK_MSG(mr <= 2e-3 * mk && rr <= 1e-3 * mk, "%s: row %d: max |diff| %.3g of the row's largest, worst row rms %.3g", what,
                          row, mr, rr);
            }
            cudaFree(d_ws);
        }
        if (glm_cu_attention_prefill_ok(n_head, n_kv, hd)) {  /* BF16 q and p: 1e-2 */
            const int nt = glm_cu_attention_tiles(seq, T, tiles);
            int32_t *d_tiles = dup_h(tiles, (size_t)(nt + 1) * 4);
            poison(d_out, (size_t)T * Q * 4);
            OK(glm_cu_attention_prefill(d_q, d_out, n_head, n_kv, hd, &plan, &kv, d_tiles, nt, 0));
            down(out, d_out, (size_t)T * Q * 4);
            snprintf(what, sizeof what, "prefill attention pass %d, %d tiles (heads %d/%d hd %d fp8 %d)", pass, nt,
                     n_head, n_kv, hd, fp8);
            fprintf(stderr, "  %s: rel err %.3g\n", what, rel_err(out, ref, (size_t)T * Q));
            CHECK_REL(out, ref, (size_t)T * Q, 1e-2, what);
            if (long_rows) {
                /* BF16 q and p: each row at 5x the whole-array bound (a wrong row scores about 1) */
                row_errors(out, ref, T * n_head, hd, &mr, &rr, &row);
                fprintf(stderr, "  %s: per row: max %.3g (row %d), rms %.3g\n", what, mr, row, rr);
                CHECK_MSG(mr <= 1e-1 && rr <= 5e-2, "%s: row %d: max |diff| %.3g of the row's largest, worst row rms %.3g", what, row, mr, rr);
            }
            cudaFree(d_tiles);
        }
        for (int s = 0; s < n_seq; s++) len[s] += passes[pass][s];
        free(q); free(k); free(v); free(qg); free(kg); free(ref); free(out);
        cudaFree(d_q); cudaFree(d_kk); cudaFree(d_vv); cudaFree(d_pos); cudaFree(d_seq); cudaFree(d_pt); cudaFree(d_out);
    }
    free(qn); free(kn); free(ck); free(cv); free(pt); free(seq); free(pos); free(tiles);
    cudaFree(d_k); cudaFree(d_v); cudaFree(d_ks); cudaFree(d_vs); cudaFree(d_qn); cudaFree(d_kn);
}

/* A prefill of two sequences, a decode step of three (one new), then a prefill of all
 * three that cuts sequence 0's 150 rows into several prefill tiles. */
static void attention_case(int n_head, int n_kv, int hd, int n_rot, int fp8) {
    static const int passes[3][3] = {{37, 5, 0}, {1, 1, 1}, {150, 20, 70}};
    attention_case_passes(n_head, n_kv, hd, n_rot, fp8, passes, 3, 0);
}

TEST(attention) {
    attention_case(6, 2, 32, 16, 0);
    attention_case(6, 2, 32, 16, 1);
    attention_case(12, 1, 128, 64, 0);
    attention_case(12, 1, 128, 64, 1);
}

/* Long sequences: the split kernel's context splits and the prefill kernel's key tiles
 * over 300 to 2600 keys. Sequences of 300, 1100 and 2500 keys, a decode step of each
 * (64 splits: about 5, 17 and 40 keys a split), a prefill of 64 + 130 + 1 rows on top
 * (tiles that start past 2500 keys), another decode step. */
TEST(attention_long) {
    static const int passes[4][3] = {{2500, 300, 1100}, {1, 1, 1}, {64, 130, 1}, {1, 1, 1}};
    attention_case_passes(6, 2, 32, 16, 0, passes, 4, 1);
    attention_case_passes(6, 2, 32, 16, 1, passes, 4, 1);
    static const int passes128[3][3] = {{700, 1, 300}, {1, 1, 1}, {70, 0, 1}};
    attention_case_passes(12, 1, 128, 64, 0, passes128, 3, 1);
}

TEST(probes) {
    double bw = 0, fl = 0;
    OK(glm_cu_probe_copy(64u << 20, 5, &bw));
    OK(glm_cu_probe_fp8_gemm(1024, 3, &fl));
    CHECK(bw > 1e9);
    CHECK(fl > 1e12);
    fprintf(stderr, "  copy %.0f GB/s, fp8 1024^3 %.1f TFLOP/s\n", bw / 1e9, fl / 1e12);
}

int main(void) {
    glm_numbers_init();
    if (!glm_cuda_available()) {
        printf("no CUDA device\n0 passed, 1 failed\n");
        return 1;
    }
    return run_tests_();
}
