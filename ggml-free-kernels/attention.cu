// attention.cu - the attention block between the q/k/v and o projections:
// per-head RMSNorm of q and k, partial NeoX RoPE, the paged KV store (BF16 or FP8
// E4M3 with one scale per token and head), and causal GQA attention over each
// token's pages. One block serves one (token, KV head) pair and all the query heads
// that share that KV head, so every page is read once per group; the context is
// split across blocks (flash-decoding) and merged by a combine kernel.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_MAXG 16

__global__ void rope_store_kernel(float *q, float *k, const float *v, int n_head, int n_kv, int hd,
                                  int n_rot, float theta, const float *qn, const float *kn, float eps,
                                  glm_cu_plan p, glm_cu_kv kv) {
    __shared__ float buf[256];
    __shared__ float red[32];
    const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const bool is_q = h < n_head;
    const int j = h - n_head;
    float *vec = is_q ? q + ((size_t)t * n_head + h) * hd : k + ((size_t)t * n_kv + j) * hd;
    float x = d < hd ? vec[d] : 0.f;
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
    const int slot = pos % 16;
    const float vv = d < hd ? v[((size_t)t * n_kv + j) * hd + d] : 0.f;
    const size_t idx = (((size_t)page * n_kv + j) * 16 + slot) * hd + d;
    if (kv.fp8) {
        const float ka = block_max(fabsf(x), red);
        const float va = block_max(fabsf(vv), red);
        const float ksc = ka > 0.f ? ka / 448.f : 1.f, vsc = va > 0.f ? va / 448.f : 1.f;
        if (page < 0) return;
        if (d < hd) {
            ((uint8_t *)kv.k)[idx] = f_to_fp8(x / ksc);
            ((uint8_t *)kv.v)[idx] = f_to_fp8(vv / vsc);
        }
        if (d == 0) {
            kv.ks[((size_t)page * n_kv + j) * 16 + slot] = ksc;
            kv.vs[((size_t)page * n_kv + j) * 16 + slot] = vsc;
        }
    } else {
        if (page < 0) return;
        if (d < hd) {
            ((uint16_t *)kv.k)[idx] = f_to_bf16(x);
            ((uint16_t *)kv.v)[idx] = f_to_bf16(vv);
        }
    }
}

extern "C" int glm_cu_rope_store(float *q, float *k, const float *v, int T, int n_head, int n_kv, int hd,
                                 int n_rot, float theta, const float *q_norm, const float *k_norm, float eps,
                                 const glm_cu_plan *p, const glm_cu_kv *kv, cudaStream_t st) {
    if (T <= 0) return 0;
    if (hd > 256 || (n_rot & 1) || n_rot > hd)
        return glm_err(-7, "attention: head_dim %d / rotary dims %d not supported (head_dim <= 256, even n_rot)", hd, n_rot);
    dim3 grid(T, n_head + n_kv);
    const int threads = (hd + 31) / 32 * 32;
    rope_store_kernel<<<grid, threads, 0, st>>>(q, k, v, n_head, n_kv, hd, n_rot, theta, q_norm, k_norm, eps, *p, *kv);
    CUDA_CHECK_LAUNCH();
    return 0;
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
    const int npages = pos / 16 + 1;
    const int pps = (npages + n_split - 1) / n_split;
    const int pb = s * pps, pe = min(npages, pb + pps);
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

__global__ void attention_combine_kernel(const float *ws, float *out, int n_head, int hd, int n_split) {
    const int t = blockIdx.x, head = blockIdx.y;
    const float *w = ws + ((size_t)t * n_head + head) * n_split * (hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++) M = fmaxf(M, w[s * (hd + 2) + hd]);
    float L = 0.f;
    for (int s = 0; s < n_split; s++) {
        const float m = w[s * (hd + 2) + hd];
        if (m != -INFINITY) L += __expf(m - M) * w[s * (hd + 2) + hd + 1];
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < n_split; s++) {
            const float m = w[s * (hd + 2) + hd];
            if (m != -INFINITY) a += __expf(m - M) * w[s * (hd + 2) + d];
        }
        out[((size_t)t * n_head + head) * hd + d] = L > 0.f ? a / L : 0.f;
    }
}

extern "C" int glm_cu_attention(const float *q, float *out, int T, int n_head, int n_kv, int hd,
                                const glm_cu_plan *p, const glm_cu_kv *kv, int n_split, float *ws,
                                cudaStream_t st) {
    if (T <= 0) return 0;
    const int G = n_head / n_kv;
    if (n_head % n_kv || G > ATT_MAXG || hd > 2 * ATT_THREADS)
        return glm_err(-7, "attention: %d heads over %d KV heads with head_dim %d not supported", n_head, n_kv, hd);
    if (n_split < 1) n_split = 1;
    const size_t smem = sizeof(float) * ((size_t)G * hd + 16 * (hd + 1) + 16 * hd + G * 16 + 3 * G);
    dim3 grid(T, n_kv, n_split);
    attention_kernel<<<grid, ATT_THREADS, smem, st>>>(q, out, n_head, n_kv, hd, *p, *kv, n_split, ws);
    CUDA_CHECK_LAUNCH();
    if (n_split > 1) {
        attention_combine_kernel<<<dim3(T, n_head), 128, 0, st>>>(ws, out, n_head, hd, n_split);
        CUDA_CHECK_LAUNCH();
    }
    return 0;
}
