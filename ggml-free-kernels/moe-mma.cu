// moe-mma.cu - FP8 tensor-core products for MoE experts (and dense weights) when a
// group holds more tokens than the CUDA-core GEMV keeps up with: weights are streamed
// once per pass of up to 32 tokens straight from global memory into mma.sync
// m16n8k32 e4m3 A fragments (16-byte loads), activations quantised to FP8 with one
// scale per token and 128 columns, float32 accumulation rescaled per 128-column
// block (so per-channel and 128x128 block weight scales both apply exactly).
//
// Fragment trick: the dot product does not care in which order k is summed, so each
// lane loads 16 contiguous bytes of its rows (g, g+8) at k0 + 16*tq, and the B (x)
// fragment is loaded with the same permutation: for the s-th of the two k32 steps of
// a 64-byte span, logical k (4tq+i) <-> byte 8s+i and (16+4tq+i) <-> byte 8s+4+i.
#include "common.cuh"

#include <string.h>

#define MMA_WARPS 4
#define MMA_ROWS (16 * MMA_WARPS)

struct mma_args {
    glm_cu_mat w, up;
    int glu;
    const uint8_t *xq;   // [rows][K] e4m3
    const float *xs;     // [rows][K/128]
    float *y;
    int ldy;
    int T;
    const int32_t *active, *n_active, *off, *rows;
    int grouped, x_gather;
    float *part;         // dense split-K: partial sums [gridDim.y][T][N], else NULL
};

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 ldg_stream16(const void *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

template <int SK, int GLU, int NT, bool SPLIT = false>
__global__ void __launch_bounds__(MMA_WARPS * 32, NT == 1 ? 4 : 1) moe_mma_kernel(const mma_args a) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    int e = 0, row0 = 0, cnt = a.T;
    if (a.grouped && !expert_group(a.active, a.n_active, a.off, &e, &row0, &cnt)) return;
    const int N = a.w.N, K = a.w.K, KB = K >> 7;
    const int r0 = blockIdx.x * MMA_ROWS + warp * 16;  // this warp's 16 rows
    if (r0 >= N) return;
    const uint8_t *wg = (const uint8_t *)a.w.data + (long long)e * a.w.stride;
    const uint8_t *wu = GLU ? (const uint8_t *)a.up.data + (long long)e * a.up.stride : nullptr;
    const float *sg = a.w.scale + (long long)e * a.w.s_stride;
    const float *su = GLU ? a.up.scale + (long long)e * a.up.s_stride : nullptr;
    const uint8_t *pg0 = wg + (size_t)(r0 + g) * K + tq * 16, *pg8 = pg0 + (size_t)8 * K;
    const uint8_t *pu0 = GLU ? wu + (size_t)(r0 + g) * K + tq * 16 : nullptr, *pu8 = GLU ? pu0 + (size_t)8 * K : nullptr;
    // dense split-K: this block's 128-column blocks [kb_lo, kb_hi) (every split holds one
    // or more: the caller keeps gridDim.y <= KB)
    int kb_lo = 0, kb_hi = KB;
    if (SPLIT) {
        kb_lo = (int)((long long)KB * blockIdx.y / gridDim.y);
        kb_hi = (int)((long long)KB * (blockIdx.y + 1) / gridDim.y);
    }

    for (int t0 = 0; t0 < cnt; t0 += 8 * NT) {
        // the x rows of this lane's tokens (g-th token of each n-tile)
        const uint8_t *xr[NT];
        const float *sxr[NT];
        bool live[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const int tok = t0 + j * 8 + g;
            live[j] = tok < cnt;
            const int tt = live[j] ? tok : 0;
            const int src = a.grouped ? (a.x_gather ? a.rows[row0 + tt] : row0 + tt) : tt;
            xr[j] = a.xq + (size_t)src * K + tq * 16;
            sxr[j] = nullptr;
        }
        // scales of this lane's accumulator tokens (2tq, 2tq+1 of each n-tile)
        const float *sx0[NT], *sx1[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const int ta = t0 + j * 8 + 2 * tq, tb = ta + 1;
            const int ca = ta < cnt ? ta : 0, cb = tb < cnt ? tb : 0;
            const int sa = a.grouped ? (a.x_gather ? a.rows[row0 + ca] : row0 + ca) : ca;
            const int sb = a.grouped ? (a.x_gather ? a.rows[row0 + cb] : row0 + cb) : cb;
            sx0[j] = a.xs + (size_t)sa * KB;
            sx1[j] = a.xs + (size_t)sb * KB;
        }
        (void)sxr;
        float acc[NT][4], accu[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) { acc[j][i] = 0.f; accu[j][i] = 0.f; }

        // weights of block kb in ag/au while block kb + 1 is in flight in ng/nu
        uint4 ag[2][2], au[2][2], ng[2][2], nu[2][2];  // [span][row g / g+8]
#pragma unroll
        for (int sp = 0; sp < 2; sp++) {
            ng[sp][0] = ldg_stream16(pg0 + kb_lo * 128 + sp * 64);
            ng[sp][1] = ldg_stream16(pg8 + kb_lo * 128 + sp * 64);
            if (GLU) {
                nu[sp][0] = ldg_stream16(pu0 + kb_lo * 128 + sp * 64);
                nu[sp][1] = ldg_stream16(pu8 + kb_lo * 128 + sp * 64);
            }
        }
#pragma unroll 1
        for (int kb = kb_lo; kb < kb_hi; kb++) {
            const int k0 = kb * 128;
#pragma unroll
            for (int sp = 0; sp < 2; sp++) {
                ag[sp][0] = ng[sp][0]; ag[sp][1] = ng[sp][1];
                if (GLU) { au[sp][0] = nu[sp][0]; au[sp][1] = nu[sp][1]; }
            }
            if (kb + 1 < kb_hi) {
#pragma unroll
                for (int sp = 0; sp < 2; sp++) {
                    ng[sp][0] = ldg_stream16(pg0 + k0 + 128 + sp * 64);
                    ng[sp][1] = ldg_stream16(pg8 + k0 + 128 + sp * 64);
                    if (GLU) {
                        nu[sp][0] = ldg_stream16(pu0 + k0 + 128 + sp * 64);
                        nu[sp][1] = ldg_stream16(pu8 + k0 + 128 + sp * 64);
                    }
                }
            }
            float wsg = 1.f, wsu = 1.f;
            if (SK == GLM_CU_SCALE_BLOCK) {
                wsg = __ldg(sg + (r0 >> 7) * a.w.s_ld + kb);
                if (GLU) wsu = __ldg(su + (r0 >> 7) * a.up.s_ld + kb);
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
                if (!__any_sync(0xffffffffu, t0 + j * 8 < cnt)) break;
                uint4 bx[2];
#pragma unroll
                for (int sp = 0; sp < 2; sp++)
                    bx[sp] = live[j] ? __ldg((const uint4 *)(xr[j] + k0 + sp * 64)) : make_uint4(0, 0, 0, 0);
                float d[4] = {0.f, 0.f, 0.f, 0.f}, du[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int sp = 0; sp < 2; sp++) {
                    const uint32_t A0[4] = {ag[sp][0].x, ag[sp][1].x, ag[sp][0].y, ag[sp][1].y};
                    const uint32_t A1[4] = {ag[sp][0].z, ag[sp][1].z, ag[sp][0].w, ag[sp][1].w};
                    mma_e4m3(d, A0, bx[sp].x, bx[sp].y);
                    mma_e4m3(d, A1, bx[sp].z, bx[sp].w);
                    if (GLU) {
                        const uint32_t U0[4] = {au[sp][0].x, au[sp][1].x, au[sp][0].y, au[sp][1].y};
                        const uint32_t U1[4] = {au[sp][0].z, au[sp][1].z, au[sp][0].w, au[sp][1].w};
                        mma_e4m3(du, U0, bx[sp].x, bx[sp].y);
                        mma_e4m3(du, U1, bx[sp].z, bx[sp].w);
                    }
                }
                const float xa = __ldg(sx0[j] + kb), xb = __ldg(sx1[j] + kb);
                acc[j][0] = fmaf(d[0], wsg * xa, acc[j][0]);
                acc[j][1] = fmaf(d[1], wsg * xb, acc[j][1]);
                acc[j][2] = fmaf(d[2], wsg * xa, acc[j][2]);
                acc[j][3] = fmaf(d[3], wsg * xb, acc[j][3]);
                if (GLU) {
                    accu[j][0] = fmaf(du[0], wsu * xa, accu[j][0]);
                    accu[j][1] = fmaf(du[1], wsu * xb, accu[j][1]);
                    accu[j][2] = fmaf(du[2], wsu * xa, accu[j][2]);
                    accu[j][3] = fmaf(du[3], wsu * xb, accu[j][3]);
                }
            }
        }
        // epilogue: rows r0+g, r0+g+8; tokens 2tq, 2tq+1 of each n-tile
        float cg0 = 1.f, cg8 = 1.f, cu0 = 1.f, cu8 = 1.f;
        if (SK == GLM_CU_SCALE_CHANNEL) {
            cg0 = __ldg(sg + r0 + g); cg8 = __ldg(sg + r0 + g + 8);
            if (GLU) { cu0 = __ldg(su + r0 + g); cu8 = __ldg(su + r0 + g + 8); }
        }
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int tok = t0 + j * 8 + 2 * tq + (i & 1);
                const int row = r0 + g + (i >> 1) * 8;
                if (tok >= cnt) continue;
                const float gv = acc[j][i] * ((i >> 1) ? cg8 : cg0);
                float v = gv;
                if (GLU) {
                    const float uv = accu[j][i] * ((i >> 1) ? cu8 : cu0);
                    v = gv / (1.f + __expf(-gv)) * uv;
                }
                if (SPLIT) {  // dense split-K (no glu): this split's share, the scales applied
                    a.part[((size_t)blockIdx.y * a.T + tok) * N + row] = v;
                    continue;
                }
                const int orow = a.grouped ? row0 + tok : tok;
                a.y[(size_t)orow * a.ldy + row] = v;
            }
        }
    }
}

