// gemm-lt.cu - tensor-core products through cuBLASLt for prefill-sized batches:
// FP8 E4M3 x E4M3 with per-token x per-channel outer-vector scales, or 1x128
// activation x 128x128 weight block scales; BF16 x BF16 for unquantised weights;
// float32 x float32 (full-precision compute) for float32 weights such as the router.
// Output float32. FP8 on sm_90 is TN only, so the weight W[N, K] row-major is the
// transposed A operand and the activations X[T, K] the B operand: D[N, T] column-
// major is Y[T, N] row-major. Descriptors and the chosen algorithm are cached per
// shape. Also the two device probes glm-bench reports its floors against.
#include "common.cuh"

#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#define LT_CAP 4096

struct lt_entry {
    int used;
    int dtype, scale_kind, N, K, T, ldy;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    int ok;      // 1: algorithm found; 0: cuBLASLt has none for this case
    int variant; // see entry_build
};

struct glm_cu_lt {
    cublasLtHandle_t h;
    void *ws;
    size_t ws_bytes;
    uint16_t *ybuf;     // BF16 outputs before widening
    size_t ybuf_bytes;
    lt_entry *tab;
    int n;
};

#define LT_CHECK(call)                                                                          \
    do {                                                                                        \
        cublasStatus_t s_ = (call);                                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
            return glm_err(GLM_CU_ERR_CUDA, "%s:%d: %s failed: cuBLAS status %d", __FILE__,     \
                           __LINE__, #call, (int)s_);                                           \
    } while (0)

extern "C" int glm_cu_lt_new(glm_cu_lt **out, void *workspace, size_t ws_bytes, void *ybuf, size_t ybuf_bytes) {
    glm_cu_lt *lt = (glm_cu_lt *)calloc(1, sizeof *lt);
    if (!lt) return glm_err(-4, "out of memory");
    lt->tab = (lt_entry *)calloc(LT_CAP, sizeof(lt_entry));
    if (!lt->tab) { free(lt); return glm_err(-4, "out of memory"); }
    cublasStatus_t s = cublasLtCreate(&lt->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(lt->tab); free(lt);
        return glm_err(GLM_CU_ERR_CUDA, "%s:%d: cublasLtCreate failed: status %d", __FILE__, __LINE__, (int)s);
    }
    lt->ws = workspace;
    lt->ws_bytes = ws_bytes;
    lt->ybuf = (uint16_t *)ybuf;
    lt->ybuf_bytes = ybuf_bytes;
    *out = lt;
    return 0;
}

static void entry_release(lt_entry *e) {
    if (e->desc) cublasLtMatmulDescDestroy(e->desc);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->ld) cublasLtMatrixLayoutDestroy(e->ld);
    memset(e, 0, sizeof *e);
}

extern "C" void glm_cu_lt_free(glm_cu_lt *lt) {
    if (!lt) return;
    for (int i = 0; i < LT_CAP; i++)
        if (lt->tab[i].used) entry_release(&lt->tab[i]);
    free(lt->tab);
    cublasLtDestroy(lt->h);
    free(lt);
}

extern "C" int glm_cu_lt_shape_ok(const glm_cu_mat *w) {
    if (w->K % 16 || w->N % 16) return 0;
    if (w->dtype == GLM_CU_FP8) {
        if (w->scale_kind == GLM_CU_SCALE_BLOCK) return w->K % 128 == 0 && w->N % 128 == 0;
        return w->scale_kind == GLM_CU_SCALE_CHANNEL;
    }
    return w->dtype == GLM_CU_BF16 || w->dtype == GLM_CU_F32;
}

static uint32_t key_hash(int dt, int sk, int N, int K, int T, int ldy) {
    uint32_t h = 2166136261u;
    const int v[6] = {dt, sk, N, K, T, ldy};
    for (int i = 0; i < 6; i++) { h ^= (uint32_t)v[i]; h *= 16777619u; }
    return h;
}

