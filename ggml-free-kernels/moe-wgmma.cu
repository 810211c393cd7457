// moe-wgmma.cu - grouped FP8 GEMM on Hopper's warpgroup tensor cores (wgmma) for the
// prefill experts: one launch covers every touched expert, the tile list is built on
// the device from the group offsets, so no count comes back to the host.
//
// Block tile: 128 weight rows (two warpgroups, m64 each) x 128 sorted positions,
// k in steps of 128 (one activation scale block). Operands go global -> shared
// memory by TMA in a 6-stage ring, in the 128-byte swizzled K-major layout wgmma
// reads through its matrix descriptors (16-byte chunk c of row r stored at chunk
// c ^ (r & 7)). Each 128-k step runs four m64n128k32 e4m3 wgmma into fresh
// accumulators, which are then added to float32 totals scaled by the activation
// scale of each position (and the 128x128 weight scale); per-channel weight scales
// apply once at the end, and the results are stored as BF16 (half the bytes for the
// SwiGLU and the combine that read them). So both weight formats are exact up to the products' own
// rounding, as in moe-mma.cu.
#include "common.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <string.h>

#define WG_BM 128        // weight rows per block
#define WG_BN 128        // sorted positions per block
#define WG_BK 128        // k per stage
#define WG_STAGES 6
#define WG_THREADS 256   // the consumers (two warpgroups); a producer warpgroup more
#define WG_TILE_BYTES (WG_BM * WG_BK)                  // 16 KB, also the X tile
#define WG_STAGE_BYTES (2 * WG_TILE_BYTES + 1024)      // W, X, activation scales (1024-aligned)
#define WG_SMEM (WG_STAGES * WG_STAGE_BYTES + 1024)     // + alignment slack

struct wg_args {
    glm_cu_mat w;
    const uint8_t *xq;     // [R][K] e4m3, sorted positions
    const float *xs;       // [K/128][ld_s]
    int ld_s;
    uint16_t *y;           // [R][ldy] BF16
    int ldy, R;
    const int32_t *tiles;  // NULL: dense; else [0] = count, then (expert, first position, positions) triples
};

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

#if WG_HAVE
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

// TMA: a box of the tensor map at the coordinates into shared memory, counted on bar.
__device__ __forceinline__ void tma_2d(uint32_t dst, uint64_t map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
        ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}