template <int SK, int GLU>
static void launch_nt(const mma_args &a, int nt, dim3 grid, cudaStream_t st) {
    if (nt <= 1) moe_mma_kernel<SK, GLU, 1><<<grid, MMA_WARPS * 32, 0, st>>>(a);
    else if (nt <= 2) moe_mma_kernel<SK, GLU, 2><<<grid, MMA_WARPS * 32, 0, st>>>(a);
    else moe_mma_kernel<SK, GLU, 4><<<grid, MMA_WARPS * 32, 0, st>>>(a);
}

extern "C" int glm_cu_mma_ok(const glm_cu_mat *w) {
    return w->dtype == GLM_CU_FP8 && w->K % 128 == 0 && w->N % 16 == 0 && ((uintptr_t)w->data & 15) == 0 &&
           w->stride % 16 == 0 && (w->scale_kind == GLM_CU_SCALE_CHANNEL || w->scale_kind == GLM_CU_SCALE_BLOCK);
}

extern "C" int glm_cu_gemm_fp8_mma(const glm_cu_mat *w, const glm_cu_mat *up, const uint8_t *xq, const float *xs,
                                   float *y, int ldy, int T, const glm_cu_groups *g, int x_gather, cudaStream_t st) {
    if (T <= 0) return 0;
    if (!glm_cu_mma_ok(w) || (up && (!glm_cu_mma_ok(up) || up->scale_kind != w->scale_kind)))
        return glm_err(-7, "mma: weight %d x %d (type %d) not supported (FP8, K %% 128 == 0, N %% 16 == 0)", w->N, w->K, w->dtype);
    mma_args a;
    memset(&a, 0, sizeof a);
    a.w = *w;
    if (up) a.up = *up;
    a.glu = up != nullptr;
    a.xq = xq; a.xs = xs; a.y = y; a.ldy = ldy; a.T = T;
    int maxc = T;
    if (g) {
        if (g->max_groups <= 0) return 0;
        a.grouped = 1; a.x_gather = x_gather;
        a.active = g->active; a.n_active = g->n_active; a.off = g->off; a.rows = g->rows;
        maxc = g->max_count;
    }
    const int nt = (maxc + 7) / 8;
    dim3 grid((w->N + MMA_ROWS - 1) / MMA_ROWS, g ? g->max_groups : 1);
    const int ch = w->scale_kind == GLM_CU_SCALE_CHANNEL;
    if (ch && up) launch_nt<GLM_CU_SCALE_CHANNEL, 1>(a, nt, grid, st);
    else if (ch) launch_nt<GLM_CU_SCALE_CHANNEL, 0>(a, nt, grid, st);
    else if (up) launch_nt<GLM_CU_SCALE_BLOCK, 1>(a, nt, grid, st);
    else launch_nt<GLM_CU_SCALE_BLOCK, 0>(a, nt, grid, st);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// ---- dense products of a few dozen tokens, split along K ----
// A dense weight of few rows (the k and v projections, the shared expert) gives the
// kernel above a handful of 64-row blocks: too few loads in flight to stream the
// weights. Splitting the 128-column blocks over gridDim.y blocks of each row tile
// multiplies them; each split writes its partial sums, which the kernel below adds
// up in split order (deterministic) with the bias.
__global__ void mma_reduce_kernel(const float *part, int S, int T, int N, const float *bias, float *y, int ldy) {
    const int t = blockIdx.y;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) {
        float v = 0.f;
        for (int sp = 0; sp < S; sp++) v += part[((size_t)sp * T + t) * N + n];
        y[(size_t)t * ldy + n] = bias ? v + bias[n] : v;
    }
}

