// elementwise.cu - the row-wise and element-wise kernels of a forward pass:
// embedding gather, RMSNorm, residual adds, SwiGLU, dynamic FP8 quantisation of
// activations for the tensor-core GEMMs, and random fills for synthetic weights.
#include "common.cuh"

__global__ void embed_kernel(const void *emb, int dt, const int32_t *tokens, int D, int n_vocab,
                             float *x) {
    const int t = blockIdx.x;
    int tok = tokens[t];
    if (tok < 0 || tok >= n_vocab) tok = 0;  // the context validates ids; never read out of bounds
    const size_t base = (size_t)tok * D;
    float *xr = x + (size_t)t * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        xr[i] = dt == GLM_CU_BF16 ? bf16_to_f(((const uint16_t *)emb)[base + i])
                                  : ((const float *)emb)[base + i];
}

extern "C" int glm_cu_embed(const void *emb, int emb_dtype, const int32_t *tokens, int T, int D,
                            int n_vocab, float *x, cudaStream_t st) {
    if (T <= 0) return 0;
    embed_kernel<<<T, 256, 0, st>>>(emb, emb_dtype, tokens, D, n_vocab, x);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// Rows of D = 4 * n4 floats held in registers, NORM_V float4s a thread: every load of
// the row is in flight at once (a loop over the row waits on each in turn, which
// costs a decode step microseconds a norm). ADD: x += y first, written back.
#define NORM_V 4

template <bool ADD>
__global__ void norm_vec_kernel(float *__restrict__ x, const int32_t *__restrict__ row_idx,
                                const float *__restrict__ y, const float *__restrict__ w, float *__restrict__ out,
                                int D, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x, n4 = D / 4;
    const int src = row_idx ? row_idx[r] : r;
    float4 *xr = (float4 *)(x + (size_t)src * D);
    const float4 *yr = ADD ? (const float4 *)(y + (size_t)r * D) : nullptr;
    float4 v[NORM_V], wv[NORM_V];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_V; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        wv[j] = v[j];
        if (i < n4) {
            v[j] = xr[i];
            wv[j] = ((const float4 *)w)[i];
            if (ADD) {
                const float4 b = yr[i];
                v[j].x += b.x; v[j].y += b.y; v[j].z += b.z; v[j].w += b.w;
            }
            ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
        }
    }
    ss = block_sum(ss, red);
    const float inv = rsqrtf(ss / D + eps);
    float4 *o = (float4 *)(out + (size_t)r * D);
#pragma unroll
    for (int j = 0; j < NORM_V; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < n4) {
            if (ADD) xr[i] = v[j];
            o[i] = make_float4(v[j].x * inv * wv[j].x, v[j].y * inv * wv[j].y, v[j].z * inv * wv[j].z,
                               v[j].w * inv * wv[j].w);
        }
    }
}

// Threads for the register path, or 0 when the row does not fit it (or is not 16-byte aligned).
static int norm_vec_threads(int D, const void *a, const void *b, const void *c, const void *d) {
    if (D % 4 || (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15)) return 0;
    const int n4 = D / 4;
    for (int th = 64; th <= 1024; th *= 2)
        if (n4 <= th * NORM_V) return th;
    return 0;
}

