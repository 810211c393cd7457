// gemv.cu - weight-streaming products for decode: few tokens against a large
// weight, each weight byte read once per chunk of up to 8 tokens with 16-byte
// loads, dequantised in registers (FP8 per-channel or 128x128 block scales, BF16,
// F32) and accumulated in float32. The grouped form runs one MoE expert per block
// row of the grid over the tokens routed to it, so each touched expert is read
// once per step. Also the tiled float32 fallback GEMM for odd shapes.
#include "common.cuh"

#include <string.h>

#define GEMV_WARPS 4

#define GEMV_MULTI 4

struct gemv_args {
    glm_cu_mat w, up;
    int glu;
    const float *x;
    int ldx;
    const float *bias;
    float *y;
    int ldy;
    int T;
    const int32_t *active, *n_active, *off, *rows;
    int grouped, x_gather;
    int ksplit;                       // 1: each warp owns its rows; GEMV_WARPS: the block's warps split K
    int n_multi;                      // > 0: blockIdx.x spans several weights sharing x
    glm_cu_mat mw[GEMV_MULTI];
    const float *mbias[GEMV_MULTI];
    float *my[GEMV_MULTI];
    int mldy[GEMV_MULTI];
    int mblock[GEMV_MULTI];           // first row block of each weight
    int n_rb;                         // row blocks in all
};

// 16 bytes that are read once: skip L1.
__device__ __forceinline__ uint4 ld_stream(const void *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// Elements per 16-byte chunk.
template <int WT> struct wt_info { static constexpr int E = WT == GLM_CU_FP8 ? 16 : WT == GLM_CU_BF16 ? 8 : 4; };

template <int WT>
__device__ __forceinline__ void unpack16(const uint4 v, float *f) {
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
    if (WT == GLM_CU_FP8) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 a = fp8x2_to_f2((uint16_t)(u[i] & 0xffff));
            float2 b = fp8x2_to_f2((uint16_t)(u[i] >> 16));
            f[4 * i + 0] = a.x; f[4 * i + 1] = a.y; f[4 * i + 2] = b.x; f[4 * i + 3] = b.y;
        }
    } else if (WT == GLM_CU_BF16) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i + 0] = __uint_as_float(u[i] << 16);
            f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) f[i] = __uint_as_float(u[i]);
    }
}

__device__ __forceinline__ float silu_f(float g) { return g / (1.f + __expf(-g)); }