extern "C" int glm_cu_mma_splits(const glm_cu_mat *w, int T, int n_sm, size_t part_floats) {
    const int row_blocks = (w->N + MMA_ROWS - 1) / MMA_ROWS, KB = w->K / 128;
    int S = (4 * n_sm + row_blocks - 1) / row_blocks;  // about four blocks an SM
    if (S > KB) S = KB;
    if (S > 32) S = 32;
    while (S > 1 && (size_t)S * T * w->N > part_floats) S--;
    return S < 1 ? 1 : S;
}

extern "C" int glm_cu_gemm_fp8_mma_splitk(const glm_cu_mat *w, const uint8_t *xq, const float *xs, const float *bias,
                                          float *y, int ldy, int T, int n_split, float *part, cudaStream_t st) {
    if (T <= 0) return 0;
    if (!glm_cu_mma_ok(w) || n_split < 1 || n_split > w->K / 128 || (n_split > 1 && !part))
        return glm_err(-7, "mma split-K: weight %d x %d (type %d) in %d splits not supported", w->N, w->K, w->dtype, n_split);
    mma_args a;
    memset(&a, 0, sizeof a);
    a.w = *w;
    a.xq = xq; a.xs = xs; a.y = y; a.ldy = ldy; a.T = T;
    a.part = part;
    dim3 grid((w->N + MMA_ROWS - 1) / MMA_ROWS, n_split);
    const int ch = w->scale_kind == GLM_CU_SCALE_CHANNEL;
    if (n_split == 1) {  // the plain dense kernel, passes of up to 32 tokens
        a.part = nullptr;
        if (ch) launch_nt<GLM_CU_SCALE_CHANNEL, 0>(a, (T + 7) / 8, grid, st);
        else launch_nt<GLM_CU_SCALE_BLOCK, 0>(a, (T + 7) / 8, grid, st);
    } else {  // up to 64 tokens a pass (graph-sized batches), else passes of 32
        if (ch && T > 32) moe_mma_kernel<GLM_CU_SCALE_CHANNEL, 0, 8, true><<<grid, MMA_WARPS * 32, 0, st>>>(a);
        else if (ch) moe_mma_kernel<GLM_CU_SCALE_CHANNEL, 0, 4, true><<<grid, MMA_WARPS * 32, 0, st>>>(a);
        else if (T > 32) moe_mma_kernel<GLM_CU_SCALE_BLOCK, 0, 8, true><<<grid, MMA_WARPS * 32, 0, st>>>(a);
        else moe_mma_kernel<GLM_CU_SCALE_BLOCK, 0, 4, true><<<grid, MMA_WARPS * 32, 0, st>>>(a);
    }
    CUDA_CHECK_LAUNCH();
    if (n_split > 1) {
        dim3 rg(w->N > 256 * 32 ? 32 : (w->N + 255) / 256, T);
        mma_reduce_kernel<<<rg, 256, 0, st>>>(part, n_split, T, w->N, bias, y, ldy);
        CUDA_CHECK_LAUNCH();
    } else if (bias) {
        return glm_cu_add_bias(y, bias, T, w->N, ldy, st);
    }
    return 0;
}
