// gemv.cu - weight-streaming products for decode: few tokens against a large
// weight, each weight byte read once per chunk of up to 8 tokens, dequantised in
// registers (FP8 per-channel or 128x128 block scales, BF16, F32) and accumulated in
// float32. Three kernels: one token of FP8 weights from a shared-memory ring filled
// by bulk copies (gemv_bulk_kernel), two to eight tokens of FP8 weights on the tensor
// cores (gemv_fp8mma_kernel), and a register loop with 16-byte loads for the rest
// (gemv_kernel). The grouped form runs one MoE expert per block row of the grid over
// the tokens routed to it, so each touched expert is read once per step. Also the
// tiled float32 fallback GEMM for odd shapes.
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
    int gb_stages;                    // bulk ring: stages
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


// The weight a row block belongs to: for multi launches (q, k and v side by side) the
// one whose row blocks contain grb, with grb made relative to it. Compile-time indices
// only, so the argument block stays in the constant bank.
struct gemv_target {
    glm_cu_mat W;
    const float *bias;
    float *Y;
    int ldy, bx;
};
__device__ __forceinline__ gemv_target gemv_pick(const gemv_args &a, int grb) {
    gemv_target r = {a.w, a.bias, a.y, a.ldy, grb};
    if (a.n_multi) {
        int i = 0;
#pragma unroll
        for (int j = 1; j < GEMV_MULTI; j++) if (j < a.n_multi && grb >= a.mblock[j]) i = j;
#pragma unroll
        for (int j = 0; j < GEMV_MULTI; j++)
            if (j == i) { r.W = a.mw[j]; r.bias = a.mbias[j]; r.Y = a.my[j]; r.ldy = a.mldy[j]; r.bx = grb - a.mblock[j]; }
    }
    return r;
}

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
    const gemv_target tg = gemv_pick(a, grb);
    const glm_cu_mat W = tg.W;
    const float *bias = tg.bias;
    float *Y = tg.Y;
    const int ldy = tg.ldy, bx = tg.bx;
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
                if (lane == t) yr[n_out0] = silu(acc0[t] * cs0) * (acc1[t] * cs1);
            } else {
                if (lane == 2 * t) yr[n_out0] = acc0[t] * cs0 + (bias ? bias[n_out0] : 0.f);
                if (lane == 2 * t + 1 && n_outs == 2) yr[n_out0 + 1] = acc1[t] * cs1 + (bias ? bias[n_out0 + 1] : 0.f);
            }
        }
    }
    }  // row blocks
}

// ---- FP8 weights on the tensor cores, for two tokens and more ----
// The CUDA-core loop above spends about 2.5 instructions per FP8 weight and token
// (convert, widen, multiply-add), so its time grows with the tokens: at 8 tokens it
// streams a quarter as fast as at one. Here the products run on mma.sync m16n8k16 (f16
// in, float32 accumulation): the weights are converted e4m3 -> f16 in registers (exact,
// one instruction per two weights), the tokens are the n dimension (up to 8 per pass at
// the same cost as one), and the activations are rounded to f16 (11-bit mantissa;
// saturating at +-65504). With one token the CUDA-core loop is as fast and exact in x,
// so it keeps that case (docs/PERF.md, run 13).
//
// A warp owns 16 rows (g and g + 8 for lane group g = lane / 4; for glu, gate row g and
// up row g) over a range of 128-k blocks, which reach shared memory by cp.async,
// FM_STAGES - 1 blocks ahead of the one being multiplied. Lane (g, t) copies 16
// contiguous bytes of each of its two rows at k = 128 kb + 64 s + 16 t (s = 0, 1). The
// dot product does not care in which order k is summed, so the four mmas of such a
// 16-byte chunk take its bytes 4j..4j+3 as logical k (2t, 2t+1 | 2t+8, 2t+9), and the
// B fragment of token g takes the activations at the same bytes: A and B agree because
// both depend only on t. The warps of a block split K when rows are few; block scales
// are applied per 128-k block, channel scales at the end.
#define FM_WARPS 8