// The same for rows the register path does not take (not whole float4s, not 16-byte
// aligned, or wider than 1024 * NORM_V float4s): a loop over the row.
template <bool ADD>
__global__ void norm_scalar_kernel(float *x, const int32_t *row_idx, const float *y, const float *w, float *out,
                                   int D, float eps) {
    __shared__ float red[32];
    const int r = blockIdx.x;
    float *xr = x + (size_t)(row_idx ? row_idx[r] : r) * D;
    const float *yr = ADD ? y + (size_t)r * D : nullptr;
    float ss = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = xr[i];
        if (ADD) { v += yr[i]; xr[i] = v; }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = rsqrtf(ss / D + eps);
    float *o = out + (size_t)r * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

// out[r] = rmsnorm(x[row r] (+= y[r] when ADD)) * w, one block a row.
template <bool ADD>
static int norm_launch(float *x, const int32_t *row_idx, const float *y, const float *w, float *out, int R, int D,
                       float eps, cudaStream_t st) {
    if (R <= 0) return 0;
    const int th = norm_vec_threads(D, x, y, w, out);
    if (th) norm_vec_kernel<ADD><<<R, th, 0, st>>>(x, row_idx, y, w, out, D, eps);
    else norm_scalar_kernel<ADD><<<R, D >= 1024 ? 512 : 256, 0, st>>>(x, row_idx, y, w, out, D, eps);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_rmsnorm(const float *x, const int32_t *row_idx, const float *w, float *out,
                              int R, int D, float eps, cudaStream_t st) {
    return norm_launch<false>((float *)x, row_idx, nullptr, w, out, R, D, eps, st);  // x is only read
}

extern "C" int glm_cu_add_rmsnorm(float *x, const float *y, const float *w, float *out, int R, int D, float eps,
                                  cudaStream_t st) {
    return norm_launch<true>(x, nullptr, y, w, out, R, D, eps, st);
}

__global__ void add_kernel(float *x, const float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    if ((n & 3) == 0 && (((uintptr_t)x | (uintptr_t)y) & 15) == 0) {
        float4 *x4 = (float4 *)x;
        const float4 *y4 = (const float4 *)y;
        for (; i < n / 4; i += stride) {
            float4 a = x4[i], b = y4[i];
            a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
            x4[i] = a;
        }
    } else {
        for (; i < n; i += stride) x[i] += y[i];
    }
}

extern "C" int glm_cu_add(float *x, const float *y, size_t n, cudaStream_t st) {
    if (!n) return 0;
    add_kernel<<<glm_cu_blocks(n / 4 + 1, 256) > 2048 ? 2048 : glm_cu_blocks(n / 4 + 1, 256), 256, 0, st>>>(x, y, n);
    CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void add_bias_kernel(float *y, const float *bias, int N, int ldy) {
    const int t = blockIdx.y;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x)
        y[(size_t)t * ldy + n] += bias[n];
}

extern "C" int glm_cu_add_bias(float *y, const float *bias, int T, int N, int ldy, cudaStream_t st) {
    if (T <= 0 || N <= 0) return 0;
    dim3 grid(glm_cu_blocks(N, 256) > 64 ? 64 : glm_cu_blocks(N, 256), T);
    add_bias_kernel<<<grid, 256, 0, st>>>(y, bias, N, ldy);
    CUDA_CHECK_LAUNCH();
    return 0;
}


__global__ void swiglu_kernel(const float *gu, int ld, float *y, int ldy, int N) {
    const int t = blockIdx.y;
    const float *g = gu + (size_t)t * ld, *u = g + N;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x)
        y[(size_t)t * ldy + n] = silu(g[n]) * u[n];
}

extern "C" int glm_cu_swiglu(const float *gu, int ld, float *y, int ldy, int T, int N, cudaStream_t st) {
    if (T <= 0 || N <= 0) return 0;
    dim3 grid(glm_cu_blocks(N, 256) > 64 ? 64 : glm_cu_blocks(N, 256), T);
    swiglu_kernel<<<grid, 256, 0, st>>>(gu, ld, y, ldy, N);
    CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void fill_random_kernel(void *data, int dt, size_t n, float amp, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float u = 2.f * rand01(seed, i) - 1.f;
        if (dt == GLM_CU_FP8) ((uint8_t *)data)[i] = f_to_fp8(u * 448.f);
        else if (dt == GLM_CU_BF16) ((uint16_t *)data)[i] = f_to_bf16(u * amp);
        else ((float *)data)[i] = u * amp;
    }
}

extern "C" int glm_cu_fill_random(void *data, int dtype, size_t n, float amp, uint64_t seed, cudaStream_t st) {
    if (!n) return 0;
    fill_random_kernel<<<4096, 256, 0, st>>>(data, dtype, n, amp, seed);
    CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void fill_uniform_kernel(float *data, size_t n, float lo, float hi, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        data[i] = lo + (hi - lo) * rand01(seed, i);
}

extern "C" int glm_cu_fill_uniform(float *data, size_t n, float lo, float hi, uint64_t seed, cudaStream_t st) {
    if (!n) return 0;
    fill_uniform_kernel<<<glm_cu_blocks(n, 256) > 4096 ? 4096 : glm_cu_blocks(n, 256), 256, 0, st>>>(data, n, lo, hi, seed);
    CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void to_f32_kernel(const void *in, int dt, float *out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint16_t h = ((const uint16_t *)in)[i];
        out[i] = dt == GLM_CU_BF16 ? bf16_to_f(h) : __half2float(*reinterpret_cast<const __half *>(&h));
    }
}

extern "C" int glm_cu_to_f32(const void *in, int dtype, float *out, size_t n, cudaStream_t st) {
    if (!n) return 0;
    to_f32_kernel<<<glm_cu_blocks(n, 256) > 4096 ? 4096 : glm_cu_blocks(n, 256), 256, 0, st>>>(in, dtype, out, n);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// One block of 128 threads per token row. Channel mode: one scale for the row.
// Block mode: one scale per 128 columns, each thread owning one column of a block.
__global__ void quant_fp8_kernel(const float *x, int ldx, const int32_t *row_idx, int T, int K,
                                 int block128, uint8_t *q, float *s, int ld_s) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    const int src = row_idx ? row_idx[t] : t;
    const float *xr = x + (size_t)src * ldx;
    uint8_t *qr = q + (size_t)t * K;
    if (!block128) {
        float amax = 0.f;
        for (int i = threadIdx.x; i < K; i += blockDim.x) amax = fmaxf(amax, fabsf(xr[i]));
        amax = block_max(amax, red);
        const float sc = amax > 0.f ? amax / 448.f : 1.f;
        const float inv = 1.f / sc;
        for (int i = threadIdx.x; i < K; i += blockDim.x) qr[i] = f_to_fp8(xr[i] * inv);
        if (threadIdx.x == 0) s[t] = sc;
    } else {
        const int nkb = (K + 127) / 128;
        for (int kb = 0; kb < nkb; kb++) {
            const int i = kb * 128 + threadIdx.x;
            const float v = i < K ? xr[i] : 0.f;
            const float amax = block_max(fabsf(v), red);
            const float sc = amax > 0.f ? amax / 448.f : 1.f;
            if (i < K) qr[i] = f_to_fp8(v / sc);
            if (threadIdx.x == 0) s[block128 == 2 ? (size_t)t * nkb + kb : (size_t)kb * ld_s + t] = sc;
        }
    }
}

__device__ __forceinline__ uint32_t fp8x4(float a, float b, float c, float d) {
    return (uint32_t)f_to_fp8(a) | (uint32_t)f_to_fp8(b) << 8 | (uint32_t)f_to_fp8(c) << 16 | (uint32_t)f_to_fp8(d) << 24;
}

// Four consecutive elements i*4 .. i*4+3 of a float32 or BF16 row, as float4.
__device__ __forceinline__ float4 ld4(const float *r, int i) { return ((const float4 *)r)[i]; }
__device__ __forceinline__ float4 ld4(const uint16_t *r, int i) {
    const uint2 v = ((const uint2 *)r)[i];
    return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                       __uint_as_float(v.y & 0xffff0000u));
}

// The same function for K % 128 == 0 and 16-byte aligned rows, 16-byte loads: 256
// threads a row; in the block modes each warp takes whole 128-column blocks (no block
// barrier). GLU: the row is silu(gu[t, n]) * gu[t, N + n] (SwiGLU fused in front).
template <int GLU, typename TI>
__global__ void __launch_bounds__(256) quant_fp8_vec_kernel(const TI *x, int ldx, const int32_t *row_idx, int K,
                                                            int block128, uint8_t *q, float *s, int ld_s) {
    __shared__ float red[32];
    const int t = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const TI *xr = x + (size_t)(row_idx ? row_idx[t] : t) * ldx;
    uint32_t *q4 = (uint32_t *)(q + (size_t)t * K);
    auto get = [&](int i) {
        float4 v = ld4(xr, i);
        if (GLU) {
            const float4 u = ld4(xr + K, i);
            v = make_float4(silu(v.x) * u.x, silu(v.y) * u.y, silu(v.z) * u.z, silu(v.w) * u.w);
        }
        return v;
    };
    const int nkb = K >> 7;
    if (block128) {
        for (int kb = w; kb < nkb; kb += 8) {
            const float4 v = get(kb * 32 + lane);
            const float amax = warp_max(fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
            const float sc = amax > 0.f ? amax / 448.f : 1.f;
            q4[kb * 32 + lane] = fp8x4(v.x / sc, v.y / sc, v.z / sc, v.w / sc);
            if (lane == 0) s[block128 == 2 ? (size_t)t * nkb + kb : (size_t)kb * ld_s + t] = sc;
        }
        return;
    }
    float amax = 0.f;
    for (int i = threadIdx.x; i < K / 4; i += 256) {
        const float4 v = get(i);
        amax = fmaxf(amax, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
    }
    amax = block_max(amax, red);
    const float sc = amax > 0.f ? amax / 448.f : 1.f, inv = 1.f / sc;
    for (int i = threadIdx.x; i < K / 4; i += 256) {
        const float4 v = get(i);
        q4[i] = fp8x4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
    }
    if (threadIdx.x == 0) s[t] = sc;
}

static bool vec_ok(const float *x, int ldx, int K) { return K % 128 == 0 && ldx % 4 == 0 && ((uintptr_t)x & 15) == 0; }

extern "C" int glm_cu_quant_fp8(const float *x, int ldx, const int32_t *row_idx, int T, int K, int block128,
                                uint8_t *q, float *s, int ld_s, cudaStream_t st) {
    if (T <= 0) return 0;
    if (vec_ok(x, ldx, K)) quant_fp8_vec_kernel<0, float><<<T, 256, 0, st>>>(x, ldx, row_idx, K, block128, q, s, ld_s);
    else quant_fp8_kernel<<<T, 128, 0, st>>>(x, ldx, row_idx, T, K, block128, q, s, ld_s);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_swiglu_quant_fp8(const uint16_t *gu, int ld, int T, int N, int block128, uint8_t *q, float *s,
                                       int ld_s, cudaStream_t st) {
    if (T <= 0) return 0;
    if (N % 128 || ld % 4 || ((uintptr_t)gu & 7))
        return glm_err(-7, "swiglu+quant: width %d (row stride %d) not a multiple of 128", N, ld);
    quant_fp8_vec_kernel<1, uint16_t><<<T, 256, 0, st>>>(gu, ld, NULL, N, block128, q, s, ld_s);
    CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void to_bf16_kernel(const float *x, int ldx, const int32_t *row_idx, int K, uint16_t *q) {
    const int t = blockIdx.x;
    const int src = row_idx ? row_idx[t] : t;
    for (int i = threadIdx.x; i < K; i += blockDim.x)
        q[(size_t)t * K + i] = f_to_bf16(x[(size_t)src * ldx + i]);
}

extern "C" int glm_cu_to_bf16(const float *x, int ldx, const int32_t *row_idx, int T, int K, uint16_t *q,
                              cudaStream_t st) {
    if (T <= 0) return 0;
    to_bf16_kernel<<<T, 256, 0, st>>>(x, ldx, row_idx, K, q);
    CUDA_CHECK_LAUNCH();
    return 0;
}

__global__ void bf16_to_f32_2d_kernel(const uint16_t *src, int lds, float *dst, int ldd, int N) {
    const int t = blockIdx.y;
    const uint16_t *s = src + (size_t)t * lds;
    float *d = dst + (size_t)t * ldd;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) d[n] = bf16_to_f(s[n]);
}

extern "C" int glm_cu_bf16_to_f32_2d(const uint16_t *src, int lds, float *dst, int ldd, int T, int N, cudaStream_t st) {
    if (T <= 0 || N <= 0) return 0;
    dim3 grid(glm_cu_blocks(N, 256) > 128 ? 128 : glm_cu_blocks(N, 256), T);
    bf16_to_f32_2d_kernel<<<grid, 256, 0, st>>>(src, lds, dst, ldd, N);
    CUDA_CHECK_LAUNCH();
    return 0;
}
