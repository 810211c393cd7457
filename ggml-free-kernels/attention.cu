// attention.cu - the attention block between the q/k/v and o projections:
// per-head RMSNorm of q and k, partial NeoX RoPE, the paged KV store (BF16 or FP8
// E4M3 with one scale per token and head), and causal GQA attention over each
// token's pages. One block serves one (token, KV head) pair and all the query heads
// that share that KV head, so every page is read once per group; the context is
// split across blocks (flash-decoding) and merged by a combine kernel.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_MAXG 16

// Stores E consecutive dims (from d0) of one token's rotated K and its V for KV head j
// into the token's page slot: FP8 codes with the given scales (written once, by the
// thread with first set) or BF16. Both rope_store kernels end here.
template <int E>
__device__ __forceinline__ void kv_store(const glm_cu_kv &kv, int page, int j, int n_kv, int hd, int slot, int d0,
                                         const float (&xk)[E], const float (&xv)[E], float ksc, float vsc, bool first) {
    const size_t row = ((size_t)page * n_kv + j) * 16 + slot, idx = row * hd + d0;
    if (kv.fp8) {
        uint8_t bk[E], bv[E];
#pragma unroll
        for (int e = 0; e < E; e++) { bk[e] = f_to_fp8(xk[e] / ksc); bv[e] = f_to_fp8(xv[e] / vsc); }
        if constexpr (E == 4) {
            *(uint32_t *)((uint8_t *)kv.k + idx) = bk[0] | (uint32_t)bk[1] << 8 | (uint32_t)bk[2] << 16 | (uint32_t)bk[3] << 24;
            *(uint32_t *)((uint8_t *)kv.v + idx) = bv[0] | (uint32_t)bv[1] << 8 | (uint32_t)bv[2] << 16 | (uint32_t)bv[3] << 24;
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) { ((uint8_t *)kv.k)[idx + e] = bk[e]; ((uint8_t *)kv.v)[idx + e] = bv[e]; }
        }
        if (first) { kv.ks[row] = ksc; kv.vs[row] = vsc; }
    } else {
        uint16_t hk[E], hv[E];
#pragma unroll
        for (int e = 0; e < E; e++) { hk[e] = f_to_bf16(xk[e]); hv[e] = f_to_bf16(xv[e]); }
        if constexpr (E == 4) {
            *(uint2 *)((uint16_t *)kv.k + idx) = make_uint2(hk[0] | (uint32_t)hk[1] << 16, hk[2] | (uint32_t)hk[3] << 16);
            *(uint2 *)((uint16_t *)kv.v + idx) = make_uint2(hv[0] | (uint32_t)hv[1] << 16, hv[2] | (uint32_t)hv[3] << 16);
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) { ((uint16_t *)kv.k)[idx + e] = hk[e]; ((uint16_t *)kv.v)[idx + e] = hv[e]; }
        }
    }
}

// The projections' biases where they are still to be added (prefill: the q/k/v
// products leave them to this pass), else NULL.
struct qkv_bias {
    const float *q, *k, *v;
};

__global__ void rope_store_kernel(float *q, float *k, float *v, qkv_bias b, int n_head, int n_kv, int hd,
                                  int n_rot, float theta, const float *qn, const float *kn, float eps,
                                  glm_cu_plan p, glm_cu_kv kv) {
    __shared__ float buf[256];
    __shared__ float red[32];
    const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const bool is_q = h < n_head;
    const int j = h - n_head;
    float *vec = is_q ? q + ((size_t)t * n_head + h) * hd : k + ((size_t)t * n_kv + j) * hd;
    const float *bias = is_q ? (b.q ? b.q + (size_t)h * hd : nullptr) : (b.k ? b.k + (size_t)j * hd : nullptr);
    float x = d < hd ? vec[d] + (bias ? bias[d] : 0.f) : 0.f;
    const float *nw = is_q ? qn : kn;
    if (nw) {
        const float ss = block_sum(x * x, red);
        if (d < hd) x = x * rsqrtf(ss / hd + eps) * nw[d];
    }
    const int pos = p.pos[t];
    if (d < hd) buf[d] = x;
    __syncthreads();
    if (d < n_rot) {
        const int half = n_rot / 2;
        const int i = d < half ? d : d - half;
        const float inv_freq = powf(theta, -2.f * (float)i / (float)n_rot);
        float sn, cs;
        sincosf((float)pos * inv_freq, &sn, &cs);
        x = d < half ? x * cs - buf[d + half] * sn : x * cs + buf[d - half] * sn;
    }
    if (d < hd) vec[d] = x;
    if (is_q) return;

    const int seq = p.seq[t];
    const int page = p.page_table[(size_t)seq * p.max_pages + pos / 16];
    float *vr = v + ((size_t)t * n_kv + j) * hd;
    float vv = d < hd ? vr[d] : 0.f;
    if (b.v && d < hd) vr[d] = vv += b.v[(size_t)j * hd + d];
    float ksc = 1.f, vsc = 1.f;
    if (kv.fp8) {  // every thread takes part in the reductions
        const float ka = block_max(fabsf(x), red), va = block_max(fabsf(vv), red);
        ksc = ka > 0.f ? ka / 448.f : 1.f;
        vsc = va > 0.f ? va / 448.f : 1.f;
    }
    if (page < 0 || d >= hd) return;
    const float xk[1] = {x}, xv[1] = {vv};
    kv_store<1>(kv, page, j, n_kv, hd, pos % 16, d, xk, xv, ksc, vsc, d == 0);
}