// Four E4M3 codes to two f16x2: bytes 0,1 -> lo, bytes 2,3 -> hi (low byte in the low half).
__device__ __forceinline__ void e4m3x4_to_f16x4(uint32_t v, uint32_t &lo, uint32_t &hi) {
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
        : "=r"(lo), "=r"(hi) : "r"(v));
}

// Two floats to f16x2 (a in the low half), saturating at +-65504.
__device__ __forceinline__ uint32_t f2_to_h2(float a, float b) {
    uint32_t r;
    asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
}

__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// d[rows g, g+8][tokens 2t, 2t+1] += one 16-byte chunk of rows g (w0) and g+8 (w8)
// times the activations xh (8 f16x2, k 0..15 of the chunk, token g).
__device__ __forceinline__ void mma_chunk(float (&d)[4], const uint4 &w0, const uint4 &w8, const uint32_t *xh) {
    const uint32_t u0[4] = {w0.x, w0.y, w0.z, w0.w}, u8[4] = {w8.x, w8.y, w8.z, w8.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        uint32_t a0, a1, a2, a3;
        e4m3x4_to_f16x4(u0[j], a0, a2);
        e4m3x4_to_f16x4(u8[j], a1, a3);
        mma_f16(d, a0, a1, a2, a3, xh[2 * j], xh[2 * j + 1]);
    }
}

// 16 bytes global -> shared without passing through registers; n = 0 fills zeros.
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int n) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(n));
}

