// moe.cu - routing for the MoE layers on the device: sigmoid router with the
// correction bias and top-k, the sort of (token, slot) pairs by expert that lets
// the expert GEMMs read each touched expert once, and the weighted combine.
#include "common.cuh"

#define TOPK_MAXPER 16  // experts per lane: n_expert <= 512

__global__ void moe_topk_kernel(const float *logits, const float *bias, int T, int n_expert, int k, int norm,
                                float scale, int32_t *ids, float *w) {
    const int lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (t >= T) return;
    const float *lr = logits + (size_t)t * n_expert;
    float sc[TOPK_MAXPER], ch[TOPK_MAXPER];
#pragma unroll
    for (int i = 0; i < TOPK_MAXPER; i++) {
        const int e = lane + 32 * i;
        if (e < n_expert) {
            const float s = 1.f / (1.f + expf(-lr[e]));
            sc[i] = s;
            ch[i] = s + (bias ? bias[e] : 0.f);
        } else {
            sc[i] = 0.f;
            ch[i] = -INFINITY;
        }
    }
    float sum = 0.f, mine = 0.f;
    int myid = 0;
    for (int r = 0; r < k; r++) {
        float best = -INFINITY;
        int bi = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < TOPK_MAXPER; i++)
            if (ch[i] > best) { best = ch[i]; bi = lane + 32 * i; }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
        }
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < TOPK_MAXPER; i++)
            if (lane + 32 * i == bi) { s = sc[i]; ch[i] = -INFINITY; }
        s = __shfl_sync(0xffffffffu, s, bi & 31);
        sum += s;
        if (lane == r) { mine = s; myid = bi; }
    }
    if (lane < k) {
        float wv = mine;
        if (norm) wv = wv / (sum + 1e-20f);
        ids[(size_t)t * k + lane] = myid;
        w[(size_t)t * k + lane] = wv * scale;
    }
}

extern "C" int glm_cu_moe_topk(const float *logits, const float *bias, int T, int n_expert, int k, int norm,
                               float scale, int32_t *ids, float *w, cudaStream_t st) {
    if (T <= 0) return 0;
    if (n_expert > 32 * TOPK_MAXPER || k > 32 || k > n_expert)
        return glm_err(-7, "router: %d experts, top-%d not supported (<= %d experts, k <= 32)", n_expert, k, 32 * TOPK_MAXPER);
    moe_topk_kernel<<<(T + 3) / 4, 128, 0, st>>>(logits, bias, T, n_expert, k, norm, scale, ids, w);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// Inclusive sums over the warp of three counts a lane.
__device__ __forceinline__ int3 warp_scan3(int3 v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int a = __shfl_up_sync(0xffffffffu, v.x, o), b = __shfl_up_sync(0xffffffffu, v.y, o),
                  c = __shfl_up_sync(0xffffffffu, v.z, o);
        if (lane >= o) { v.x += a; v.y += b; v.z += c; }
    }
    return v;
}

// Exclusive sums over the block of three counts a thread (GROUP_THREADS threads);
// tot gets the totals. Shared: part[32].
#define GROUP_THREADS 1024
__device__ __forceinline__ int3 block_scan3(int3 v, int3 *tot, int3 *part) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int3 in = warp_scan3(v);  // inclusive within the warp
    if (lane == 31) part[warp] = in;
    __syncthreads();
    if (warp == 0) {
        const int3 p = part[lane], q = warp_scan3(p);
        part[lane] = make_int3(q.x - p.x, q.y - p.y, q.z - p.z);  // exclusive over the warps
        if (lane == 31) *tot = q;
    }
    __syncthreads();
    const int3 base = part[warp];
    return make_int3(base.x + in.x - v.x, base.y + in.y - v.y, base.z + in.z - v.z);
}