// The same for head_dim 128 with a warp per head vector, four dims a lane (16-byte
// loads), reductions and the rotation partner (d +- n_rot/2) through shuffles. Eight
// warps a block; each warp takes heads with a stride of the grid's warps (one head at
// decode, several at prefill), the rotation of its lane's dims worked out once.
__global__ void __launch_bounds__(256) rope_store128_kernel(float *q, float *k, float *v, qkv_bias b, int n_head,
                                                            int n_kv, int n_rot, float theta, const float *qn,
                                                            const float *kn, float eps, glm_cu_plan p, glm_cu_kv kv) {
    const int t = blockIdx.x, lane = threadIdx.x & 31;
    const int pos = p.pos[t], half = n_rot / 2, d0 = 4 * lane;
    const bool rot = d0 < n_rot, lo = d0 < half;
    const int src = !rot ? lane : lo ? lane + half / 4 : lane - half / 4;
    float cs[4] = {1.f, 1.f, 1.f, 1.f}, sn[4] = {0.f, 0.f, 0.f, 0.f};
    if (rot)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int d = d0 + e, i = lo ? d : d - half;
            const float inv_freq = powf(theta, -2.f * (float)i / (float)n_rot);
            sincosf((float)pos * inv_freq, &sn[e], &cs[e]);
        }
    for (int h = blockIdx.y * 8 + (threadIdx.x >> 5); h < n_head + n_kv; h += gridDim.y * 8) {
        const bool is_q = h < n_head;
        const int j = h - n_head;
        float *vec = is_q ? q + ((size_t)t * n_head + h) * 128 : k + ((size_t)t * n_kv + j) * 128;
        float4 x = ((float4 *)vec)[lane];
        const float *bias = is_q ? (b.q ? b.q + (size_t)h * 128 : nullptr) : (b.k ? b.k + (size_t)j * 128 : nullptr);
        if (bias) {
            const float4 bb = ((const float4 *)bias)[lane];
            x = make_float4(x.x + bb.x, x.y + bb.y, x.z + bb.z, x.w + bb.w);
        }
        const float *nw = is_q ? qn : kn;
        if (nw) {
            const float r = rsqrtf(warp_sum(x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w) / 128.f + eps);
            const float4 w = ((const float4 *)nw)[lane];
            x = make_float4(x.x * r * w.x, x.y * r * w.y, x.z * r * w.z, x.w * r * w.w);
        }
        float4 o;  // the partner dims
        o.x = __shfl_sync(0xffffffffu, x.x, src);
        o.y = __shfl_sync(0xffffffffu, x.y, src);
        o.z = __shfl_sync(0xffffffffu, x.z, src);
        o.w = __shfl_sync(0xffffffffu, x.w, src);
        if (rot) {
            float xe[4] = {x.x, x.y, x.z, x.w};
            const float oe[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
            for (int e = 0; e < 4; e++) xe[e] = lo ? xe[e] * cs[e] - oe[e] * sn[e] : xe[e] * cs[e] + oe[e] * sn[e];
            x = make_float4(xe[0], xe[1], xe[2], xe[3]);
        }
        ((float4 *)vec)[lane] = x;
        if (is_q) continue;

        const int seq = p.seq[t];
        const int page = p.page_table[(size_t)seq * p.max_pages + pos / 16];
        float4 *vr = (float4 *)(v + ((size_t)t * n_kv + j) * 128);
        float4 vv = vr[lane];
        if (b.v) {
            const float4 bb = ((const float4 *)(b.v + (size_t)j * 128))[lane];
            vv = make_float4(vv.x + bb.x, vv.y + bb.y, vv.z + bb.z, vv.w + bb.w);
            vr[lane] = vv;
        }
        float ksc = 1.f, vsc = 1.f;
        if (kv.fp8) {
            const float ka = warp_max(fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w))));
            const float va = warp_max(fmaxf(fmaxf(fabsf(vv.x), fabsf(vv.y)), fmaxf(fabsf(vv.z), fabsf(vv.w))));
            ksc = ka > 0.f ? ka / 448.f : 1.f;
            vsc = va > 0.f ? va / 448.f : 1.f;
        }
        if (page < 0) continue;
        const float xk[4] = {x.x, x.y, x.z, x.w}, xv[4] = {vv.x, vv.y, vv.z, vv.w};
        kv_store<4>(kv, page, j, n_kv, 128, pos % 16, d0, xk, xv, ksc, vsc, lane == 0);
    }
}

extern "C" int glm_cu_rope_store(float *q, float *k, float *v, const float *bq, const float *bk, const float *bv,
                                 int T, int n_head, int n_kv, int hd, int n_rot, float theta, const float *q_norm,
                                 const float *k_norm, float eps, const glm_cu_plan *p, const glm_cu_kv *kv,
                                 cudaStream_t st) {
    if (T <= 0) return 0;
    if (hd > 256 || (n_rot & 1) || n_rot > hd)
        return glm_err(-7, "attention: head_dim %d / rotary dims %d not supported (head_dim <= 256, even n_rot)", hd, n_rot);
    const qkv_bias b = {bq, bk, bv};
    const uintptr_t al = (uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)bq | (uintptr_t)bk | (uintptr_t)bv;
    if (hd == 128 && n_rot % 8 == 0 && (al & 15) == 0) {
        // eight heads a block for a few tokens; from 64 up, four times as many (the
        // rotation is worked out once for each)
        const int gy = (n_head + n_kv + 7) / 8, gy4 = T >= 64 ? (gy + 3) / 4 : gy;
        rope_store128_kernel<<<dim3(T, gy4), 256, 0, st>>>(q, k, v, b, n_head, n_kv, n_rot, theta, q_norm, k_norm, eps,
                                                           *p, *kv);
        CUDA_CHECK_LAUNCH();
        return 0;
    }
    dim3 grid(T, n_head + n_kv);
    const int threads = (hd + 31) / 32 * 32;
    rope_store_kernel<<<grid, threads, 0, st>>>(q, k, v, b, n_head, n_kv, hd, n_rot, theta, q_norm, k_norm, eps, *p, *kv);
    CUDA_CHECK_LAUNCH();
    return 0;
}

// The pages of a token at position pos, [0, pos / 16 + 1), fall into n_split splits of
// pps pages; split s takes [pb, pe) (empty past the context); live: the splits that
// hold pages. The attention kernel and its combine both ask here.
struct att_split {
    int pb, pe, live;
};
__device__ __forceinline__ att_split att_split_of(int pos, int n_split, int s) {
    const int npages = pos / 16 + 1, pps = (npages + n_split - 1) / n_split;
    return {s * pps, min(npages, (s + 1) * pps), (npages + pps - 1) / pps};
}