__device__ __forceinline__ void tma_3d(uint32_t dst, uint64_t map, int c0, int c1, int c2, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
        ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
#endif

#if WG_HAVE
// Work item w of a launch with NB row tiles: row tile nb = w % NB of position tile
// w / NB (expert e, positions p0 + [0, cnt)); row tile fastest, so the blocks running
// together share a position tile's activations in L2.
struct wg_item { int e, p0, cnt, nb; };
__device__ __forceinline__ int wg_items(const wg_args &a, int NB) {
    return NB * (a.tiles ? a.tiles[0] : (a.R + WG_BN - 1) / WG_BN);
}
__device__ __forceinline__ wg_item wg_item_of(const wg_args &a, int NB, int w) {
    wg_item it;
    const int pt = w / NB;
    it.nb = w - pt * NB;
    if (a.tiles) {
        const int32_t *t = a.tiles + 1 + 3 * pt;
        it.e = t[0]; it.p0 = t[1]; it.cnt = t[2];
    } else {
        it.e = 0; it.p0 = pt * WG_BN; it.cnt = min(WG_BN, a.R - it.p0);
    }
    return it;
}

// The dynamic shared memory from its first 1024-byte boundary (the 128-byte swizzle
// repeats every 1024 bytes; WG_SMEM and WT_SMEM leave the slack).
__device__ __forceinline__ uint8_t *wg_smem() {
    extern __shared__ uint8_t smem_raw[];
    return smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
}

// The ring's barriers: stage s "full" at fb + 8s (full_count arrivals), "empty" at
// eb + 8s (every consumer thread); then the whole block syncs.
__device__ __forceinline__ void wg_ring_init(uint32_t fb, uint32_t eb, int stages, int full_count) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; s++) {
            mbar_init(fb + 8 * s, full_count);
            mbar_init(eb + 8 * s, WG_THREADS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
}
#endif

// Pipeline: a producer warp (threads 256..287 of a third warpgroup, which hands its
// registers to the other two) fills a ring of WG_STAGES stages: W and
// X by TMA (lane 0), the activation scales by cp.async (a lane four), all counted on
// the stage's "full" mbarrier; the two consumer warpgroups wait on it, run blocks in
// pairs (the second's products on the tensor cores while the first's are scaled into
// the totals) and release each stage on its "empty" mbarrier, so no barrier spans
// the block and the warpgroups drift and interleave on the tensor cores. Persistent:
// one block an SM walks the work items (row tile fastest, then position tile) with a
// grid stride, the ring running on across items, so the next item's loads proceed
// under this one's last products and its stores.
template <int SK>
__global__ void __launch_bounds__(WG_THREADS + 128, 1)
moe_wgmma_kernel(const wg_args a, const __grid_constant__ CUtensorMap tmw, const __grid_constant__ CUtensorMap tmx) {
#if WG_HAVE
    __shared__ __align__(8) uint64_t full[WG_STAGES], empty[WG_STAGES];
    uint8_t *sm = wg_smem();
    const uint32_t sbase = smem_u32(sm), fb = smem_u32(full), eb = smem_u32(empty);
    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31, wq = (tid >> 5) & 3;
    const int g = lane >> 2, tq = lane & 3;

    const int K = a.w.K, KB = K >> 7, NB = a.w.N / WG_BM, items = wg_items(a, NB);
    auto item_of = [&](int w) { return wg_item_of(a, NB, w); };
    wg_ring_init(fb, eb, WG_STAGES, 1 + 32);  // full: the TMA bytes' arrival + each producer lane's scales

    if (tid >= WG_THREADS) {  // producer warpgroup: one warp works
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (tid >= WG_THREADS + 32) return;
        // the maps stay in parameter space (__grid_constant__): only their addresses travel
        const uint64_t mapw = reinterpret_cast<uint64_t>(&tmw), mapx = reinterpret_cast<uint64_t>(&tmx);
        int i = 0;  // stages filled so far, across items
        for (int w = blockIdx.x; w < items; w += gridDim.x) {
            const wg_item t = item_of(w);
            for (int kb = 0; kb < KB; kb++, i++) {
                const int s = i % WG_STAGES;
                if (i >= WG_STAGES) mbar_wait(eb + 8 * s, ((i / WG_STAGES) - 1) & 1);
                const uint32_t st = sbase + s * WG_STAGE_BYTES, bar = fb + 8 * s;
                if (lane == 0) {
                    // W rows of the row tile of expert e and X rows p0.. (rows past R read as
                    // zeros; rows of the next expert are computed and not stored)
                    mbar_expect(bar, 2 * WG_TILE_BYTES);
                    tma_3d(st, mapw, kb * WG_BK, t.nb * WG_BM, t.e, bar);
                    tma_2d(st + WG_TILE_BYTES, mapx, kb * WG_BK, t.p0, bar);
                }
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const int q = lane * 4 + r;
                    cp_async4(st + 2 * WG_TILE_BYTES + q * 4, q < t.cnt ? a.xs + (size_t)kb * a.ld_s + t.p0 + q : a.xs,
                              q < t.cnt ? 4 : 0);
                }
                asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
            }
        }
        asm volatile("cp.async.wait_all;\n" ::: "memory");
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    // stage i of the ring (counted across items)
    auto landed = [&](int i) { mbar_wait(fb + 8 * (i % WG_STAGES), (i / WG_STAGES) & 1); };
    auto release = [&](int i) { mbar_arrive(eb + 8 * (i % WG_STAGES)); };
    auto xsc_of = [&](int i) { return (const float *)(sm + (i % WG_STAGES) * WG_STAGE_BYTES + 2 * WG_TILE_BYTES); };
    auto sa_of = [&](int i) { return sbase + (i % WG_STAGES) * WG_STAGE_BYTES; };

    float acc[64], d0[64], d1[64];
    int i0 = 0;  // the item's first stage
#pragma unroll 1
    for (int w = blockIdx.x; w < items; w += gridDim.x, i0 += KB) {
        const wg_item t = item_of(w);
        const float *wscale = a.w.scale + (long long)t.e * a.w.s_stride;
        auto wsb_of = [&](int kb) { return SK == GLM_CU_SCALE_BLOCK ? __ldg(wscale + (size_t)t.nb * a.w.s_ld + kb) : 1.f; };
#pragma unroll
        for (int q = 0; q < 64; q++) acc[q] = 0.f;

        // blocks kb and kb + 1 into d0 and d1; d0 is promoted while d1's products run
#pragma unroll 1
        for (int kb = 0; kb + 1 < KB; kb += 2) {
            const int i = i0 + kb;
            landed(i);
            landed(i + 1);
            const uint32_t s0 = sa_of(i), s1 = sa_of(i + 1);
            wg_fence_regs(d0);
            wg_fence_regs(d1);
            wg_issue(d0, s0 + wg * (64 * 128), s0 + WG_TILE_BYTES);
            wg_issue(d1, s1 + wg * (64 * 128), s1 + WG_TILE_BYTES);
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            wg_fence_regs(d0);
            wg_promote(acc, d0, xsc_of(i), wsb_of(kb), tq);
            release(i);
            asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
            wg_fence_regs(d1);
            wg_promote(acc, d1, xsc_of(i + 1), wsb_of(kb + 1), tq);
            release(i + 1);
        }
        if (KB & 1) {  // the last block alone
            const int i = i0 + KB - 1;
            landed(i);
            const uint32_t s0 = sa_of(i);
            wg_fence_regs(d0);
            wg_issue(d0, s0 + wg * (64 * 128), s0 + WG_TILE_BYTES);
            asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
            wg_fence_regs(d0);
            wg_promote(acc, d0, xsc_of(i), wsb_of(KB - 1), tq);
            release(i);
        }

        // rows of the row tile: 64wg + 16wq + g (+8), positions 8j + 2tq (+1)
        const int row = t.nb * WG_BM + wg * 64 + wq * 16 + g;
        const float c0 = SK == GLM_CU_SCALE_CHANNEL ? __ldg(wscale + row) : 1.f;
        const float c8 = SK == GLM_CU_SCALE_CHANNEL ? __ldg(wscale + row + 8) : 1.f;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int p = 8 * j + 2 * tq;
            uint16_t *y0 = a.y + (size_t)(t.p0 + p) * a.ldy + row;
            if (p < t.cnt) { y0[0] = f_to_bf16(acc[4 * j + 0] * c0); y0[8] = f_to_bf16(acc[4 * j + 2] * c8); }
            if (p + 1 < t.cnt) { y0[a.ldy] = f_to_bf16(acc[4 * j + 1] * c0); y0[a.ldy + 8] = f_to_bf16(acc[4 * j + 3] * c8); }
        }
    }
#else
    __trap();  // built without sm_90a: glm_cu_wgmma_ok refuses before any launch
#endif
}

