// moe-wgmma.cu - grouped FP8 GEMM on Hopper's warpgroup tensor cores (wgmma) for the
// prefill experts: one launch covers every touched expert, the tile list is built on
// the device from the group offsets, so no count comes back to the host.
//
// Block tile: 128 weight rows (two warpgroups, m64 each) x 128 sorted positions,
// k in steps of 128 (one activation scale block). Operands go global -> shared
// memory with cp.async in a 6-stage ring, in the 128-byte swizzled K-major layout
// wgmma reads through its matrix descriptors (16-byte chunk c of row r stored at
// chunk c ^ (r & 7)). Each 128-k step runs four m64n128k32 e4m3 wgmma into fresh
// accumulators, which are then added to float32 totals scaled by the activation
// scale of each position (and the 128x128 weight scale); per-channel weight scales
// apply once at the end. So both weight formats are exact up to the products' own
// rounding, as in moe-mma.cu.
#include "common.cuh"

#include <string.h>

#define WG_BM 128        // weight rows per block
#define WG_BN 128        // sorted positions per block
#define WG_BK 128        // k per stage
#ifndef WG_STAGES
#define WG_STAGES 6
#endif
#define WG_THREADS 256
#define WG_TILE_BYTES (WG_BM * WG_BK)                  // 16 KB, also the X tile
#define WG_STAGE_BYTES (2 * WG_TILE_BYTES + 1024)      // W, X, activation scales (1024-aligned)
#define WG_SMEM (WG_STAGES * WG_STAGE_BYTES + 1024)     // + alignment slack

struct wg_args {
    glm_cu_mat w;
    const uint8_t *xq;     // [R][K] e4m3, sorted positions
    const float *xs;       // [K/128][ld_s]
    int ld_s;
    float *y;
    int ldy, R;
    const int32_t *tiles;  // NULL: dense; else [0] = count, then (expert, first position, positions) triples
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_HAVE 1
// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

#define WG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
// d[64] (+)= A[64 x 32] . B[128 x 32]^T, both e4m3 K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n128k32(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
        "%64, %65, p, 1, 1;\n}\n"
        : WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24), WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
        : "l"(da), "l"(db), "r"(accumulate));
}
#else
#define WG_HAVE 0
#endif

#if WG_HAVE
// Pins the accumulators in order with the asm around them: the compiler may not move
// reads of them across a wgmma wait (ptxas would serialise the products otherwise).
__device__ __forceinline__ void wg_fence_regs(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// d = the four k32 steps of one 128-k block (A: 64 weight rows at sa, B: 128 positions at sb).
__device__ __forceinline__ void wg_issue(float (&d)[64], uint32_t sa, uint32_t sb) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_m64n128k32(d, wg_desc(sa + kk * 32), wg_desc(sb + kk * 32), kk);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// acc += d scaled by each position's activation scale (and the block's weight scale):
// d[4j + i] is row g (+8 for i >= 2) and position 8j + 2tq + (i & 1).
__device__ __forceinline__ void wg_promote(float (&acc)[64], const float (&d)[64], const float *xsc, float wsb, int tq) {
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const float2 sx = *(const float2 *)(xsc + 8 * j + 2 * tq);
        const float s0 = sx.x * wsb, s1 = sx.y * wsb;
        acc[4 * j + 0] = fmaf(d[4 * j + 0], s0, acc[4 * j + 0]);
        acc[4 * j + 1] = fmaf(d[4 * j + 1], s1, acc[4 * j + 1]);
        acc[4 * j + 2] = fmaf(d[4 * j + 2], s0, acc[4 * j + 2]);
        acc[4 * j + 3] = fmaf(d[4 * j + 3], s1, acc[4 * j + 3]);
    }
}
#endif