// Dynamic shared memory: qs[G][hd] ks[16][hd+1] vs[16][hd] sc[G][16] m[G] l[G] corr[G]
__global__ void __launch_bounds__(ATT_THREADS) attention_kernel(const float *q, float *out, int n_head, int n_kv,
                                                                int hd, glm_cu_plan p, glm_cu_kv kv, int n_split,
                                                                float *ws) {
    extern __shared__ float sm[];
    const int t = blockIdx.x, j = blockIdx.y, s = blockIdx.z, tid = threadIdx.x;
    const int G = n_head / n_kv;
    float *qs = sm;
    float *ks = qs + G * hd;
    float *vs = ks + 16 * (hd + 1);
    float *sc = vs + 16 * hd;
    float *mm = sc + G * 16;
    float *ll = mm + G;
    float *corr = ll + G;

    const int pos = p.pos[t], seq = p.seq[t];
    const att_split sp = att_split_of(pos, n_split, s);
    const int pb = sp.pb, pe = sp.pe;
    if (s >= sp.live) return;  // a split past the context: the combine reads only the others
    const float qscale = rsqrtf((float)hd);
    for (int i = tid; i < G * hd; i += ATT_THREADS)
        qs[i] = q[((size_t)t * n_head + (size_t)j * G) * hd + i] * qscale;
    if (tid < G) { mm[tid] = -INFINITY; ll[tid] = 0.f; }
    float acc[ATT_MAXG][2];
#pragma unroll
    for (int g = 0; g < ATT_MAXG; g++) { acc[g][0] = 0.f; acc[g][1] = 0.f; }
    __syncthreads();

    for (int pg = pb; pg < pe; pg++) {
        const int page = p.page_table[(size_t)seq * p.max_pages + pg];
        const size_t base = ((size_t)page * n_kv + j) * 16 * hd;
        if (kv.fp8) {
            const float *ksc = kv.ks + ((size_t)page * n_kv + j) * 16, *vsc = kv.vs + ((size_t)page * n_kv + j) * 16;
            for (int i = tid; i < 16 * hd; i += ATT_THREADS) {
                const int r = i / hd, c = i - r * hd;
                const bool live = pg * 16 + r <= pos;  // slots past the token hold stale bytes
                ks[r * (hd + 1) + c] = live ? fp8_to_f(((const uint8_t *)kv.k)[base + i]) * ksc[r] : 0.f;
                vs[i] = live ? fp8_to_f(((const uint8_t *)kv.v)[base + i]) * vsc[r] : 0.f;
            }
        } else {
            for (int i = tid; i < 16 * hd; i += ATT_THREADS) {
                const int r = i / hd, c = i - r * hd;
                const bool live = pg * 16 + r <= pos;
                ks[r * (hd + 1) + c] = live ? bf16_to_f(((const uint16_t *)kv.k)[base + i]) : 0.f;
                vs[i] = live ? bf16_to_f(((const uint16_t *)kv.v)[base + i]) : 0.f;
            }
        }
        __syncthreads();
        for (int i = tid; i < G * 16; i += ATT_THREADS) {
            const int g = i >> 4, jj = i & 15;
            float sv = -INFINITY;
            if (pg * 16 + jj <= pos) {
                const float *qq = qs + g * hd, *kk = ks + jj * (hd + 1);
                float d0 = 0.f, d1 = 0.f;
                int c = 0;
                for (; c + 1 < hd; c += 2) { d0 = fmaf(qq[c], kk[c], d0); d1 = fmaf(qq[c + 1], kk[c + 1], d1); }
                if (c < hd) d0 = fmaf(qq[c], kk[c], d0);
                sv = d0 + d1;
            }
            sc[i] = sv;
        }
        __syncthreads();
        if (tid < G) {
            float mx = mm[tid];
            for (int jj = 0; jj < 16; jj++) mx = fmaxf(mx, sc[tid * 16 + jj]);
            float cr = 1.f, sum = 0.f;
            if (mx != -INFINITY) {
                cr = mm[tid] == -INFINITY ? 0.f : __expf(mm[tid] - mx);
                for (int jj = 0; jj < 16; jj++) {
                    const float sv = sc[tid * 16 + jj];
                    const float e = sv == -INFINITY ? 0.f : __expf(sv - mx);
                    sc[tid * 16 + jj] = e;
                    sum += e;
                }
                mm[tid] = mx;
            } else {
                for (int jj = 0; jj < 16; jj++) sc[tid * 16 + jj] = 0.f;
            }
            ll[tid] = ll[tid] * cr + sum;
            corr[tid] = cr;
        }
        __syncthreads();
#pragma unroll
        for (int dd = 0; dd < 2; dd++) {
            const int d = tid + dd * ATT_THREADS;
            if (d >= hd) break;
            float vcol[16];
#pragma unroll
            for (int jj = 0; jj < 16; jj++) vcol[jj] = vs[jj * hd + d];
#pragma unroll
            for (int g = 0; g < ATT_MAXG; g++) {
                if (g >= G) break;
                float a = acc[g][dd] * corr[g];
#pragma unroll
                for (int jj = 0; jj < 16; jj++) a = fmaf(sc[g * 16 + jj], vcol[jj], a);
                acc[g][dd] = a;
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int dd = 0; dd < 2; dd++) {
        const int d = tid + dd * ATT_THREADS;
        if (d >= hd) break;
#pragma unroll
        for (int g = 0; g < ATT_MAXG; g++) {
            if (g >= G) break;
            const int head = j * G + g;
            if (n_split == 1) {
                const float l = ll[g];
                out[((size_t)t * n_head + head) * hd + d] = l > 0.f ? acc[g][dd] / l : 0.f;
            } else {
                float *w = ws + (((size_t)t * n_head + head) * n_split + s) * (hd + 2);
                w[d] = acc[g][dd];
                if (d == 0) { w[hd] = mm[g]; w[hd + 1] = ll[g]; }
            }
        }
    }
}

// Merges the partials of the splits that hold keys of token t (those past its context
// wrote none).
__global__ void attention_combine_kernel(const float *ws, float *out, int n_head, int hd, int n_split,
                                         const int32_t *pos) {
    const int t = blockIdx.x, head = blockIdx.y;
    const float *w = ws + ((size_t)t * n_head + head) * n_split * (hd + 2);
    const int live = att_split_of(pos[t], n_split, 0).live;
    float M = -INFINITY;
    for (int s = 0; s < live; s++) M = fmaxf(M, w[s * (hd + 2) + hd]);
    float L = 0.f;
    for (int s = 0; s < live; s++) {
        const float m = w[s * (hd + 2) + hd];
        if (m != -INFINITY) L += __expf(m - M) * w[s * (hd + 2) + hd + 1];
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < live; s++) {
            const float m = w[s * (hd + 2) + hd];
            if (m != -INFINITY) a += __expf(m - M) * w[s * (hd + 2) + d];
        }
        out[((size_t)t * n_head + head) * hd + d] = L > 0.f ? a / L : 0.f;
    }
}

static int attention_decode_mma(const float *q, float *out, int T, int n_head, int n_kv, int hd, const glm_cu_plan *p,
                                const glm_cu_kv *kv, int n_split, float *ws, cudaStream_t st);

// The tensor-core decode kernel where it applies (BF16 pages, head_dim 32, 64 or 128,
// up to 16 query heads a KV head; GLM_CUDA_ATT_MMA=0 turns it off), else attention_kernel.
extern "C" int glm_cu_attention_mma(int n_head, int n_kv, int hd, int fp8) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("GLM_CUDA_ATT_MMA");
        env = e && *e ? atoi(e) != 0 : 1;
    }
    return env && !fp8 && n_kv > 0 && n_head % n_kv == 0 && (hd == 32 || hd == 64 || hd == 128) && n_head / n_kv <= 16;
}