// Channel-scaled weights with one activation scale a position (glm_cu_quant_fp8,
// block128 = 0): the products need no scaling until the end, so the accumulators run
// over all of K and the registers the promotion took carry a second row tile instead.
// Block tile: 256 weight rows (each consumer warpgroup two m64 tiles) x 128 positions,
// k in steps of 128, a 4-stage ring of 48 KB stages (W by one 256-row TMA box, X by
// one 128-row box). Each X tile now serves twice the weight rows, so a block moves
// three quarters of the bytes the 128-row tile did for the same products. Rows past N
// (N % 256 == 128) arrive as zeros from the TMA and are not stored. Same producer,
// ring and item walk as moe_wgmma_kernel; each block's products are waited for one
// block later, so two blocks' products are queued on the tensor cores.
#define WT_BM 256
#define WT_STAGES 4
#define WT_W_BYTES (WT_BM * WG_BK)                     // 32 KB
#define WT_STAGE_BYTES (WT_W_BYTES + WG_TILE_BYTES)    // + X 16 KB
#define WT_SMEM (WT_STAGES * WT_STAGE_BYTES + 1024)

__global__ void __launch_bounds__(WG_THREADS + 128, 1)
moe_wgmma_tok_kernel(const wg_args a, const __grid_constant__ CUtensorMap tmw, const __grid_constant__ CUtensorMap tmx) {
#if WG_HAVE
    __shared__ __align__(8) uint64_t full[WT_STAGES], empty[WT_STAGES];
    const uint32_t sbase = smem_u32(wg_smem()), fb = smem_u32(full), eb = smem_u32(empty);
    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31, wq = (tid >> 5) & 3;
    const int g = lane >> 2, tq = lane & 3;

    const int K = a.w.K, KB = K >> 7, N = a.w.N, NB = (N + WT_BM - 1) / WT_BM, items = wg_items(a, NB);
    auto item_of = [&](int w) { return wg_item_of(a, NB, w); };
    wg_ring_init(fb, eb, WT_STAGES, 1);  // full: the TMA bytes' arrival

    if (tid >= WG_THREADS) {  // producer warpgroup: one lane works
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (tid != WG_THREADS) return;
        const uint64_t mapw = reinterpret_cast<uint64_t>(&tmw), mapx = reinterpret_cast<uint64_t>(&tmx);
        int i = 0;
        for (int w = blockIdx.x; w < items; w += gridDim.x) {
            const wg_item t = item_of(w);
            for (int kb = 0; kb < KB; kb++, i++) {
                const int s = i % WT_STAGES;
                if (i >= WT_STAGES) mbar_wait(eb + 8 * s, ((i / WT_STAGES) - 1) & 1);
                const uint32_t st = sbase + s * WT_STAGE_BYTES, bar = fb + 8 * s;
                mbar_expect(bar, WT_STAGE_BYTES);
                tma_3d(st, mapw, kb * WG_BK, t.nb * WT_BM, t.e, bar);
                tma_2d(st + WT_W_BYTES, mapx, kb * WG_BK, t.p0, bar);
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    float acc0[64], acc1[64];  // m64 tiles 2wg and 2wg + 1 of the 256 rows
    int i0 = 0;
#pragma unroll 1
    for (int w = blockIdx.x; w < items; w += gridDim.x, i0 += KB) {
        const wg_item t = item_of(w);
#pragma unroll
        for (int q = 0; q < 64; q++) acc0[q] = acc1[q] = 0.f;
#pragma unroll 1
        for (int kb = 0; kb < KB; kb++) {
            const int i = i0 + kb, s = i % WT_STAGES;
            mbar_wait(fb + 8 * s, (i / WT_STAGES) & 1);
            const uint32_t sa = sbase + s * WT_STAGE_BYTES + wg * (128 * 128), sb = sbase + s * WT_STAGE_BYTES + WT_W_BYTES;
            wg_fence_regs(acc0);
            wg_fence_regs(acc1);
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                wgmma_m64n128k32(acc0, wg_desc(sa + kk * 32), wg_desc(sb + kk * 32), 1);
                wgmma_m64n128k32(acc1, wg_desc(sa + 64 * 128 + kk * 32), wg_desc(sb + kk * 32), 1);
            }
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // block kb - 1 is done
            wg_fence_regs(acc0);
            wg_fence_regs(acc1);
            if (kb > 0) mbar_arrive(eb + 8 * ((i - 1) % WT_STAGES));
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        wg_fence_regs(acc0);
        wg_fence_regs(acc1);
        mbar_arrive(eb + 8 * ((i0 + KB - 1) % WT_STAGES));

        // rows 256nb + 128wg + 64m + 16wq + g (+8), positions 8j + 2tq (+1); y = acc * cw[row] * xs[p]
        const float *wscale = a.w.scale + (long long)t.e * a.w.s_stride;
        auto store = [&](const float (&acc)[64], int m) {
            const int row = t.nb * WT_BM + wg * 128 + m * 64 + wq * 16 + g;
            if (row >= N) return;  // the zero rows of a half tile (N % 128 == 0: whole m64 tiles)
            const float c0 = __ldg(wscale + row), c8 = __ldg(wscale + row + 8);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const int p = 8 * j + 2 * tq;
                uint16_t *y0 = a.y + (size_t)(t.p0 + p) * a.ldy + row;
                if (p < t.cnt) {
                    const float x0 = __ldg(a.xs + t.p0 + p);
                    y0[0] = f_to_bf16(acc[4 * j + 0] * c0 * x0);
                    y0[8] = f_to_bf16(acc[4 * j + 2] * c8 * x0);
                }
                if (p + 1 < t.cnt) {
                    const float x1 = __ldg(a.xs + t.p0 + p + 1);
                    y0[a.ldy] = f_to_bf16(acc[4 * j + 1] * c0 * x1);
                    y0[a.ldy + 8] = f_to_bf16(acc[4 * j + 3] * c8 * x1);
                }
            }
        };
        store(acc0, 0);
        store(acc1, 1);
    }
#else
    __trap();  // built without sm_90a: glm_cu_wgmma_ok refuses before any launch
#endif
}

// The tile list: for each expert with positions, runs of up to WG_BN of them. One
// warp: 32 experts at a time, each lane's tile count placed by a warp scan.
__global__ void moe_tiles_kernel(const int32_t *off, int E, int32_t *tiles) {
    const int lane = threadIdx.x;
    int n = 0;  // tiles before this round of 32 experts
    for (int e0 = 0; e0 < E; e0 += 32) {
        const int e = e0 + lane;
        const int o = e < E ? off[e] : 0, c = e < E ? off[e + 1] - o : 0, nt = (c + WG_BN - 1) / WG_BN;
        int incl = nt;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, incl, d);
            if (lane >= d) incl += v;
        }
        for (int r = 0, i = n + incl - nt; r < c; r += WG_BN, i++) {
            tiles[1 + 3 * i] = e;
            tiles[2 + 3 * i] = o + r;
            tiles[3 + 3 * i] = min(WG_BN, c - r);
        }
        n += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) tiles[0] = n;
}