// Builds descriptors and asks the heuristic for an algorithm, trying in turn:
//   0: the native scale modes with a float32 output,
//   1: the native scale modes with a BF16 output widened afterwards,
//   2: per-channel only: unscaled FP8 with a float32 output, the outer product of
//      the weight and token scales applied by our own epilogue kernel.
// The scale pointers are set before the heuristic: it rejects the vector modes
// without them.
static int entry_build(glm_cu_lt *lt, lt_entry *e, const glm_cu_mat *w, int T, int ldy) {
    e->used = 1; e->dtype = w->dtype; e->scale_kind = w->scale_kind;
    e->N = w->N; e->K = w->K; e->T = T; e->ldy = ldy;
    e->variant = -1;
    const cudaDataType_t in_t = w->dtype == GLM_CU_FP8 ? CUDA_R_8F_E4M3 : w->dtype == GLM_CU_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    LT_CHECK(cublasLtMatrixLayoutCreate(&e->la, in_t, w->K, w->N, w->K));
    LT_CHECK(cublasLtMatrixLayoutCreate(&e->lb, in_t, w->K, T, w->K));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &lt->ws_bytes, sizeof lt->ws_bytes);
    const int fp8 = w->dtype == GLM_CU_FP8;
    const int nv = !fp8 ? 1 : w->scale_kind == GLM_CU_SCALE_CHANNEL ? 3 : 2;
    for (int v = 0; v < nv && s == CUBLAS_STATUS_SUCCESS; v++) {
        if (v == 1 && !lt->ybuf) continue;
        if (e->desc) { cublasLtMatmulDescDestroy(e->desc); e->desc = nullptr; }
        if (e->ld) { cublasLtMatrixLayoutDestroy(e->ld); e->ld = nullptr; }
        if ((s = cublasLtMatmulDescCreate(&e->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) != CUBLAS_STATUS_SUCCESS) break;
        const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
        cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT);
        cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN);
        if (fp8 && v < 2) {
            cublasLtMatmulMatrixScale_t ma = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, mb = ma;
            if (w->scale_kind == GLM_CU_SCALE_BLOCK) {
                ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
                mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
            }
            const void *dummy = lt->ws;  // any aligned device address until the call sets the real ones
            cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma);
            cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb);
            cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dummy, sizeof dummy);
            cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dummy, sizeof dummy);
        }
        s = v == 1 ? cublasLtMatrixLayoutCreate(&e->ld, CUDA_R_16BF, w->N, T, w->N)
                   : cublasLtMatrixLayoutCreate(&e->ld, CUDA_R_32F, w->N, T, ldy);
        if (s != CUBLAS_STATUS_SUCCESS) break;
        cublasLtMatmulHeuristicResult_t res;
        memset(&res, 0, sizeof res);
        int nres = 0;
        cublasStatus_t h = cublasLtMatmulAlgoGetHeuristic(lt->h, e->desc, e->la, e->lb, e->ld, e->ld, pref, 1, &res, &nres);
        if (h == CUBLAS_STATUS_SUCCESS && nres > 0) {
            e->ok = 1;
            e->algo = res.algo;
            e->variant = v;
            break;
        }
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS)
        return glm_err(GLM_CU_ERR_CUDA, "%s:%d: cuBLASLt descriptor setup failed: status %d", __FILE__, __LINE__, (int)s);
    return 0;
}

// y[t, n] *= sw[n] * sx[t]
__global__ void scale_outer_kernel(float *y, int ldy, int N, const float *sw, const float *sx) {
    const int t = blockIdx.y;
    const float st = sx[t];
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x)
        y[(size_t)t * ldy + n] *= sw[n] * st;
}

static lt_entry *entry_find(glm_cu_lt *lt, const glm_cu_mat *w, int T, int ldy) {
    const uint32_t h = key_hash(w->dtype, w->scale_kind, w->N, w->K, T, ldy);
    for (int i = 0; i < LT_CAP; i++) {
        lt_entry *c = &lt->tab[(h + i) & (LT_CAP - 1)];
        if (!c->used) return c;
        if (c->dtype == w->dtype && c->scale_kind == w->scale_kind && c->N == w->N && c->K == w->K && c->T == T &&
            c->ldy == ldy)
            return c;
    }
    for (int i = 0; i < LT_CAP; i++)  // table full: start over
        if (lt->tab[i].used) entry_release(&lt->tab[i]);
    return &lt->tab[h & (LT_CAP - 1)];
}

extern "C" int glm_cu_lt_variant(glm_cu_lt *lt, const glm_cu_mat *w, int T, int ldy) {
    lt_entry *e = entry_find(lt, w, T, ldy);
    return e->used && e->ok ? e->variant : -1;
}

extern "C" int glm_cu_lt_matmul(glm_cu_lt *lt, const glm_cu_mat *w, int expert, const void *xq,
                                const float *xs, int ld_s, int T, float *y, int ldy, cudaStream_t st) {
    (void)ld_s;
    if (T <= 0) return 0;
    if (!glm_cu_lt_shape_ok(w)) return glm_err(-7, "cuBLASLt: weight %d x %d (type %d) not supported", w->N, w->K, w->dtype);
    lt_entry *e = entry_find(lt, w, T, ldy);
    if (!e->used) {
        int rc = entry_build(lt, e, w, T, ldy);
        if (rc) { entry_release(e); return rc; }
    }
    if (!e->ok) return glm_err(-7, "cuBLASLt has no algorithm for %d x %d x %d (type %d, scales %d)", w->N, T, w->K, w->dtype, w->scale_kind);
    const uint8_t *A = (const uint8_t *)w->data + (long long)expert * w->stride;
    const float *as = w->dtype == GLM_CU_FP8 ? w->scale + (long long)expert * w->s_stride : nullptr;
    if (w->dtype == GLM_CU_FP8 && e->variant < 2) {
        if (((uintptr_t)as | (uintptr_t)xs | (uintptr_t)A | (uintptr_t)xq) & 15)  // cuBLASLt refuses these (status 15)
            return glm_err(-7, "cuBLASLt: operands or scale vectors of %d x %d not 16-byte aligned", w->N, w->K);
        LT_CHECK(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &as, sizeof as));
        LT_CHECK(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof xs));
    }
    const float alpha = 1.f, beta = 0.f;
    if (e->variant == 1) {
        if ((size_t)T * w->N * 2 > lt->ybuf_bytes)
            return glm_err(-7, "cuBLASLt: %d x %d output exceeds the %zu-byte BF16 buffer", T, w->N, lt->ybuf_bytes);
        LT_CHECK(cublasLtMatmul(lt->h, e->desc, &alpha, A, e->la, xq, e->lb, &beta, lt->ybuf, e->ld, lt->ybuf, e->ld,
                                &e->algo, lt->ws, lt->ws_bytes, st));
        return glm_cu_bf16_to_f32_2d(lt->ybuf, w->N, y, ldy, T, w->N, st);
    }
    LT_CHECK(cublasLtMatmul(lt->h, e->desc, &alpha, A, e->la, xq, e->lb, &beta, y, e->ld, y, e->ld, &e->algo,
                            lt->ws, lt->ws_bytes, st));
    if (e->variant == 2) {
        dim3 grid(w->N > 256 * 64 ? 64 : (w->N + 255) / 256, T);
        scale_outer_kernel<<<grid, 256, 0, st>>>(y, ldy, w->N, as, xs);
        CUDA_CHECK_LAUNCH();
    }
    return 0;
}