extern "C" int glm_cu_attention(const float *q, float *out, int T, int n_head, int n_kv, int hd,
                                const glm_cu_plan *p, const glm_cu_kv *kv, int n_split, float *ws,
                                cudaStream_t st) {
    if (T <= 0) return 0;
    const int G = n_head / n_kv;
    if (n_head % n_kv || G > ATT_MAXG || hd > 2 * ATT_THREADS)
        return glm_err(-7, "attention: %d heads over %d KV heads with head_dim %d not supported", n_head, n_kv, hd);
    if (n_split < 1) n_split = 1;
    if (glm_cu_attention_mma(n_head, n_kv, hd, kv->fp8)) return attention_decode_mma(q, out, T, n_head, n_kv, hd, p, kv, n_split, ws, st);
    const size_t smem = sizeof(float) * ((size_t)G * hd + 16 * (hd + 1) + 16 * hd + G * 16 + 3 * G);
    dim3 grid(T, n_kv, n_split);
    attention_kernel<<<grid, ATT_THREADS, smem, st>>>(q, out, n_head, n_kv, hd, *p, *kv, n_split, ws);
    CUDA_CHECK_LAUNCH();
    if (n_split > 1) {
        attention_combine_kernel<<<dim3(T, n_head), 128, 0, st>>>(ws, out, n_head, hd, n_split, p->pos);
        CUDA_CHECK_LAUNCH();
    }
    return 0;
}

// ---- prefill: tensor-core flash attention ----
// One block serves one tile of up to FA_ROWS query rows of one sequence (consecutive
// plan rows, cut by glm_cu_attention_tiles) and one query head. Four warps of 32 rows
// (two m16 tiles, so each K or V fragment read from shared memory feeds two products)
// run mma.sync m16n8k16 (BF16 operands, FP32 accumulators): S = Q K^T over FA_KEYS
// keys at a time, an online softmax in registers (base-2, the scale folded into Q),
// then O += P V with P re-packed from the S accumulators. Q is staged in shared memory
// as BF16 and read by ldmatrix. The pages of the tile's sequence are read up to its
// last position; slots past it are zero-filled (they hold stale bytes) and masked, as
// are keys past each row's own position.
#define FA_ROWS 128
#define FA_KEYS 64
#define FA_THREADS 128
#define FA_MT 2  // m16 tiles a warp

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
    return *reinterpret_cast<uint32_t *>(&v);
}

// c += a (16x16, row) * b (16x8, col), BF16 in, FP32 accumulate.
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 BF16 matrices from shared memory; lane l gives the address of row l % 8 of
// matrix l / 8. trans: each lane receives column elements (the B operand of a
// row-major [k][n] tile).
template <bool TRANS>
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// Eight FP8 codes times a scale, as eight BF16 values.
__device__ __forceinline__ uint4 fp8x8_to_bf16x8(uint2 v, float s) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = fp8x2_to_f2((uint16_t)(((i < 2) ? v.x : v.y) >> (16 * (i & 1))));
        w[i] = pack_bf16(f.x * s, f.y * s);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