// One block of GROUP_THREADS. Shared: cnt[E] run[E] wcnt[32][E].
__global__ void __launch_bounds__(GROUP_THREADS) moe_group_kernel(const int32_t *ids, int n, int k, int E, int shared,
                                                                  int32_t *off, int32_t *off4, int32_t *active,
                                                                  int32_t *n_active, int32_t *rows, int32_t *slot_of) {
    extern __shared__ int smi[];
    int *cnt = smi, *run = smi + E, *wcnt = smi + 2 * E;
    __shared__ int3 part[32], tot;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int e = tid; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += blockDim.x) {
        const int e = ids[i];
        if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    {   // offsets and the active list, one expert a thread (E <= GROUP_THREADS): sums of
        // the counts, of the counts rounded up to 4, and of the touched experts
        const int c = tid < E ? cnt[tid] : 0;
        const int3 ex = block_scan3(make_int3(c, (c + 3) & ~3, c > 0), &tot, part);
        if (tid < E) {
            off[tid] = ex.x;
            off4[tid] = ex.y;
            run[tid] = ex.x;
            if (c > 0) active[ex.z] = tid;
        }
        if (tid == 0) {
            const int T = n / k;
            off[E] = tot.x;
            off4[E] = tot.y;
            if (shared) {  // expert E: every token once, in order
                active[tot.z] = E;
                off[E + 1] = tot.x + T;
                off4[E + 1] = tot.y + ((T + 3) & ~3);
            }
            *n_active = tot.z + (shared ? 1 : 0);
        }
    }
    __syncthreads();
    for (int base = 0; base < n; base += blockDim.x) {
        for (int i = tid; i < 32 * E; i += blockDim.x) wcnt[i] = 0;
        __syncthreads();
        const int i = base + tid;
        int e = i < n ? ids[i] : -1;
        if (e >= E) e = -1;
        const unsigned mask = __match_any_sync(0xffffffffu, e);
        const int rank = __popc(mask & ((1u << lane) - 1));
        if (e >= 0 && rank == 0) wcnt[warp * E + e] = __popc(mask);
        __syncthreads();
        if (e >= 0) {
            int pos = run[e] + rank;
            for (int w2 = 0; w2 < warp; w2++) pos += wcnt[w2 * E + e];
            rows[pos] = i / k;
            slot_of[i] = pos;
        } else if (i < n) {
            slot_of[i] = -1;  // an expert this rank does not hold (ids < 0): no position
        }
        __syncthreads();
        for (int e2 = tid; e2 < E; e2 += blockDim.x) {
            int s = 0;
            for (int w2 = 0; w2 < 32; w2++) s += wcnt[w2 * E + e2];
            run[e2] += s;
        }
        __syncthreads();
    }
    const int T = n / k, used = tot.x + (shared ? T : 0);
    if (shared)
        for (int t = tid; t < T; t += blockDim.x) {
            rows[tot.x + t] = t;
            slot_of[n + t] = tot.x + t;
        }
    // positions left over by ids without an expert: token 0, so that launchers sized for
    // every (token, slot) pair read inside the batch
    for (int p = used + tid; p < n + (shared ? T : 0); p += blockDim.x) rows[p] = 0;
}

__global__ void moe_own_kernel(const int32_t *ids, int n, int lo, int hi, int32_t *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = ids[i] >= lo && ids[i] < hi ? ids[i] : -1;
}