// Pipeline: loads run WG_STAGES - 2 blocks ahead; blocks go in pairs, the second's
// products running on the tensor cores while the first's are scaled into the totals.
template <int SK>
__global__ void __launch_bounds__(WG_THREADS, 1) moe_wgmma_kernel(const wg_args a) {
#if WG_HAVE
    extern __shared__ uint8_t smem_raw[];
    uint8_t *sm = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    const uint32_t sbase = smem_u32(sm);
    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31, wq = (tid >> 5) & 3;
    const int g = lane >> 2, tq = lane & 3;

    int e = 0, p0, cnt;
    if (a.tiles) {
        if ((int)blockIdx.y >= a.tiles[0]) return;
        const int32_t *t = a.tiles + 1 + 3 * blockIdx.y;
        e = t[0]; p0 = t[1]; cnt = t[2];
    } else {
        p0 = blockIdx.y * WG_BN;
        cnt = min(WG_BN, a.R - p0);
    }
    const int K = a.w.K, KB = K >> 7, nb = blockIdx.x, n0 = nb * WG_BM;
    const float *wscale = a.w.scale + (long long)e * a.w.s_stride;

    // this thread's copies: rows r0 + 32j (j < 4) of W and X, 16-byte chunk c, all landing
    // at the same swizzled chunk since r & 7 does not change with j
    const int r0 = tid >> 3, c = tid & 7;
    const uint32_t dst0 = r0 * 128 + ((c ^ (r0 & 7)) << 4);
    const uint8_t *wsrc = (const uint8_t *)a.w.data + (long long)e * a.w.stride + (size_t)(n0 + r0) * K + c * 16;
    const uint8_t *xsrc = a.xq + (size_t)(p0 + r0) * K + c * 16;
    const float *ssrc = a.xs + p0 + tid;
    auto load = [&](int kb) {
        const uint32_t st = sbase + (kb % WG_STAGES) * WG_STAGE_BYTES + dst0;
        const size_t k0 = (size_t)kb * WG_BK;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            cp_async16(st + j * 4096, wsrc + (size_t)j * 32 * K + k0, 16);
            const bool live = r0 + 32 * j < cnt;
            cp_async16(st + WG_TILE_BYTES + j * 4096, live ? xsrc + (size_t)j * 32 * K + k0 : a.xq, live ? 16 : 0);
        }
        if (tid < WG_BN) {
            const bool live = tid < cnt;
            cp_async4(sbase + (kb % WG_STAGES) * WG_STAGE_BYTES + 2 * WG_TILE_BYTES + tid * 4,
                      live ? ssrc + (size_t)kb * a.ld_s : a.xs, live ? 4 : 0);
        }
    };
    auto wsb_of = [&](int kb) { return SK == GLM_CU_SCALE_BLOCK ? __ldg(wscale + (size_t)nb * a.w.s_ld + kb) : 1.f; };
    auto xsc_of = [&](int kb) { return (const float *)(sm + (kb % WG_STAGES) * WG_STAGE_BYTES + 2 * WG_TILE_BYTES); };

#pragma unroll
    for (int s = 0; s < WG_STAGES - 2; s++) {
        if (s < KB) load(s);
        cp_commit();
    }

    float acc[64], d0[64], d1[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.f;

    // blocks kb and kb + 1 into d0 and d1; d0 is promoted while d1's products run
#pragma unroll 1
    for (int kb = 0; kb + 1 < KB; kb += 2) {
        cp_wait<WG_STAGES - 4>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();  // blocks kb, kb + 1 have landed; every thread is done with kb - 2, kb - 1
        if (kb + WG_STAGES - 2 < KB) load(kb + WG_STAGES - 2);
        cp_commit();
        if (kb + WG_STAGES - 1 < KB) load(kb + WG_STAGES - 1);
        cp_commit();
        const uint32_t s0 = sbase + (kb % WG_STAGES) * WG_STAGE_BYTES, s1 = sbase + ((kb + 1) % WG_STAGES) * WG_STAGE_BYTES;
        wg_fence_regs(d0);
        wg_fence_regs(d1);
        wg_issue(d0, s0 + wg * (64 * 128), s0 + WG_TILE_BYTES);
        wg_issue(d1, s1 + wg * (64 * 128), s1 + WG_TILE_BYTES);
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        wg_fence_regs(d0);
        wg_promote(acc, d0, xsc_of(kb), wsb_of(kb), tq);
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        wg_fence_regs(d1);
        wg_promote(acc, d1, xsc_of(kb + 1), wsb_of(kb + 1), tq);
    }
    if (KB & 1) {  // the last block alone
        cp_wait<0>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        const uint32_t s0 = sbase + ((KB - 1) % WG_STAGES) * WG_STAGE_BYTES;
        wg_fence_regs(d0);
        wg_issue(d0, s0 + wg * (64 * 128), s0 + WG_TILE_BYTES);
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        wg_fence_regs(d0);
        wg_promote(acc, d0, xsc_of(KB - 1), wsb_of(KB - 1), tq);
    }
    cp_wait<0>();

    // rows n0 + 64wg + 16wq + g (+8), positions 8j + 2tq (+1)
    const int row = n0 + wg * 64 + wq * 16 + g;
    const float c0 = SK == GLM_CU_SCALE_CHANNEL ? __ldg(wscale + row) : 1.f;
    const float c8 = SK == GLM_CU_SCALE_CHANNEL ? __ldg(wscale + row + 8) : 1.f;
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int t = 8 * j + 2 * tq;
        float *y0 = a.y + (size_t)(p0 + t) * a.ldy + row;
        if (t < cnt) { y0[0] = acc[4 * j + 0] * c0; y0[8] = acc[4 * j + 2] * c8; }
        if (t + 1 < cnt) { y0[a.ldy] = acc[4 * j + 1] * c0; y0[a.ldy + 8] = acc[4 * j + 3] * c8; }
    }