template <int HD>
__global__ void __launch_bounds__(FA_THREADS) attention_prefill_kernel(const float *q, float *out, int n_head,
                                                                       int n_kv, glm_cu_plan p, glm_cu_kv kv,
                                                                       const int32_t *tiles, int n_tiles) {
    constexpr int LD = HD + 8;  // BF16 row stride: 16-byte rows, ldmatrix conflict-free
    extern __shared__ __align__(16) uint16_t fa_smem[];  // Q [FA_ROWS][LD], then K and V of two key blocks
    __shared__ int s_pos[FA_ROWS];
    __shared__ int s_max;
    uint16_t *Qs = fa_smem, *KV = fa_smem + FA_ROWS * LD;
    const int h = blockIdx.x, tile = n_tiles - 1 - (int)blockIdx.y;  // long tiles first
    const int j = h / (n_head / n_kv);
    const int t0 = tiles[tile], nr = tiles[tile + 1] - t0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int seq = p.seq[t0];

    for (int r = threadIdx.x; r < FA_ROWS; r += FA_THREADS) s_pos[r] = r < nr ? p.pos[t0 + r] : -1;
    // Q rows times log2(e)/sqrt(HD) as BF16 (rows past the tile as zeros)
    const float qscale = 1.4426950408889634f * rsqrtf((float)HD);
    for (int i = threadIdx.x; i < FA_ROWS * (HD / 4); i += FA_THREADS) {
        const int r = i / (HD / 4), d = (i - r * (HD / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < nr) v = *(const float4 *)(q + ((size_t)(t0 + r) * n_head + h) * HD + d);
        *(uint2 *)&Qs[r * LD + d] = make_uint2(pack_bf16(v.x * qscale, v.y * qscale), pack_bf16(v.z * qscale, v.w * qscale));
    }
    __syncthreads();
    if (warp == 0) {
        int m = -1;
        for (int r = lane; r < FA_ROWS; r += 32) m = max(m, s_pos[r]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (lane == 0) s_max = m;
    }
    // this thread's rows: warp * 32 + mt * 16 + g, and + 8
    int pos[FA_MT][2];
    int wmax = -1;
#pragma unroll
    for (int mt = 0; mt < FA_MT; mt++) {
        pos[mt][0] = s_pos[warp * 32 + mt * 16 + g];
        pos[mt][1] = s_pos[warp * 32 + mt * 16 + g + 8];
        wmax = max(wmax, max(pos[mt][0], pos[mt][1]));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));

    float o[FA_MT][HD / 8][4];
    float m_run[FA_MT][2], l_run[FA_MT][2];
#pragma unroll
    for (int mt = 0; mt < FA_MT; mt++) {
#pragma unroll
        for (int i = 0; i < HD / 8; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
        m_run[mt][0] = m_run[mt][1] = -INFINITY;
        l_run[mt][0] = l_run[mt][1] = 0.f;
    }
    __syncthreads();
    const int maxpos = s_max;

    // key block kb into buffer kb & 1: BF16 pages by cp.async (waited for one block
    // later, so the copy of block kb + 1 runs under the products of block kb); FP8 pages
    // are widened to BF16 on the way, synchronously
    auto fetch = [&](int kb) {
        uint16_t *Kd = KV + (kb & 1) * 2 * FA_KEYS * LD, *Vd = Kd + FA_KEYS * LD;
        for (int i = threadIdx.x; i < FA_KEYS * (HD / 8); i += FA_THREADS) {
            const int r = i / (HD / 8), c8 = (i - r * (HD / 8)) * 8;
            const int kp = kb * FA_KEYS + r;
            const bool live = kp <= maxpos;
            size_t slot = 0;
            if (live) slot = ((size_t)p.page_table[(size_t)seq * p.max_pages + kp / 16] * n_kv + j) * 16 + (kp & 15);
            if (kv.fp8) {
                uint4 kk = make_uint4(0, 0, 0, 0), vv = kk;
                if (live) {
                    kk = fp8x8_to_bf16x8(*(const uint2 *)((const uint8_t *)kv.k + slot * HD + c8), kv.ks[slot]);
                    vv = fp8x8_to_bf16x8(*(const uint2 *)((const uint8_t *)kv.v + slot * HD + c8), kv.vs[slot]);
                }
                *(uint4 *)&Kd[r * LD + c8] = kk;
                *(uint4 *)&Vd[r * LD + c8] = vv;
            } else {
                const uint32_t kd = (uint32_t)__cvta_generic_to_shared(&Kd[r * LD + c8]);
                const uint32_t vd = (uint32_t)__cvta_generic_to_shared(&Vd[r * LD + c8]);
                const uint16_t *ks = (const uint16_t *)kv.k + slot * HD + c8, *vs = (const uint16_t *)kv.v + slot * HD + c8;
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kd), "l"(ks), "r"(live ? 16 : 0));
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(vd), "l"(vs), "r"(live ? 16 : 0));
            }
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    fetch(0);
    const int mi = lane >> 3;  // the 8x8 matrix whose row address this lane gives to ldmatrix
    for (int kb = 0; kb * FA_KEYS <= maxpos; kb++) {
        if ((kb + 1) * FA_KEYS <= maxpos) fetch(kb + 1);  // its buffer was released at the end of kb - 1
        else asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 1;\n" ::);
        __syncthreads();  // block kb is in its buffer for every thread
        const uint16_t *Ks = KV + (kb & 1) * 2 * FA_KEYS * LD, *Vs = Ks + FA_KEYS * LD;
        if (kb * FA_KEYS <= wmax) {  // else every key here is in the future of the warp's rows

        // S = Q K^T: [32 rows][FA_KEYS] per warp, n-tiles of 8 keys
        float s[FA_MT][FA_KEYS / 8][4];
#pragma unroll
        for (int mt = 0; mt < FA_MT; mt++)
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            // A fragments: rows (mi & 1) * 8.. x d ks*16 + (mi >> 1) * 8.. of each m16 tile
            uint32_t qa[FA_MT][4];
#pragma unroll
            for (int mt = 0; mt < FA_MT; mt++)
                ldsm_x4<false>(qa[mt], &Qs[(warp * 32 + mt * 16 + (mi & 1) * 8 + (lane & 7)) * LD + ks * 16 + (mi >> 1) * 8]);
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt += 2) {
                // matrices: keys nt*8.. x d ks*16.., +8 cols; keys (nt+1)*8.. likewise
                uint32_t b[4];
                ldsm_x4<false>(b, &Ks[((nt + (mi >> 1)) * 8 + (lane & 7)) * LD + ks * 16 + (mi & 1) * 8]);
#pragma unroll
                for (int mt = 0; mt < FA_MT; mt++) {
                    mma_bf16(s[mt][nt], qa[mt], b[0], b[1]);
                    mma_bf16(s[mt][nt + 1], qa[mt], b[2], b[3]);
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < FA_MT; mt++) {
            // causal mask, running max over the 4 lanes that share a row
            float mx0 = m_run[mt][0], mx1 = m_run[mt][1];
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int kp = kb * FA_KEYS + nt * 8 + 2 * c + e;
                    if (kp > pos[mt][0]) s[mt][nt][e] = -INFINITY;
                    if (kp > pos[mt][1]) s[mt][nt][2 + e] = -INFINITY;
                    mx0 = fmaxf(mx0, s[mt][nt][e]);
                    mx1 = fmaxf(mx1, s[mt][nt][2 + e]);
                }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float base0 = mx0 == -INFINITY ? 0.f : mx0, base1 = mx1 == -INFINITY ? 0.f : mx1;
            const float a0 = exp2f(m_run[mt][0] - base0), a1 = exp2f(m_run[mt][1] - base1);  // 0 while nothing was seen
            m_run[mt][0] = mx0;
            m_run[mt][1] = mx1;
            float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
            for (int nt = 0; nt < FA_KEYS / 8; nt++) {
                s[mt][nt][0] = exp2f(s[mt][nt][0] - base0); s[mt][nt][1] = exp2f(s[mt][nt][1] - base0);
                s[mt][nt][2] = exp2f(s[mt][nt][2] - base1); s[mt][nt][3] = exp2f(s[mt][nt][3] - base1);
                sum0 += s[mt][nt][0] + s[mt][nt][1];
                sum1 += s[mt][nt][2] + s[mt][nt][3];
            }
            l_run[mt][0] = l_run[mt][0] * a0 + sum0;  // per-lane partial sums; the 4 lanes are added at the end
            l_run[mt][1] = l_run[mt][1] * a1 + sum1;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                o[mt][dt][0] *= a0; o[mt][dt][1] *= a0; o[mt][dt][2] *= a1; o[mt][dt][3] *= a1;
            }
        }

        // O += P V: P [16][16 keys] from two S n-tiles, V B-fragments by ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++) {
            uint32_t pa[FA_MT][4];
#pragma unroll
            for (int mt = 0; mt < FA_MT; mt++) {
                pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t b[4];
                ldsm_x4<true>(b, &Vs[(kk * 16 + (lane & 15)) * LD + dp * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int mt = 0; mt < FA_MT; mt++) {
                    mma_bf16(o[mt][2 * dp], pa[mt], b[0], b[1]);
                    mma_bf16(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
                }
            }
        }
        }
        __syncthreads();  // block kb's buffer is free for block kb + 2
    }
    asm volatile("cp.async.wait_group 0;\n" ::);

#pragma unroll
    for (int mt = 0; mt < FA_MT; mt++) {
        float l0 = l_run[mt][0], l1 = l_run[mt][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
        const int r0 = warp * 32 + mt * 16 + g, r1 = r0 + 8;
        float *y0 = out + ((size_t)(t0 + r0) * n_head + h) * HD + 2 * c, *y1 = out + ((size_t)(t0 + r1) * n_head + h) * HD + 2 * c;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            if (r0 < nr) *(float2 *)(y0 + dt * 8) = make_float2(o[mt][dt][0] * inv0, o[mt][dt][1] * inv0);
            if (r1 < nr) *(float2 *)(y1 + dt * 8) = make_float2(o[mt][dt][2] * inv1, o[mt][dt][3] * inv1);
        }
    }
}