extern "C" int glm_cu_wgmma_tiles(const int32_t *off, int n_expert, int32_t *tiles, cudaStream_t st) {
    moe_tiles_kernel<<<1, 32, 0, st>>>(off, n_expert, tiles);
    CUDA_CHECK_LAUNCH();
    return 0;
}

static PFN_cuTensorMapEncodeTiled_v12000 wg_encoder(void) {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    static int tried = 0;
    if (!tried) {
        tried = 1;
        void *p = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
        cudaGetLastError();
    }
    return fn;
}

// Whether the current device is an sm_90 and the tensor-map encoder was found.
static int wg_arch_ok(void) { return glm_cu_arch() == 90 && wg_encoder() != nullptr; }

extern "C" int glm_cu_wgmma_ok(const glm_cu_mat *w) {
    return wg_arch_ok() && w->dtype == GLM_CU_FP8 && w->K % WG_BK == 0 && w->N % WG_BM == 0 &&
           ((uintptr_t)w->data & 15) == 0 && w->stride % 16 == 0 &&
           (w->scale_kind == GLM_CU_SCALE_CHANNEL || w->scale_kind == GLM_CU_SCALE_BLOCK);
}

extern "C" size_t glm_cu_wgmma_tiles_ints(int R, int n_expert) {
    return 1 + 3 * ((size_t)R / WG_BN + (size_t)(R < n_expert ? R : n_expert) + 1);
}