#else
    __trap();  // built without sm_90a: glm_cu_wgmma_ok refuses before any launch
#endif
}

// The tile list: for each expert with positions, runs of up to WG_BN of them.
__global__ void moe_tiles_kernel(const int32_t *off, int E, int32_t *tiles) {
    if (threadIdx.x != 0) return;
    int n = 0;
    for (int e = 0; e < E; e++) {
        const int o = off[e], c = off[e + 1] - o;
        for (int r = 0; r < c; r += WG_BN) {
            tiles[1 + 3 * n] = e;
            tiles[2 + 3 * n] = o + r;
            tiles[3 + 3 * n] = min(WG_BN, c - r);
            n++;
        }
    }
    tiles[0] = n;
}

static int wg_arch_ok(void) {
    static int cached = -1;
    if (cached < 0) {
        int dev = 0, major = 0, minor = 0;
        cached = cudaGetDevice(&dev) == cudaSuccess &&
                 cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                 cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                 major == 9 && minor == 0;
        cudaGetLastError();
    }
    return cached;
}

extern "C" int glm_cu_wgmma_ok(const glm_cu_mat *w) {
    return wg_arch_ok() && w->dtype == GLM_CU_FP8 && w->K % WG_BK == 0 && w->N % WG_BM == 0 &&
           ((uintptr_t)w->data & 15) == 0 && w->stride % 16 == 0 &&
           (w->scale_kind == GLM_CU_SCALE_CHANNEL || w->scale_kind == GLM_CU_SCALE_BLOCK);
}

extern "C" size_t glm_cu_wgmma_tiles_ints(int R, int n_expert) {
    return 1 + 3 * ((size_t)R / WG_BN + (size_t)(R < n_expert ? R : n_expert) + 1);
}

template <int SK>
static int wg_launch(const wg_args &a, dim3 grid, cudaStream_t st) {
    static int attr_set = 0;
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(moe_wgmma_kernel<SK>, cudaFuncAttributeMaxDynamicSharedMemorySize, WG_SMEM));
        attr_set = 1;
    }
    moe_wgmma_kernel<SK><<<grid, WG_THREADS, WG_SMEM, st>>>(a);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_gemm_fp8_wgmma(const glm_cu_mat *w, const uint8_t *xq, const float *xs, int ld_s, float *y,
                                     int ldy, int R, const int32_t *off, int n_expert, int32_t *tiles,
                                     cudaStream_t st) {
    if (R <= 0) return 0;
    if (!glm_cu_wgmma_ok(w))
        return glm_err(-7, "wgmma: weight %d x %d (type %d) not supported (sm_90 FP8, K %% 128 == 0, N %% 128 == 0)",
                       w->N, w->K, w->dtype);
    wg_args a;
    memset(&a, 0, sizeof a);
    a.w = *w;
    a.xq = xq; a.xs = xs; a.ld_s = ld_s; a.y = y; a.ldy = ldy; a.R = R;
    unsigned ty = (unsigned)((R + WG_BN - 1) / WG_BN);
    if (off) {
        moe_tiles_kernel<<<1, 32, 0, st>>>(off, n_expert, tiles);
        CUDA_CHECK_LAUNCH();
        a.tiles = tiles;
        ty = (unsigned)(glm_cu_wgmma_tiles_ints(R, n_expert) - 1) / 3;
    }
    const dim3 grid((unsigned)(w->N / WG_BM), ty);
    return w->scale_kind == GLM_CU_SCALE_CHANNEL ? wg_launch<GLM_CU_SCALE_CHANNEL>(a, grid, st)
                                                 : wg_launch<GLM_CU_SCALE_BLOCK>(a, grid, st);
}