extern "C" int glm_cu_attention_tiles(const int32_t *seq, int T, int32_t *start) {
    int n = 0;
    for (int t = 0; t < T; t++)
        if (t == 0 || seq[t] != seq[t - 1] || t - start[n - 1] == FA_ROWS) start[n++] = t;
    start[n] = T;
    return n;
}

extern "C" int glm_cu_attention_prefill_ok(int n_head, int n_kv, int hd) {
    return n_kv > 0 && n_head % n_kv == 0 && (hd == 32 || hd == 64 || hd == 128);
}

template <int HD>
static int fa_launch(dim3 grid, const float *q, float *out, int n_head, int n_kv, const glm_cu_plan *p,
                     const glm_cu_kv *kv, const int32_t *tiles, int n_tiles, cudaStream_t st) {
    const int smem = (FA_ROWS + 2 * 2 * FA_KEYS) * (HD + 8) * 2;
    CUDA_CHECK(glm_cu_smem_limit((const void *)attention_prefill_kernel<HD>, smem));
    attention_prefill_kernel<HD><<<grid, FA_THREADS, smem, st>>>(q, out, n_head, n_kv, *p, *kv, tiles, n_tiles);
    CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int glm_cu_attention_prefill(const float *q, float *out, int n_head, int n_kv, int hd,
                                        const glm_cu_plan *p, const glm_cu_kv *kv, const int32_t *tiles,
                                        int n_tiles, cudaStream_t st) {
    if (n_tiles <= 0) return 0;
    if (!glm_cu_attention_prefill_ok(n_head, n_kv, hd) || n_tiles > 65535)
        return glm_err(-7, "prefill attention: %d heads over %d KV heads, head_dim %d, %d tiles not supported",
                       n_head, n_kv, hd, n_tiles);
    dim3 grid(n_head, n_tiles);
    if (hd == 32) return fa_launch<32>(grid, q, out, n_head, n_kv, p, kv, tiles, n_tiles, st);
    if (hd == 64) return fa_launch<64>(grid, q, out, n_head, n_kv, p, kv, tiles, n_tiles, st);
    return fa_launch<128>(grid, q, out, n_head, n_kv, p, kv, tiles, n_tiles, st);
}

// ---- decode: tensor-core attention over the pages ----
// One block serves one (token, KV head, context split), as attention_kernel does, with
// the G <= 16 query heads that share the KV head as the rows of m16n8k16 BF16 tiles.
// The four warps take the split's pages in turn, each through its own two-page cp.async
// ring, and merge their partials at the end (into out, or the split's partial in ws for
// attention_combine_kernel, in the same form as attention_kernel's). BF16 pages only:
// K and V are exact BF16 operands; Q goes in as three BF16 parts (high, middle, low)
// and P as two, so S = sum of the parts' products and O += P_hi V + P_lo V keep the
// operands to about float32 precision; every product starts from zero and the sums run
// on the CUDA cores in float32 (the tensor cores' accumulation keeps fewer bits): the
// results agree with attention_kernel's to float32 rounding, not BF16's.
#define DM_WARPS 4

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

template <int HD>
__global__ void __launch_bounds__(DM_WARPS * 32) attention_decode_mma_kernel(const float *q, float *out, int n_head,
                                                                             int n_kv, glm_cu_plan p, glm_cu_kv kv,
                                                                             int n_split, float *ws) {
    constexpr int LD = HD + 8;             // BF16 row stride: 16-byte rows, ldmatrix conflict-free
    constexpr int PAGE = 2 * 16 * LD;      // one page's K rows then V rows
    extern __shared__ __align__(16) uint16_t dm_smem[];  // Q parts [3][16][LD], rings [DM_WARPS][2][PAGE]
    const int t = blockIdx.x, j = blockIdx.y, s = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, mi = lane >> 3;
    const int G = n_head / n_kv;
    const int pos = p.pos[t], seq = p.seq[t];
    const att_split sp = att_split_of(pos, n_split, s);
    if (s >= sp.live) return;  // a split past the context: the combine reads only the others
    uint16_t *Qs = dm_smem, *ring = dm_smem + 3 * 16 * LD + warp * 2 * PAGE;

    // Q rows j*G + r times log2(e)/sqrt(HD) in three BF16 parts (rows past G as zeros)
    const float qscale = 1.4426950408889634f * rsqrtf((float)HD);
    for (int i = threadIdx.x; i < 16 * (HD / 2); i += DM_WARPS * 32) {
        const int r = i / (HD / 2), d = (i - r * (HD / 2)) * 2;
        float2 v = make_float2(0.f, 0.f);
        if (r < G) v = *(const float2 *)(q + ((size_t)t * n_head + (size_t)j * G + r) * HD + d);
        v.x *= qscale;
        v.y *= qscale;
        const uint32_t h = pack_bf16(v.x, v.y);
        const float rx = v.x - bf16_lo(h), ry = v.y - bf16_hi(h);
        const uint32_t m = pack_bf16(rx, ry);
        const uint32_t l = pack_bf16(rx - bf16_lo(m), ry - bf16_hi(m));
        *(uint32_t *)&Qs[r * LD + d] = h;
        *(uint32_t *)&Qs[(16 + r) * LD + d] = m;
        *(uint32_t *)&Qs[(32 + r) * LD + d] = l;
    }

    // page pg into ring buffer b: BF16 rows by cp.async, slots past the token zero-filled
    auto fetch = [&](int pg, int b) {
        uint16_t *Kd = ring + b * PAGE, *Vd = Kd + 16 * LD;
        const size_t base = ((size_t)p.page_table[(size_t)seq * p.max_pages + pg] * n_kv + j) * 16;
        for (int i = lane; i < 16 * (HD / 8); i += 32) {
            const int r = i / (HD / 8), c8 = (i - r * (HD / 8)) * 8;
            const int n = pg * 16 + r <= pos ? 16 : 0;
            const uint32_t kd = (uint32_t)__cvta_generic_to_shared(&Kd[r * LD + c8]);
            const uint32_t vd = (uint32_t)__cvta_generic_to_shared(&Vd[r * LD + c8]);
            const uint16_t *ks = (const uint16_t *)kv.k + (base + r) * HD + c8, *vs = (const uint16_t *)kv.v + (base + r) * HD + c8;
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kd), "l"(ks), "r"(n));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(vd), "l"(vs), "r"(n));
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    int pg = sp.pb + warp;
    if (pg < sp.pe) fetch(pg, 0);
    __syncthreads();  // the Q parts

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};  // rows g and g + 8
    for (int it = 0; pg < sp.pe; it++, pg += DM_WARPS) {
        if (pg + DM_WARPS < sp.pe) fetch(pg + DM_WARPS, (it + 1) & 1);  // under this page's products
        else asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 1;\n" ::);
        __syncwarp();
        const uint16_t *Ks = ring + (it & 1) * PAGE, *Vs = Ks + 16 * LD;

        // S = Q K^T [16 heads][16 keys]: two n-tiles of 8 keys, Q's three parts
        // (each product starts from zero and is added to S by the CUDA cores: the tensor
        // cores' own accumulation keeps fewer bits than float32 and would lose the small parts)
        float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            uint32_t b[4];
            ldsm_x4<false>(b, &Ks[((mi >> 1) * 8 + (lane & 7)) * LD + ks * 16 + (mi & 1) * 8]);
#pragma unroll
            for (int part = 0; part < 3; part++) {
                uint32_t a[4];
                ldsm_x4<false>(a, &Qs[(part * 16 + (mi & 1) * 8 + (lane & 7)) * LD + ks * 16 + (mi >> 1) * 8]);
                float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
                mma_bf16(d0, a, b[0], b[1]);
                mma_bf16(d1, a, b[2], b[3]);
#pragma unroll
                for (int i = 0; i < 4; i++) { sc[0][i] += d0[i]; sc[1][i] += d1[i]; }
            }
        }
        // keys past the token, the running max over the 4 lanes of a row
        float mx0 = m_run[0], mx1 = m_run[1];
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (pg * 16 + nt * 8 + 2 * c + e > pos) sc[nt][e] = sc[nt][2 + e] = -INFINITY;
                mx0 = fmaxf(mx0, sc[nt][e]);
                mx1 = fmaxf(mx1, sc[nt][2 + e]);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float base0 = mx0 == -INFINITY ? 0.f : mx0, base1 = mx1 == -INFINITY ? 0.f : mx1;
        const float a0 = exp2f(m_run[0] - base0), a1 = exp2f(m_run[1] - base1);  // 0 while nothing was seen
        m_run[0] = mx0;
        m_run[1] = mx1;
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            sc[nt][0] = exp2f(sc[nt][0] - base0); sc[nt][1] = exp2f(sc[nt][1] - base0);
            sc[nt][2] = exp2f(sc[nt][2] - base1); sc[nt][3] = exp2f(sc[nt][3] - base1);
            sum0 += sc[nt][0] + sc[nt][1];
            sum1 += sc[nt][2] + sc[nt][3];
        }
        l_run[0] = l_run[0] * a0 + sum0;  // per-lane partial sums; the 4 lanes are added at the end
        l_run[1] = l_run[1] * a1 + sum1;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            o[dt][0] *= a0; o[dt][1] *= a0; o[dt][2] *= a1; o[dt][3] *= a1;
        }
        // O += P V: P [16][16 keys] from the two S n-tiles, high and low BF16 parts; each
        // page's products start from zero and are added to O by the CUDA cores
        uint32_t ph[4], pl[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float x = sc[i >> 1][(i & 1) * 2], y = sc[i >> 1][(i & 1) * 2 + 1];
            ph[i] = pack_bf16(x, y);
            pl[i] = pack_bf16(x - bf16_lo(ph[i]), y - bf16_hi(ph[i]));
        }
        // A fragment order: (g, keys 2c..) tile 0; (g + 8, ..) tile 0; (g, ..) tile 1; (g + 8, ..) tile 1
        const uint32_t pa_h[4] = {ph[0], ph[1], ph[2], ph[3]}, pa_l[4] = {pl[0], pl[1], pl[2], pl[3]};
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            uint32_t b[4];
            ldsm_x4<true>(b, &Vs[(lane & 15) * LD + dp * 16 + (lane >> 4) * 8]);
            float h0[4] = {0.f, 0.f, 0.f, 0.f}, l0[4] = {0.f, 0.f, 0.f, 0.f}, h1[4] = {0.f, 0.f, 0.f, 0.f},
                  l1[4] = {0.f, 0.f, 0.f, 0.f};
            mma_bf16(h0, pa_h, b[0], b[1]);
            mma_bf16(l0, pa_l, b[0], b[1]);
            mma_bf16(h1, pa_h, b[2], b[3]);
            mma_bf16(l1, pa_l, b[2], b[3]);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                o[2 * dp][i] += h0[i] + l0[i];
                o[2 * dp + 1][i] += h1[i] + l1[i];
            }
        }
        __syncwarp();  // this buffer is refilled two pages on
    }
    asm volatile("cp.async.wait_group 0;\n" ::);

    // merge the warps: each writes (m, l, O) of its 16 rows, then the block combines them
    float l0 = l_run[0], l1 = l_run[1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    __syncthreads();  // every ring is drained: the smem becomes the merge area
    float *mo = (float *)dm_smem, *mm = mo + DM_WARPS * 16 * HD, *ml = mm + DM_WARPS * 16;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        *(float2 *)&mo[(warp * 16 + g) * HD + dt * 8 + 2 * c] = make_float2(o[dt][0], o[dt][1]);
        *(float2 *)&mo[(warp * 16 + g + 8) * HD + dt * 8 + 2 * c] = make_float2(o[dt][2], o[dt][3]);
    }
    if (c == 0) {
        mm[warp * 16 + g] = m_run[0]; mm[warp * 16 + g + 8] = m_run[1];
        ml[warp * 16 + g] = l0; ml[warp * 16 + g + 8] = l1;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += DM_WARPS * 32) {
        const int r = i / HD, d = i - r * HD, head = j * G + r;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DM_WARPS; w++) M = fmaxf(M, mm[w * 16 + r]);
        float L = 0.f, acc = 0.f;