// One warp computes two weight rows (two outputs, or gate+up of one glu output)
// against up to TC tokens at a time.
template <int WT, int SK, int TC>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(const gemv_args a) {
    constexpr int E = wt_info<WT>::E;
    constexpr int U = TC <= 2 ? 2 : 1;  // chunks in flight per row per lane
    __shared__ float red[GEMV_WARPS][2][TC];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ks = a.ksplit;
    int e = 0, row0 = 0, cnt = a.T;
    if (a.grouped && !expert_group(a.active, a.n_active, a.off, &e, &row0, &cnt)) return;
    // persistent: the block walks row blocks (of every weight, for multi) with a grid stride
    for (int grb = blockIdx.x; grb < a.n_rb; grb += gridDim.x) {
    glm_cu_mat W = a.w;
    const float *bias = a.bias;
    float *Y = a.y;
    int ldy = a.ldy, bx = grb;
    if (a.n_multi) {  // pick the weight this row block belongs to (compile-time indices only)
        int i = 0;
#pragma unroll
        for (int j = 1; j < GEMV_MULTI; j++) if (j < a.n_multi && bx >= a.mblock[j]) i = j;
#pragma unroll
        for (int j = 0; j < GEMV_MULTI; j++)
            if (j == i) { W = a.mw[j]; bias = a.mbias[j]; Y = a.my[j]; ldy = a.mldy[j]; bx -= a.mblock[j]; }
    }
    const int N = W.N, K = W.K;
    const int nch = K / E;
    const int wslot = ks > 1 ? 0 : warp;  // this warp's row slot in the block
    int n_out0, n_outs;  // first output column of this warp, outputs (1 or 2)
    const uint8_t *r0p, *r1p;
    const float *s0p = nullptr, *s1p = nullptr;  // scale rows (channel: element; block: row of grid)
    const uint8_t *wbase = (const uint8_t *)W.data + (long long)e * W.stride;
    const float *sbase = W.scale ? W.scale + (long long)e * W.s_stride : nullptr;
    const size_t rowbytes = (size_t)K * (WT == GLM_CU_FP8 ? 1 : WT == GLM_CU_BF16 ? 2 : 4);
    if (a.glu) {
        n_out0 = bx * (ks > 1 ? 1 : GEMV_WARPS) + wslot;
        if (n_out0 >= N) continue;
        n_outs = 1;
        const uint8_t *ubase = (const uint8_t *)a.up.data + (long long)e * a.up.stride;
        const float *usbase = a.up.scale ? a.up.scale + (long long)e * a.up.s_stride : nullptr;
        r0p = wbase + n_out0 * rowbytes;
        r1p = ubase + n_out0 * rowbytes;
        if (SK == GLM_CU_SCALE_CHANNEL) { s0p = sbase + n_out0; s1p = usbase + n_out0; }
        if (SK == GLM_CU_SCALE_BLOCK) { s0p = sbase + (n_out0 / 128) * W.s_ld; s1p = usbase + (n_out0 / 128) * a.up.s_ld; }
    } else {
        n_out0 = (bx * (ks > 1 ? 1 : GEMV_WARPS) + wslot) * 2;
        if (n_out0 >= N) continue;
        n_outs = n_out0 + 1 < N ? 2 : 1;
        const int n1 = n_outs == 2 ? n_out0 + 1 : n_out0;
        r0p = wbase + n_out0 * rowbytes;
        r1p = wbase + n1 * rowbytes;
        if (SK == GLM_CU_SCALE_CHANNEL) { s0p = sbase + n_out0; s1p = sbase + n1; }
        if (SK == GLM_CU_SCALE_BLOCK) { s0p = sbase + (n_out0 / 128) * W.s_ld; s1p = sbase + (n1 / 128) * W.s_ld; }
    }
    const int c_first = lane + (ks > 1 ? warp * 32 * U : 0), c_step = 32 * U * ks;

    for (int t0 = 0; t0 < cnt; t0 += TC) {
        const float *xr[TC];
#pragma unroll
        for (int t = 0; t < TC; t++) {
            const int tt = t0 + t < cnt ? t0 + t : cnt - 1;
            int src = a.grouped ? (a.x_gather ? a.rows[row0 + tt] : row0 + tt) : tt;
            xr[t] = a.x + (size_t)src * a.ldx;
        }
        float acc0[TC], acc1[TC];
#pragma unroll
        for (int t = 0; t < TC; t++) { acc0[t] = 0.f; acc1[t] = 0.f; }

        for (int c = c_first; c < nch; c += c_step) {
            uint4 w0[U], w1[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int cc = c + u * 32;
                if (cc < nch) {
                    w0[u] = ld_stream(r0p + (size_t)cc * 16);
                    w1[u] = ld_stream(r1p + (size_t)cc * 16);
                } else {
                    w0[u] = make_uint4(0, 0, 0, 0);
                    w1[u] = make_uint4(0, 0, 0, 0);
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int cc = c + u * 32;
                if (cc >= nch) break;
                float f0[E], f1[E];
                unpack16<WT>(w0[u], f0);
                unpack16<WT>(w1[u], f1);
                float bs0 = 1.f, bs1 = 1.f;
                if (SK == GLM_CU_SCALE_BLOCK) {
                    const int kb = (cc * E) >> 7;
                    bs0 = __ldg(s0p + kb);
                    bs1 = __ldg(s1p + kb);
                }
#pragma unroll
                for (int t = 0; t < TC; t++) {
                    const float4 *xp = (const float4 *)(xr[t] + (size_t)cc * E);
                    float d0 = 0.f, d1 = 0.f;
#pragma unroll
                    for (int i = 0; i < E / 4; i++) {
                        const float4 xv = __ldg(xp + i);
                        d0 = fmaf(f0[4 * i + 0], xv.x, d0); d1 = fmaf(f1[4 * i + 0], xv.x, d1);
                        d0 = fmaf(f0[4 * i + 1], xv.y, d0); d1 = fmaf(f1[4 * i + 1], xv.y, d1);
                        d0 = fmaf(f0[4 * i + 2], xv.z, d0); d1 = fmaf(f1[4 * i + 2], xv.z, d1);
                        d0 = fmaf(f0[4 * i + 3], xv.w, d0); d1 = fmaf(f1[4 * i + 3], xv.w, d1);
                    }
                    if (SK == GLM_CU_SCALE_BLOCK) { acc0[t] = fmaf(d0, bs0, acc0[t]); acc1[t] = fmaf(d1, bs1, acc1[t]); }
                    else { acc0[t] += d0; acc1[t] += d1; }
                }
            }
        }
#pragma unroll
        for (int t = 0; t < TC; t++) { acc0[t] = warp_sum(acc0[t]); acc1[t] = warp_sum(acc1[t]); }
        if (ks > 1) {  // the block's warps hold partial sums of the same rows
            if (lane == 0) {
#pragma unroll
                for (int t = 0; t < TC; t++) { red[warp][0][t] = acc0[t]; red[warp][1][t] = acc1[t]; }
            }
            __syncthreads();
#pragma unroll
            for (int t = 0; t < TC; t++) {
                float s0 = 0.f, s1 = 0.f;
#pragma unroll
                for (int w2 = 0; w2 < GEMV_WARPS; w2++) { s0 += red[w2][0][t]; s1 += red[w2][1][t]; }
                acc0[t] = s0; acc1[t] = s1;
            }
            __syncthreads();
            if (warp != 0) continue;
        }
        float cs0 = 1.f, cs1 = 1.f;
        if (SK == GLM_CU_SCALE_CHANNEL) { cs0 = __ldg(s0p); cs1 = __ldg(s1p); }
#pragma unroll
        for (int t = 0; t < TC; t++) {
            if (t0 + t >= cnt) break;
            const int orow = a.grouped ? row0 + t0 + t : t0 + t;
            float *yr = Y + (size_t)orow * ldy;
            if (a.glu) {
                if (lane == t) yr[n_out0] = silu_f(acc0[t] * cs0) * (acc1[t] * cs1);
            } else {
                if (lane == 2 * t) yr[n_out0] = acc0[t] * cs0 + (bias ? bias[n_out0] : 0.f);
                if (lane == 2 * t + 1 && n_outs == 2) yr[n_out0 + 1] = acc1[t] * cs1 + (bias ? bias[n_out0 + 1] : 0.f);
            }
        }
    }
    }  // row blocks
}

static int n_sm_cached;
static int sm_count(void) {
    if (!n_sm_cached) {
        int dev = 0, n = 0;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
            n_sm_cached = n;
        else
            n_sm_cached = 100;
    }
    return n_sm_cached;
}

// Launches one instance. The kernel walks row blocks with a grid stride; one block a
// row block measured best on the H100 (run 3 of docs/PERF.md: a grid capped at the
// resident blocks was 4% slower at batch 1), so the grid covers them all unless it
// would exceed the hardware limit.
template <int WT, int SK, int TC>
static void launch_one(const gemv_args &a, unsigned gy, cudaStream_t st) {
    const unsigned gx = (unsigned)(a.n_rb < 0x7fffffff ? a.n_rb : 0x7fffffff);
    gemv_kernel<WT, SK, TC><<<dim3(gx, gy), GEMV_WARPS * 32, 0, st>>>(a);
}

template <int WT, int SK>
static void launch_gemv_tc(const gemv_args &a, int tc, unsigned gy, cudaStream_t st) {
    if (tc <= 1) launch_one<WT, SK, 1>(a, gy, st);
    else if (tc <= 2) launch_one<WT, SK, 2>(a, gy, st);
    else if (tc <= 4) launch_one<WT, SK, 4>(a, gy, st);
    else launch_one<WT, SK, 8>(a, gy, st);
}

static int mat_vec_ok(const glm_cu_mat *w) {
    const int E = w->dtype == GLM_CU_FP8 ? 16 : w->dtype == GLM_CU_BF16 ? 8 : 4;
    const int esz = w->dtype == GLM_CU_FP8 ? 1 : w->dtype == GLM_CU_BF16 ? 2 : 4;
    return w->K % E == 0 && ((uintptr_t)w->data & 15) == 0 && (w->stride % 16) == 0 && (size_t)w->K * esz % 16 == 0;
}

extern "C" int glm_cu_gemv(const glm_cu_mat *w, const glm_cu_mat *up, const float *x, int ldx,
                           const float *bias, float *y, int ldy, int T, const glm_cu_groups *g,
                           int x_gather, cudaStream_t st) {
    if (T <= 0 || w->N <= 0) return 0;
    const int vec_ok = mat_vec_ok(w) && (!up || mat_vec_ok(up)) && (ldx % 4) == 0 && ((uintptr_t)x & 15) == 0;
    if (!vec_ok) {
        if (up) return glm_err(-7, "gemv: glu weight of %d x %d is not 16-byte aligned", w->N, w->K);
        return glm_cu_gemm_tiled(w, x, ldx, bias, y, ldy, T, g, x_gather, st);
    }
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.w = *w;
    if (up) a.up = *up;
    a.glu = up != nullptr;
    a.x = x; a.ldx = ldx; a.bias = bias; a.y = y; a.ldy = ldy; a.T = T;
    int tc = T;
    if (g) {
        a.grouped = 1; a.x_gather = x_gather;
        a.active = g->active; a.n_active = g->n_active; a.off = g->off; a.rows = g->rows;
        tc = g->max_count;
    }
    int outs_per_block = a.glu ? GEMV_WARPS : GEMV_WARPS * 2;
    a.ksplit = 1;
    if (!g && (w->N + outs_per_block - 1) / outs_per_block < sm_count()) {  // few rows: split K instead
        a.ksplit = GEMV_WARPS;
        outs_per_block /= GEMV_WARPS;
    }
    a.n_rb = (w->N + outs_per_block - 1) / outs_per_block;
    const unsigned grid = g ? (unsigned)g->max_groups : 1u;
    if (g && g->max_groups <= 0) return 0;
    if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_CHANNEL) launch_gemv_tc<GLM_CU_FP8, GLM_CU_SCALE_CHANNEL>(a, tc, grid, st);
    else if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_BLOCK) launch_gemv_tc<GLM_CU_FP8, GLM_CU_SCALE_BLOCK>(a, tc, grid, st);
    else if (w->dtype == GLM_CU_BF16) launch_gemv_tc<GLM_CU_BF16, GLM_CU_SCALE_NONE>(a, tc, grid, st);
    else if (w->dtype == GLM_CU_F32) launch_gemv_tc<GLM_CU_F32, GLM_CU_SCALE_NONE>(a, tc, grid, st);
    else return glm_err(-7, "gemv: weight type %d with scale kind %d is not supported", w->dtype, w->scale_kind);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_gemv_multi(const glm_cu_mat *ws, const float *const *bias, float *const *ys, const int *ldy,
                                 int n, const float *x, int ldx, int T, cudaStream_t st) {
    if (n < 1 || n > GEMV_MULTI) return glm_err(-1, "gemv_multi: %d weights (1..%d)", n, GEMV_MULTI);
    if (T <= 0) return 0;
    for (int i = 0; i < n; i++)
        if (ws[i].dtype != ws[0].dtype || ws[i].scale_kind != ws[0].scale_kind || ws[i].K != ws[0].K || !mat_vec_ok(&ws[i]))
            return glm_err(-7, "gemv_multi: weights differ in type or width, or are not 16-byte aligned");
    if ((ldx % 4) || ((uintptr_t)x & 15)) return glm_err(-7, "gemv_multi: activations not 16-byte aligned");
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.w = ws[0];
    a.x = x; a.ldx = ldx; a.T = T;
    a.n_multi = n;
    int per = GEMV_WARPS * 2, total = 0;
    for (int i = 0; i < n; i++) total += (ws[i].N + per - 1) / per;
    a.ksplit = 1;
    if (total < sm_count()) { a.ksplit = GEMV_WARPS; per = 2; }
    total = 0;
    for (int i = 0; i < n; i++) {
        a.mw[i] = ws[i]; a.mbias[i] = bias ? bias[i] : nullptr; a.my[i] = ys[i]; a.mldy[i] = ldy[i];
        a.mblock[i] = total;
        total += (ws[i].N + per - 1) / per;
    }
    a.n_rb = total;
    const unsigned grid = 1;
    const glm_cu_mat *w = &ws[0];
    if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_CHANNEL) launch_gemv_tc<GLM_CU_FP8, GLM_CU_SCALE_CHANNEL>(a, T, grid, st);
    else if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_BLOCK) launch_gemv_tc<GLM_CU_FP8, GLM_CU_SCALE_BLOCK>(a, T, grid, st);
    else if (w->dtype == GLM_CU_BF16) launch_gemv_tc<GLM_CU_BF16, GLM_CU_SCALE_NONE>(a, T, grid, st);
    else if (w->dtype == GLM_CU_F32) launch_gemv_tc<GLM_CU_F32, GLM_CU_SCALE_NONE>(a, T, grid, st);
    else return glm_err(-7, "gemv: weight type %d with scale kind %d is not supported", w->dtype, w->scale_kind);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// ---- tiled float32 fallback ----