// A tensor map over rank dims (innermost first; strides in bytes of dims 1..), boxes of box[].
static int wg_map(CUtensorMap *m, CUtensorMapDataType dt, int rank, const void *base, const cuuint64_t *dims,
                  const cuuint64_t *strides, const cuuint32_t *box, CUtensorMapSwizzle sw) {
    const cuuint32_t one[3] = {1, 1, 1};
    const CUresult r = wg_encoder()(m, dt, (cuuint32_t)rank, (void *)base, dims, strides, box, one,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) return glm_err(GLM_CU_ERR_CUDA, "%s:%d: cuTensorMapEncodeTiled failed: %d", __FILE__, __LINE__, (int)r);
    return 0;
}

template <int SK>
static int wg_launch(const wg_args &a, dim3 grid, const CUtensorMap *m, cudaStream_t st) {
    CUDA_CHECK(glm_cu_smem_limit((const void *)moe_wgmma_kernel<SK>, WG_SMEM));
    moe_wgmma_kernel<SK><<<grid, WG_THREADS + 128, WG_SMEM, st>>>(a, m[0], m[1]);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_gemm_fp8_wgmma(const glm_cu_mat *w, const uint8_t *xq, const float *xs, int ld_s, uint16_t *y,
                                     int ldy, int R, int n_expert, const int32_t *tiles, int act_block,
                                     cudaStream_t st) {
    if (R <= 0) return 0;
    if (!glm_cu_wgmma_ok(w))
        return glm_err(-7, "wgmma: weight %d x %d (type %d) not supported (sm_90 FP8, K %% 128 == 0, N %% 128 == 0)",
                       w->N, w->K, w->dtype);
    if (!act_block && w->scale_kind != GLM_CU_SCALE_CHANNEL)
        return glm_err(-7, "wgmma: one activation scale a position needs per-channel weight scales");
    if (ld_s % 4 || ld_s < R || ((uintptr_t)xq & 15) || ((uintptr_t)xs & 15))
        return glm_err(-7, "wgmma: activations not 16-byte aligned or scale stride %d (of %d rows) not a multiple of 4",
                       ld_s, R);
    wg_args a;
    memset(&a, 0, sizeof a);
    a.w = *w;
    a.xq = xq; a.xs = xs; a.ld_s = ld_s; a.y = y; a.ldy = ldy; a.R = R;
    // W [experts][N][K], X [R][K] bytes in boxes of 128 k x (128 or 256 rows) (128-byte swizzle)
    const int ne = tiles ? n_expert : 1, bm = act_block ? WG_BM : WT_BM;
    CUtensorMap m[2];
    const cuuint64_t wd[3] = {(cuuint64_t)w->K, (cuuint64_t)w->N, (cuuint64_t)ne}, ws[2] = {(cuuint64_t)w->K, (cuuint64_t)w->stride};
    const cuuint64_t xd[2] = {(cuuint64_t)w->K, (cuuint64_t)R}, xst[1] = {(cuuint64_t)w->K};
    const cuuint32_t wbox[3] = {WG_BK, (cuuint32_t)bm, 1}, xbox[2] = {WG_BK, WG_BN};
    if (wg_map(&m[0], CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, w->data, wd, ws, wbox, CU_TENSOR_MAP_SWIZZLE_128B) ||
        wg_map(&m[1], CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, xq, xd, xst, xbox, CU_TENSOR_MAP_SWIZZLE_128B))
        return GLM_CU_ERR_CUDA;
    unsigned ty = (unsigned)((R + WG_BN - 1) / WG_BN);
    if (tiles) {
        a.tiles = tiles;
        ty = (unsigned)(glm_cu_wgmma_tiles_ints(R, n_expert) - 1) / 3;
    }
    // persistent: at most one block an SM, over (row tiles) x (position tiles) items
    const long long items = (long long)((w->N + bm - 1) / bm) * ty, sms = glm_cu_sm_count();
    const dim3 grid((unsigned)(items < sms ? items : sms));
    if (!act_block) {
        CUDA_CHECK(glm_cu_smem_limit((const void *)moe_wgmma_tok_kernel, WT_SMEM));
        moe_wgmma_tok_kernel<<<grid, WG_THREADS + 128, WT_SMEM, st>>>(a, m[0], m[1]);
        CUDA_CHECK_LAUNCH();
        return 0;
    }
    return w->scale_kind == GLM_CU_SCALE_CHANNEL ? wg_launch<GLM_CU_SCALE_CHANNEL>(a, grid, m, st)
                                                 : wg_launch<GLM_CU_SCALE_BLOCK>(a, grid, m, st);
}