extern "C" int glm_cu_moe_own(const int32_t *ids, int n, int lo, int hi, int32_t *out, cudaStream_t st) {
    if (n <= 0) return 0;
    moe_own_kernel<<<(n + 255) / 256, 256, 0, st>>>(ids, n, lo, hi, out);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_moe_group(const int32_t *ids, int T, int k, int n_expert, int shared, int32_t *off,
                                int32_t *off4, int32_t *active, int32_t *n_active, int32_t *rows, int32_t *slot_of,
                                cudaStream_t st) {
    const size_t smem = sizeof(int) * (size_t)34 * n_expert;
    if (n_expert > GROUP_THREADS || smem > 48 * 1024)
        return glm_err(-7, "moe: %d experts exceed the grouping kernel's shared memory", n_expert);
    moe_group_kernel<<<1, GROUP_THREADS, smem, st>>>(ids, T * k, k, n_expert, shared, off, off4, active, n_active, rows,
                                                     slot_of);
    CUDA_CHECK_LAUNCH();
    return 0;
}

template <typename TE>
__global__ void moe_combine_kernel(const TE *eo, const int32_t *slot_of, const float *w, int k, int D, int shared,
                                   float *out) {
    const int t = blockIdx.y;
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    auto at = [&](int s) { return ld_f(eo + (size_t)s * D + d); };
    float a = 0.f;
    for (int j = 0; j < k; j++) {
        const int s = slot_of[(size_t)t * k + j];
        if (s >= 0) a = fmaf(w[(size_t)t * k + j], at(s), a);  // s < 0: another rank's expert
    }
    if (shared) a += at(slot_of[(size_t)gridDim.y * k + t]);
    out[(size_t)t * D + d] = a;
}

extern "C" int glm_cu_moe_combine(const void *eo, int eo_bf16, const int32_t *slot_of, const float *w, int T, int k,
                                  int D, int shared, float *out, cudaStream_t st) {
    if (T <= 0) return 0;
    const dim3 grid((D + 255) / 256, T);
    if (eo_bf16) moe_combine_kernel<<<grid, 256, 0, st>>>((const uint16_t *)eo, slot_of, w, k, D, shared, out);
    else moe_combine_kernel<<<grid, 256, 0, st>>>((const float *)eo, slot_of, w, k, D, shared, out);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// Block-scaled FP8 quantisation of the sorted rows, each expert's scales a dense
// [ceil(K/128)][round4(n_e)] tensor at KB*off4[e], the layout one cuBLASLt call per
// expert reads. One block of 128 threads per sorted position.
__global__ void quant_fp8_grouped_kernel(const float *x, int ldx, const int32_t *rows, const int32_t *off,
                                         const int32_t *off4, int E, int K, int channel, uint8_t *q, float *s) {
    __shared__ float red[32];
    const int p = blockIdx.x;
    int lo = 0, hi = E - 1;  // the expert e with off[e] <= p < off[e+1]
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (off[mid] <= p) lo = mid; else hi = mid - 1;
    }
    while (lo < E - 1 && off[lo + 1] <= p) lo++;
    const int e = lo;
    const float *xr = x + (size_t)(rows ? rows[p] : p) * ldx;
    uint8_t *qr = q + (size_t)p * K;
    if (channel) {  // one scale per row at off4[e] + (p - off[e]): 16-byte aligned per expert
        float amax = 0.f;
        for (int i = threadIdx.x; i < K; i += blockDim.x) amax = fmaxf(amax, fabsf(xr[i]));
        amax = warp_max(amax);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
        __syncthreads();
        amax = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
        const float sc = amax > 0.f ? amax / 448.f : 1.f, inv = 1.f / sc;
        for (int i = threadIdx.x; i < K; i += blockDim.x) qr[i] = f_to_fp8(xr[i] * inv);
        if (threadIdx.x == 0) s[off4[e] + (p - off[e])] = sc;
        return;
    }
    const int KB = (K + 127) / 128, ld = off4[e + 1] - off4[e];
    float *se = s + (size_t)KB * off4[e];
    for (int kb = 0; kb < KB; kb++) {
        const int i = kb * 128 + threadIdx.x;
        const float v = i < K ? xr[i] : 0.f;
        float amax = fabsf(v);
        amax = warp_max(amax);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
        __syncthreads();
        amax = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
        __syncthreads();
        const float sc = amax > 0.f ? amax / 448.f : 1.f;
        if (i < K) qr[i] = f_to_fp8(v / sc);
        if (threadIdx.x == 0) se[(size_t)kb * ld + (p - off[e])] = sc;
    }
}

extern "C" int glm_cu_quant_fp8_grouped(const float *x, int ldx, const int32_t *rows, const int32_t *off,
                                        const int32_t *off4, int n_expert, int R, int K, int channel, uint8_t *q,
                                        float *s, cudaStream_t st) {
    if (R <= 0) return 0;
    quant_fp8_grouped_kernel<<<R, 128, 0, st>>>(x, ldx, rows, off, off4, n_expert, K, channel, q, s);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// Sorted position p gets token rows[p]'s FP8 row and its n_s scales: q_tok[T][K],
// s_tok[T][n_s] (1x128 blocks or one a token) to q[p][K], s[n_s][ld_s]. One block a
// position, 16 bytes a thread and step.
__global__ void gather_fp8_kernel(const uint8_t *q_tok, const float *s_tok, int n_s, const int32_t *rows, int K,
                                  uint8_t *q, float *s, int ld_s) {
    const int p = blockIdx.x, r = rows[p];
    const uint4 *src = (const uint4 *)(q_tok + (size_t)r * K);
    uint4 *dst = (uint4 *)(q + (size_t)p * K);
    for (int i = threadIdx.x; i < K / 16; i += blockDim.x) dst[i] = src[i];
    for (int kb = threadIdx.x; kb < n_s; kb += blockDim.x) s[(size_t)kb * ld_s + p] = s_tok[(size_t)r * n_s + kb];
}

extern "C" int glm_cu_gather_fp8(const uint8_t *q_tok, const float *s_tok, int n_s, const int32_t *rows, int R,
                                 int K, uint8_t *q, float *s, int ld_s, cudaStream_t st) {
    if (R <= 0) return 0;
    if (K % 128 || ((uintptr_t)q_tok & 15) || ((uintptr_t)q & 15) || (n_s != 1 && n_s != K / 128))
        return glm_err(-7, "gather_fp8: width %d not a multiple of 128, rows not 16-byte aligned or %d scales a row",
                       K, n_s);
    gather_fp8_kernel<<<R, 128, 0, st>>>(q_tok, s_tok, n_s, rows, K, q, s, ld_s);
    CUDA_CHECK_LAUNCH();
    return 0;
}