#define TB_M 64   // tokens per tile
#define TB_N 64   // weight rows per tile
#define TB_K 32

template <int WT, int SK>
__global__ void __launch_bounds__(256) gemm_tiled_kernel(const gemv_args a) {
    __shared__ float xs[TB_K][TB_M + 4];
    __shared__ float ws[TB_K][TB_N + 4];
    const int N = a.w.N, K = a.w.K;
    int e = 0, row0 = 0, cnt = a.T;
    if (a.grouped) {
        if ((int)blockIdx.z >= *a.n_active) return;
        e = a.active[blockIdx.z];
        row0 = a.off[e];
        cnt = a.off[e + 1] - row0;
    }
    const int m0 = blockIdx.y * TB_M, n0 = blockIdx.x * TB_N;
    if (m0 >= cnt) return;
    const void *wd = (const uint8_t *)a.w.data + (long long)e * a.w.stride;
    const float *sc = a.w.scale ? a.w.scale + (long long)e * a.w.s_stride : nullptr;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TB_K) {
        for (int i = threadIdx.x; i < TB_K * TB_M; i += 256) {
            const int kk = i % TB_K, m = i / TB_K;
            float v = 0.f;
            if (m0 + m < cnt && k0 + kk < K) {
                const int tt = m0 + m;
                const int src = a.grouped ? (a.x_gather ? a.rows[row0 + tt] : row0 + tt) : tt;
                v = a.x[(size_t)src * a.ldx + k0 + kk];
            }
            xs[kk][m] = v;
        }
        for (int i = threadIdx.x; i < TB_K * TB_N; i += 256) {
            const int kk = i % TB_K, n = i / TB_K;
            float v = 0.f;
            if (n0 + n < N && k0 + kk < K) {
                const long long r = n0 + n, k = k0 + kk;
                v = load_w<WT>(wd, r * K + k);
                if (SK == GLM_CU_SCALE_CHANNEL) v *= sc[r];
                if (SK == GLM_CU_SCALE_BLOCK) v *= sc[(r / 128) * a.w.s_ld + k / 128];
            }
            ws[kk][n] = v;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TB_K; kk++) {
            float xv[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { xv[i] = xs[kk][ty * 4 + i]; wv[i] = ws[kk][tx * 4 + i]; }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(xv[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int m = m0 + ty * 4 + i;
        if (m >= cnt) continue;
        const int orow = a.grouped ? row0 + m : m;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int n = n0 + tx * 4 + j;
            if (n < N) a.y[(size_t)orow * a.ldy + n] = acc[i][j] + (a.bias ? a.bias[n] : 0.f);
        }
    }
}

extern "C" int glm_cu_gemm_tiled(const glm_cu_mat *w, const float *x, int ldx, const float *bias, float *y,
                                 int ldy, int T, const glm_cu_groups *g, int x_gather, cudaStream_t st) {
    if (T <= 0 || w->N <= 0) return 0;
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.w = *w;
    a.x = x; a.ldx = ldx; a.bias = bias; a.y = y; a.ldy = ldy; a.T = T;
    int maxc = T, groups = 1;
    if (g) {
        a.grouped = 1; a.x_gather = x_gather;
        a.active = g->active; a.n_active = g->n_active; a.off = g->off; a.rows = g->rows;
        maxc = g->max_count; groups = g->max_groups;
        if (groups <= 0) return 0;
    }
    dim3 grid((w->N + TB_N - 1) / TB_N, (maxc + TB_M - 1) / TB_M, groups);
    if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_CHANNEL) gemm_tiled_kernel<GLM_CU_FP8, GLM_CU_SCALE_CHANNEL><<<grid, 256, 0, st>>>(a);
    else if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_BLOCK) gemm_tiled_kernel<GLM_CU_FP8, GLM_CU_SCALE_BLOCK><<<grid, 256, 0, st>>>(a);
    else if (w->dtype == GLM_CU_BF16) gemm_tiled_kernel<GLM_CU_BF16, GLM_CU_SCALE_NONE><<<grid, 256, 0, st>>>(a);
    else if (w->dtype == GLM_CU_F32) gemm_tiled_kernel<GLM_CU_F32, GLM_CU_SCALE_NONE><<<grid, 256, 0, st>>>(a);
    else return glm_err(-7, "gemm: weight type %d with scale kind %d is not supported", w->dtype, w->scale_kind);
    CUDA_CHECK_LAUNCH();
    return 0;
}