#pragma unroll
        for (int w = 0; w < DM_WARPS; w++) {
            const float m = mm[w * 16 + r];
            const float f = m == -INFINITY ? 0.f : exp2f(m - M);
            L += f * ml[w * 16 + r];
            acc += f * mo[(w * 16 + r) * HD + d];
        }
        if (n_split == 1) {
            out[((size_t)t * n_head + head) * HD + d] = L > 0.f ? acc / L : 0.f;
        } else {  // attention_kernel's partial: the max in natural-log units
            float *wp = ws + (((size_t)t * n_head + head) * n_split + s) * (HD + 2);
            wp[d] = acc;
            if (d == 0) { wp[HD] = M * 0.6931471805599453f; wp[HD + 1] = L; }
        }
    }
}

template <int HD>
static int dm_launch(dim3 grid, const float *q, float *out, int n_head, int n_kv, const glm_cu_plan *p, const glm_cu_kv *kv,
                     int n_split, float *ws, cudaStream_t st) {
    const int ring = (3 * 16 + DM_WARPS * 2 * 2 * 16) * (HD + 8) * 2;
    const int merge = (DM_WARPS * 16 * HD + 2 * DM_WARPS * 16) * 4;
    const int smem = ring > merge ? ring : merge;
    CUDA_CHECK(glm_cu_smem_limit((const void *)attention_decode_mma_kernel<HD>, smem));
    attention_decode_mma_kernel<HD><<<grid, DM_WARPS * 32, smem, st>>>(q, out, n_head, n_kv, *p, *kv, n_split, ws);
    CUDA_CHECK_LAUNCH();
    return 0;
}

static int attention_decode_mma(const float *q, float *out, int T, int n_head, int n_kv, int hd, const glm_cu_plan *p,
                                const glm_cu_kv *kv, int n_split, float *ws, cudaStream_t st) {
    dim3 grid(T, n_kv, n_split);
    const int rc = hd == 32 ? dm_launch<32>(grid, q, out, n_head, n_kv, p, kv, n_split, ws, st)
                 : hd == 64 ? dm_launch<64>(grid, q, out, n_head, n_kv, p, kv, n_split, ws, st)
                            : dm_launch<128>(grid, q, out, n_head, n_kv, p, kv, n_split, ws, st);
    if (rc) return rc;
    if (n_split > 1) {
        attention_combine_kernel<<<dim3(T, n_head), 128, 0, st>>>(ws, out, n_head, hd, n_split, p->pos);
        CUDA_CHECK_LAUNCH();
    }
    return 0;
}