// ---- probes ----
extern "C" int glm_cu_probe_copy(size_t n, int reps, double *bytes_per_s) {
    void *a = nullptr, *b = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    int rc = 0;
    float ms = 0.f;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) {
        rc = glm_err(-4, "copy probe: cannot allocate 2 x %zu MiB on the GPU", n >> 20);
        goto done;
    }
    if (cudaMemset(a, 1, n) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        rc = glm_err(GLM_CU_ERR_CUDA, "%s:%d: copy probe setup failed", __FILE__, __LINE__);
        goto done;
    }
    for (int i = 0; i < 2; i++) cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e0, 0);
    for (int i = 0; i < reps; i++) cudaMemcpyAsync(i & 1 ? a : b, i & 1 ? b : a, n, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e1, 0);
    if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) {
        rc = glm_err(GLM_CU_ERR_CUDA, "%s:%d: copy probe failed: %s", __FILE__, __LINE__, cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    *bytes_per_s = 2.0 * (double)n * reps / (ms * 1e-3);
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return rc;
}

// The plain FP8 rate: e4m3 x e4m3 -> BF16, per-tensor scales of 1, n^3 on random data.
extern "C" int glm_cu_probe_fp8_gemm(int n, int reps, double *flop_per_s) {
    uint8_t *A = nullptr, *B = nullptr;
    uint16_t *D = nullptr;
    void *ws = nullptr;
    cublasLtHandle_t h = nullptr;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulHeuristicResult_t res;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    size_t ws_bytes = 64u << 20;
    const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    const float alpha = 1.f, beta = 0.f;
    int rc = 0, nres = 0;
    float ms = 0.f;
    memset(&res, 0, sizeof res);
    if (cudaMalloc((void **)&A, (size_t)n * n) != cudaSuccess || cudaMalloc((void **)&B, (size_t)n * n) != cudaSuccess ||
        cudaMalloc((void **)&D, (size_t)n * n * 2) != cudaSuccess || cudaMalloc(&ws, ws_bytes) != cudaSuccess) {
        rc = glm_err(-4, "FP8 GEMM probe: cannot allocate %d^3 operands on the GPU", n);
        goto done;
    }
    if ((rc = glm_cu_fill_random(A, GLM_CU_FP8, (size_t)n * n, 1.f, 11, 0)) ||
        (rc = glm_cu_fill_random(B, GLM_CU_FP8, (size_t)n * n, 1.f, 12, 0)))
        goto done;
    if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS || cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT) ||
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN) ||
        cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, n, n, n) || cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, n, n, n) ||
        cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, n, n) || cublasLtMatmulPreferenceCreate(&pref) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes) ||
        cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 1, &res, &nres) || nres == 0) {
        rc = glm_err(GLM_CU_ERR_CUDA, "%s:%d: FP8 GEMM probe: cuBLASLt setup failed", __FILE__, __LINE__);
        goto done;
    }
    for (int i = 0; i < reps + 2; i++) {
        if (i == 2) cudaEventCreate(&e0), cudaEventCreate(&e1), cudaEventRecord(e0, 0);
        if (cublasLtMatmul(h, desc, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &res.algo, ws, ws_bytes, 0)) {
            rc = glm_err(GLM_CU_ERR_CUDA, "%s:%d: FP8 GEMM probe: cublasLtMatmul failed", __FILE__, __LINE__);
            goto done;
        }
    }
    cudaEventRecord(e1, 0);
    if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) {
        rc = glm_err(GLM_CU_ERR_CUDA, "%s:%d: FP8 GEMM probe failed: %s", __FILE__, __LINE__, cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    *flop_per_s = 2.0 * n * (double)n * n * reps / (ms * 1e-3);
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (h) cublasLtDestroy(h);
    cudaFree(A); cudaFree(B); cudaFree(D); cudaFree(ws);
    return rc;
}