// Starts the copy of one 128-k block of this lane's two rows into ring stage st:
// pieces [step s][row g / g+8], each 16 bytes per lane (zeros past K); one commit group.
__device__ __forceinline__ void fm_issue(uint4 *ring, int st, int lane, const uint8_t *p0, const uint8_t *p8, int kb,
                                         int lane_off, int K) {
#pragma unroll
    for (int s = 0; s < 2; s++) {
        const int o = kb * 128 + s * 64;
        const bool ok = o + lane_off < K;
        cp_async16(ring + (st * 4 + s * 2 + 0) * 32 + lane, ok ? p0 + o : p0, ok ? 16 : 0);
        cp_async16(ring + (st * 4 + s * 2 + 1) * 32 + lane, ok ? p8 + o : p8, ok ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

#define FM_STAGES 4  // 128-k blocks per warp in shared memory: FM_STAGES - 1 in flight
#define FM_SMEM (FM_WARPS * FM_STAGES * 4 * 32 * 16)

template <int SK, int GLU>
__global__ void __launch_bounds__(FM_WARPS * 32, 2) gemv_fp8mma_kernel(const gemv_args a) {
    constexpr int RT = GLU ? 8 : 16;  // outputs per warp tile: glu pairs gate row g with up row g (as row g+8)
    extern __shared__ uint4 fm_ring[];  // [warp][stage][piece][lane], FM_SMEM bytes
    __shared__ float red[FM_WARPS][4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int ks = a.ksplit, wk = warp % ks, wt = warp / ks;  // this warp's k part and row tile
    uint4 *ring = fm_ring + warp * FM_STAGES * 4 * 32;
    int e = 0, row0 = 0, cnt = a.T;
    if (a.grouped && !expert_group(a.active, a.n_active, a.off, &e, &row0, &cnt)) return;
    for (int grb = blockIdx.x; grb < a.n_rb; grb += gridDim.x) {
        const gemv_target tg = gemv_pick(a, grb);
        const glm_cu_mat &W = tg.W;
        const int N = W.N, K = W.K, KB = (K + 127) / 128;
        const int n0 = (tg.bx * (FM_WARPS / ks) + wt) * RT;  // first output of this warp's tile
        // rows past N read row N-1 and are not stored (the warp still takes part in the reduction)
        const int ra = min(n0 + g, N - 1), rb = GLU ? ra : min(n0 + g + 8, N - 1);
        const uint8_t *wb = (const uint8_t *)W.data + (long long)e * W.stride;
        const uint8_t *hb = GLU ? (const uint8_t *)a.up.data + (long long)e * a.up.stride : wb;  // rows g+8
        const uint8_t *p0 = wb + (size_t)ra * K + t * 16, *p8 = hb + (size_t)rb * K + t * 16;
        const float *s0 = W.scale ? W.scale + (long long)e * W.s_stride : nullptr;
        const float *s8 = GLU ? a.up.scale + (long long)e * a.up.s_stride : s0;
        const int s_ld8 = GLU ? a.up.s_ld : W.s_ld;
        const int srow = min(n0, N - 1) / 128;  // block-scale row of the tile (RT divides 128)

        for (int t0 = 0; t0 < cnt; t0 += 8) {
            const int tok = t0 + g;
            const bool xl = tok < cnt;
            const int src = !xl ? 0 : a.grouped ? (a.x_gather ? a.rows[row0 + tok] : row0 + tok) : tok;
            const float *xr = a.x + (size_t)src * a.ldx + t * 16;
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
            // this warp's blocks are kb = wk + i*ks; FM_STAGES - 1 of them in flight ahead
#pragma unroll
            for (int i = 0; i < FM_STAGES - 1; i++) {
                const int kb = wk + i * ks;
                fm_issue(ring, i, lane, p0, p8, kb, t * 16, kb < KB ? K : 0);
            }
            for (int i = 0, kb = wk; kb < KB; i++, kb += ks) {
                const int kn = kb + (FM_STAGES - 1) * ks;
                fm_issue(ring, (i + FM_STAGES - 1) % FM_STAGES, lane, p0, p8, kn, t * 16, kn < KB ? K : 0);
                // this block's activations of token g, as f16
                uint32_t xh[2][8];
#pragma unroll
                for (int s = 0; s < 2; s++) {
                    const int o = kb * 128 + s * 64;
                    if (xl && o + t * 16 < K) {
                        const float4 *xp = (const float4 *)(xr + o);
#pragma unroll
                        for (int q = 0; q < 4; q++) {
                            const float4 v = __ldg(xp + q);
                            xh[s][2 * q] = f2_to_h2(v.x, v.y);
                            xh[s][2 * q + 1] = f2_to_h2(v.z, v.w);
                        }
                    } else {
#pragma unroll
                        for (int q = 0; q < 8; q++) xh[s][q] = 0u;
                    }
                }
                asm volatile("cp.async.wait_group %0;" ::"n"(FM_STAGES - 1) : "memory");
                const uint4 *stg = ring + (i % FM_STAGES) * 4 * 32 + lane;
                float d[4] = {0.f, 0.f, 0.f, 0.f};
                mma_chunk(d, stg[0], stg[32], xh[0]);
                mma_chunk(d, stg[64], stg[96], xh[1]);
                float b0 = 1.f, b8 = 1.f;
                if (SK == GLM_CU_SCALE_BLOCK) {
                    b0 = __ldg(s0 + srow * W.s_ld + kb);
                    b8 = GLU ? __ldg(s8 + srow * s_ld8 + kb) : b0;
                }
                acc[0] = fmaf(d[0], b0, acc[0]); acc[1] = fmaf(d[1], b0, acc[1]);
                acc[2] = fmaf(d[2], b8, acc[2]); acc[3] = fmaf(d[3], b8, acc[3]);
            }
            asm volatile("cp.async.wait_group 0;" ::: "memory");  // nothing in flight into the ring past here
            if (ks > 1) {  // the warps of a tile hold partial sums over their k parts
#pragma unroll
                for (int i = 0; i < 4; i++) red[warp][i][lane] = acc[i];
                __syncthreads();
                if (wk == 0)
                    for (int p = 1; p < ks; p++)
#pragma unroll
                        for (int i = 0; i < 4; i++) acc[i] += red[warp + p][i][lane];
                __syncthreads();
                if (wk != 0) continue;
            }
            // acc: rows g (0, 1) and g+8 (2, 3) of the tile, tokens t0+2t+(i&1); glu: gate (0, 1), up (2, 3)
            const int nr = GLU ? 2 : 4;
#pragma unroll
            for (int i = 0; i < nr; i++) {
                const int n = n0 + g + (i >> 1) * 8, tk = t0 + 2 * t + (i & 1);
                if (n >= N || tk >= cnt) continue;
                float v = acc[i];
                if (SK == GLM_CU_SCALE_CHANNEL) v *= __ldg(s0 + n);
                if (GLU) {
                    float u = acc[i + 2];
                    if (SK == GLM_CU_SCALE_CHANNEL) u *= __ldg(s8 + n);
                    v = silu(v) * u;
                } else if (tg.bias) {
                    v += tg.bias[n];
                }
                const int orow = a.grouped ? row0 + tk : tk;
                tg.Y[(size_t)orow * tg.ldy + n] = v;
            }
        }
    }  // row blocks
}

// ---- one token, FP8 weights: rows reach shared memory by bulk copies ----
// The register loop above keeps about 2 KB a warp in flight and waits on each batch
// of loads before it multiplies; it streams 2.2-2.9 TB/s at one token (docs/PERF.md,
// run 14: neither other load widths, L2 prefetches, more warps nor split K moved it).
// Here a producer warp copies tiles of GB_ROWS weight rows, GB_KC bytes of each row a
// stage, into a ring of 2 or 4 stages with cp.async.bulk (one instruction per row
// segment, no registers, 64 or 128 KB in flight per block), and GB_CW consumer warps multiply
// them from shared memory against x, which the block holds in shared memory as
// float32. Consumer warp w owns tile rows 2w and 2w + 1 (glu: gate row w and up row w,
// tile rows w and 8 + w) and accumulates them over the stages of the tile in float32;
// block scales are applied per 128-k block, channel scales at the end. Blocks take
// whole tiles with a grid stride, sized so that every block gets the same number.
#define GB_CW 8                                      // consumer warps
#define GB_ROWS 16                                   // weight rows a tile
#define GB_KC 2048                                   // bytes of each row a stage
#define GB_STAGES_MAX 4                              // stages of the ring: 2 or 4 (a.gb_stages)
#define GB_STAGE (GB_ROWS * GB_KC)                   // 32 KB
#define GB_KMAX 12288                                // widest row: x in shared memory as float32

// float4 q of x at q ^ ((q >> 3) & 3): the eight lanes of a quarter warp, reading
// the four float4 of their 16-column chunks, touch eight different bank groups.
__device__ __forceinline__ int gb_swz(int q) { return q ^ ((q >> 3) & 3); }

template <int SK, int GLU>
__global__ void __launch_bounds__((GB_CW + 1) * 32, 2) gemv_bulk_kernel(const gemv_args a) {
#if GLM_SM90
    extern __shared__ __align__(128) uint8_t gb_smem[];
    __shared__ __align__(8) uint64_t full[GB_STAGES_MAX], empty[GB_STAGES_MAX];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int e = 0, row0 = 0, cnt = 1;
    if (a.grouped && !expert_group(a.active, a.n_active, a.off, &e, &row0, &cnt)) return;
    const int K = a.w.K, nkc = (K + GB_KC - 1) / GB_KC, ns = a.gb_stages;
    const uint32_t ring = smem_u32(gb_smem), fb = smem_u32(full), eb = smem_u32(empty);
    if (tid == 0) {
        for (int s = 0; s < GB_STAGES_MAX; s++) {
            mbar_init(fb + 8 * s, 1);      // the producer's arrival with the stage's bytes
            mbar_init(eb + 8 * s, GB_CW);  // each consumer warp, done with the stage
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp == GB_CW) {  // producer: lane 0 issues every copy
        if (lane != 0) return;
        int it = 0;
        for (int grb = blockIdx.x; grb < a.n_rb; grb += gridDim.x) {
            const gemv_target tg = gemv_pick(a, grb);
            const uint8_t *rp[GB_ROWS];
#pragma unroll
            for (int r = 0; r < GB_ROWS; r++) {  // rows past N repeat the last one; their sums are dropped
                const glm_cu_mat &M = GLU && r >= 8 ? a.up : tg.W;
                const int n = min(GLU ? tg.bx * 8 + (r & 7) : tg.bx * GB_ROWS + r, tg.W.N - 1);
                rp[r] = (const uint8_t *)M.data + (long long)e * M.stride + (size_t)n * K;
            }
            for (int kc = 0; kc < nkc; kc++, it++) {
                const int s = it % ns, kb = min(GB_KC, K - kc * GB_KC);
                if (it >= ns) mbar_wait(eb + 8 * s, ((it / ns) - 1) & 1);
                mbar_expect(fb + 8 * s, GB_ROWS * kb);
#pragma unroll
                for (int r = 0; r < GB_ROWS; r++)
                    bulk_g2s(ring + (s * GB_ROWS + r) * GB_KC, rp[r] + (size_t)kc * GB_KC, kb, fb + 8 * s);
            }
        }
        return;
    }

    // consumers: x (this group's token) into shared memory, then the tiles
    float4 *xs = (float4 *)(gb_smem + ns * GB_STAGE);
    const float4 *xg = (const float4 *)(a.x + (a.grouped ? (size_t)(a.x_gather ? a.rows[row0] : row0) * a.ldx : 0));
    {  // every load in flight at once: at most GB_XQ float4 a thread
        constexpr int GB_XQ = GB_KMAX / 4 / (GB_CW * 32);
        float4 v[GB_XQ];
#pragma unroll
        for (int u = 0; u < GB_XQ; u++) {
            const int q = tid + u * GB_CW * 32;
            if (q < K / 4) v[u] = __ldg(xg + q);
        }
#pragma unroll
        for (int u = 0; u < GB_XQ; u++) {
            const int q = tid + u * GB_CW * 32;
            if (q < K / 4) xs[gb_swz(q)] = v[u];
        }
    }
    asm volatile("bar.sync 1, %0;" ::"r"(GB_CW * 32) : "memory");
    const int orow = a.grouped ? row0 : 0;
    // Logical float4 q = kc * 512 + j * 128 + 4 * lane + i of x (i < 4) sits at
    // gb_swz(q) = q - i + (i ^ sw): kc * 512 + j * 128 is a multiple of 32, so
    // (q >> 3) & 3 depends on the lane alone.
    const int sw = (lane >> 1) & 3;
    const float4 *xl = xs + 4 * lane;
    int it = 0;
    for (int grb = blockIdx.x; grb < a.n_rb; grb += gridDim.x) {
        const gemv_target tg = gemv_pick(a, grb);
        const int N = tg.W.N;
        const int ra = GLU ? warp : 2 * warp, rb = GLU ? warp + 8 : 2 * warp + 1;  // this warp's tile rows
        const int n0 = GLU ? tg.bx * 8 + warp : tg.bx * GB_ROWS + 2 * warp;       // output of row ra
        const int n1 = GLU ? n0 : min(n0 + 1, N - 1);                              // weight row of rb
        const glm_cu_mat &Mb = GLU ? a.up : tg.W;
        const float *s0p = tg.W.scale + (long long)e * tg.W.s_stride, *s1p = Mb.scale + (long long)e * Mb.s_stride;
        if (SK == GLM_CU_SCALE_CHANNEL) { s0p += min(n0, N - 1); s1p += n1; }
        if (SK == GLM_CU_SCALE_BLOCK) { s0p += (min(n0, N - 1) / 128) * tg.W.s_ld; s1p += (n1 / 128) * Mb.s_ld; }
        float acc0 = 0.f, acc1 = 0.f;
        for (int kc = 0; kc < nkc; kc++, it++) {
            const int s = it % ns, kb = min(GB_KC, K - kc * GB_KC);
            mbar_wait(fb + 8 * s, (it / ns) & 1);
            const uint8_t *w0p = gb_smem + (s * GB_ROWS + ra) * GB_KC + lane * 16;
            const uint8_t *w1p = gb_smem + (s * GB_ROWS + rb) * GB_KC + lane * 16;
            const float4 *xk = xl + kc * (GB_KC / 4);
            // the lane's 16 bytes of step j (512 bytes a step) against x[k .. k + 16)
            auto step = [&](int j) {
                float f0[16], f1[16];
                unpack16<GLM_CU_FP8>(*(const uint4 *)(w0p + j * 512), f0);
                unpack16<GLM_CU_FP8>(*(const uint4 *)(w1p + j * 512), f1);
                float d0 = 0.f, d1 = 0.f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float4 xv = xk[j * 128 + (i ^ sw)];
                    d0 = fmaf(f0[4 * i + 0], xv.x, d0); d1 = fmaf(f1[4 * i + 0], xv.x, d1);
                    d0 = fmaf(f0[4 * i + 1], xv.y, d0); d1 = fmaf(f1[4 * i + 1], xv.y, d1);
                    d0 = fmaf(f0[4 * i + 2], xv.z, d0); d1 = fmaf(f1[4 * i + 2], xv.z, d1);
                    d0 = fmaf(f0[4 * i + 3], xv.w, d0); d1 = fmaf(f1[4 * i + 3], xv.w, d1);
                }
                if (SK == GLM_CU_SCALE_BLOCK) {
                    const int kb128 = kc * (GB_KC / 128) + j * 4 + (lane >> 3);
                    acc0 = fmaf(d0, __ldg(s0p + kb128), acc0);
                    acc1 = fmaf(d1, __ldg(s1p + kb128), acc1);
                } else {
                    acc0 += d0;
                    acc1 += d1;
                }
            };
            if (kb == GB_KC) {
#pragma unroll
                for (int j = 0; j < GB_KC / 512; j++) step(j);
            } else {
#pragma unroll
                for (int j = 0; j < GB_KC / 512; j++)
                    if (j * 512 + lane * 16 < kb) step(j);
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(eb + 8 * s);
        }
        acc0 = warp_sum(acc0);
        acc1 = warp_sum(acc1);
        if (lane == 0 && n0 < N) {
            const float cs0 = SK == GLM_CU_SCALE_CHANNEL ? __ldg(s0p) : 1.f, cs1 = SK == GLM_CU_SCALE_CHANNEL ? __ldg(s1p) : 1.f;
            float *yr = tg.Y + (size_t)orow * tg.ldy;
            if (GLU) {
                yr[n0] = silu(acc0 * cs0) * (acc1 * cs1);
            } else {
                yr[n0] = acc0 * cs0 + (tg.bias ? tg.bias[n0] : 0.f);
                if (n0 + 1 < N) yr[n0 + 1] = acc1 * cs1 + (tg.bias ? tg.bias[n0 + 1] : 0.f);
            }
        }
    }
#else
    __trap();  // built without sm_90: gb_ok refuses before any launch
#endif
}

// Warps that split K on the tensor-core path: enough warp tasks to fill the GPU, at
// least one 128-k block each.
static int fm_ksplit(long long tiles, int groups, int K) {
    const int KB = (K + 127) / 128;
    const long long target = (long long)glm_cu_sm_count() * 24;
    int ks = 1;
    while (ks < FM_WARPS && 2 * ks <= KB && tiles * groups * ks < target) ks *= 2;
    return ks;
}

static int fm_launch(const gemv_args &a, int sk, unsigned gy, cudaStream_t st) {
    const dim3 grid((unsigned)(a.n_rb < 0x7fffffff ? a.n_rb : 0x7fffffff), gy);
    void (*k)(const gemv_args) = sk == GLM_CU_SCALE_CHANNEL ? (a.glu ? gemv_fp8mma_kernel<GLM_CU_SCALE_CHANNEL, 1>
                                                                     : gemv_fp8mma_kernel<GLM_CU_SCALE_CHANNEL, 0>)
                                                            : (a.glu ? gemv_fp8mma_kernel<GLM_CU_SCALE_BLOCK, 1>
                                                                     : gemv_fp8mma_kernel<GLM_CU_SCALE_BLOCK, 0>);
    CUDA_CHECK(glm_cu_smem_limit((const void *)k, FM_SMEM));
    k<<<grid, FM_WARPS * 32, FM_SMEM, st>>>(a);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// FP8 weights with channel or block scales, and an up half (glu) of the same kind and shape.
static int fp8_scaled(const glm_cu_mat *w, const glm_cu_mat *up) {
    const int sk = w->scale_kind;
    return w->dtype == GLM_CU_FP8 && (sk == GLM_CU_SCALE_CHANNEL || sk == GLM_CU_SCALE_BLOCK) &&
           (!up || (up->dtype == GLM_CU_FP8 && up->scale_kind == sk && up->N == w->N && up->K == w->K));
}

static int fm_ok(const glm_cu_mat *w, const glm_cu_mat *up, unsigned flags) {
    return !(flags & GLM_CU_GEMV_CUDA_CORES) && fp8_scaled(w, up);
}

// The bulk-copy kernel takes one token of such weights, rows of whole 16-byte chunks up
// to GB_KMAX columns, on sm_90 and later.
static int gb_ok(const glm_cu_mat *w, const glm_cu_mat *up, unsigned flags) {
    return !(flags & GLM_CU_GEMV_NO_BULK) && glm_cu_arch() >= 90 && fp8_scaled(w, up) && w->K % 16 == 0 &&
           w->K <= GB_KMAX;
}

// Rows up to 8192 columns: two stages and two blocks an SM; wider ones (x takes 48 KB):
// four stages and one block (measured: o 5120x12288 19.8 against 23.0 us; at 5120
// columns four stages were slower, 36.0 against 34.7 us for 2x12288x5120). The tiles
// of a group are spread so that every block gets the same number of them and all
// blocks fit at once.
static int gb_launch(gemv_args &a, unsigned gy, cudaStream_t st) {
    const int wide = a.w.K > 8192;
    a.gb_stages = wide ? 4 : 2;
    const int smem = a.gb_stages * GB_STAGE + a.w.K * 4;
    const long long slots = (long long)(wide ? 1 : 2) * glm_cu_sm_count();
    long long per = 1, gx = a.n_rb;
    while (gx * gy > slots && gx > 1) { per++; gx = (a.n_rb + per - 1) / per; }
    void (*k)(const gemv_args) = a.w.scale_kind == GLM_CU_SCALE_CHANNEL
                                     ? (a.glu ? gemv_bulk_kernel<GLM_CU_SCALE_CHANNEL, 1> : gemv_bulk_kernel<GLM_CU_SCALE_CHANNEL, 0>)
                                     : (a.glu ? gemv_bulk_kernel<GLM_CU_SCALE_BLOCK, 1> : gemv_bulk_kernel<GLM_CU_SCALE_BLOCK, 0>);
    CUDA_CHECK(glm_cu_smem_limit((const void *)k, smem));
    k<<<dim3((unsigned)gx, gy), (GB_CW + 1) * 32, smem, st>>>(a);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        cudaFuncAttributes fa;
        memset(&fa, 0, sizeof fa);
        cudaFuncGetAttributes(&fa, (const void *)k);
        cudaGetLastError();
        return glm_err(GLM_CU_ERR_CUDA, "gemv (bulk copies) of %d x %d: launch of %lld x %u blocks with %d bytes of shared "
                       "memory (the kernel allows %d dynamic, %zu static) failed: %s",
                       a.w.N, a.w.K, gx, gy, smem, fa.maxDynamicSharedSizeBytes, fa.sharedSizeBytes, cudaGetErrorString(e));
    }
    return 0;
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
                           int x_gather, unsigned flags, cudaStream_t st) {
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
    const unsigned grid = g ? (unsigned)g->max_groups : 1u;
    if (g && g->max_groups <= 0) return 0;
    if (T == 1 && gb_ok(w, up, flags) && (!g || g->max_count <= 1)) {
        a.n_rb = (w->N + (up ? 8 : GB_ROWS) - 1) / (up ? 8 : GB_ROWS);
        return gb_launch(a, grid, st);
    }
    if (T >= 2 && fm_ok(w, up, flags)) {
        const int rt = up ? 8 : 16;  // outputs per warp tile
        a.ksplit = fm_ksplit((w->N + rt - 1) / rt, g ? g->max_groups : 1, w->K);
        const int rpb = rt * FM_WARPS / a.ksplit;
        a.n_rb = (w->N + rpb - 1) / rpb;
        return fm_launch(a, w->scale_kind, grid, st);
    }
    int outs_per_block = a.glu ? GEMV_WARPS : GEMV_WARPS * 2;
    a.ksplit = 1;
    if (!g && (w->N + outs_per_block - 1) / outs_per_block < glm_cu_sm_count()) {  // few rows: split K instead
        a.ksplit = GEMV_WARPS;
        outs_per_block /= GEMV_WARPS;
    }
    a.n_rb = (w->N + outs_per_block - 1) / outs_per_block;
    if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_CHANNEL) launch_gemv_tc<GLM_CU_FP8, GLM_CU_SCALE_CHANNEL>(a, tc, grid, st);
    else if (w->dtype == GLM_CU_FP8 && w->scale_kind == GLM_CU_SCALE_BLOCK) launch_gemv_tc<GLM_CU_FP8, GLM_CU_SCALE_BLOCK>(a, tc, grid, st);
    else if (w->dtype == GLM_CU_BF16) launch_gemv_tc<GLM_CU_BF16, GLM_CU_SCALE_NONE>(a, tc, grid, st);
    else if (w->dtype == GLM_CU_F32) launch_gemv_tc<GLM_CU_F32, GLM_CU_SCALE_NONE>(a, tc, grid, st);
    else return glm_err(-7, "gemv: weight type %d with scale kind %d is not supported", w->dtype, w->scale_kind);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// The weights of a multi launch and the first row block of each, rpb rows a block.
static void multi_table(gemv_args &a, const glm_cu_mat *ws, const float *const *bias, float *const *ys, const int *ldy,
                        int n, int rpb) {
    int total = 0;
    for (int i = 0; i < n; i++) {
        a.mw[i] = ws[i]; a.mbias[i] = bias ? bias[i] : nullptr; a.my[i] = ys[i]; a.mldy[i] = ldy[i];
        a.mblock[i] = total;
        total += (ws[i].N + rpb - 1) / rpb;
    }
    a.n_rb = total;
}

extern "C" int glm_cu_gemv_multi(const glm_cu_mat *ws, const float *const *bias, float *const *ys, const int *ldy,
                                 int n, const float *x, int ldx, int T, unsigned flags, cudaStream_t st) {
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
    if (T == 1 && gb_ok(&ws[0], nullptr, flags)) {
        multi_table(a, ws, bias, ys, ldy, n, GB_ROWS);
        return gb_launch(a, 1, st);
    }
    if (T >= 2 && fm_ok(&ws[0], nullptr, flags)) {
        long long tiles = 0;
        for (int i = 0; i < n; i++) tiles += (ws[i].N + 15) / 16;
        a.ksplit = fm_ksplit(tiles, 1, ws[0].K);
        multi_table(a, ws, bias, ys, ldy, n, 16 * FM_WARPS / a.ksplit);
        return fm_launch(a, ws[0].scale_kind, 1, st);
    }
    int per = GEMV_WARPS * 2, total = 0;
    for (int i = 0; i < n; i++) total += (ws[i].N + per - 1) / per;
    a.ksplit = 1;
    if (total < glm_cu_sm_count()) { a.ksplit = GEMV_WARPS; per = 2; }
    multi_table(a, ws, bias, ys, ldy, n, per);
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
