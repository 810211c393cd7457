// sample.cu - token sampling on the device, one block a row, with the rules of the host
// sampler (lib/sampler.c): repetition / presence / frequency penalties over the window
// given, then greedy (temp <= 0: the largest logit, the lowest id on ties) or temperature,
// top-k, min-p, top-p and a draw from a counter-based generator of (seed, step).
//
// Every token gets a distinct 64-bit key, (order-preserving bits of its logit) << 32 |
// (~id): larger keys come first in the host sampler's order (logit descending, then id
// ascending), so each of its cuts keeps the tokens whose key is at least some key. Each
// cut is found by bisection over the key space: a pass over the row counts the tokens
// (and sums their weights exp((l - max) / temp), in double) at or above the middle key.
// About 200 passes over the row a sampled token: simple rather than fast.
#include "common.cuh"

#define SAMPLE_THREADS 1024

namespace {

__device__ __forceinline__ uint64_t key_of(float v, int i) {
    if (v == 0.f) v = 0.f;  // -0 and +0 are equal logits: their order is by id
    uint32_t b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((uint64_t)b << 32) | (uint64_t)(0xffffffffu - (uint32_t)i);
}

__device__ __forceinline__ int id_of(uint64_t k) { return (int)(0xffffffffu - (uint32_t)(k & 0xffffffffu)); }

// Block totals of a count and a sum, the same (bit for bit) in every thread: the order of
// the additions depends only on the block's shape.
__device__ __forceinline__ void block_totals(int &c, double &m, int *sc, double *sm) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        c += __shfl_xor_sync(0xffffffffu, c, o);
        m += __shfl_xor_sync(0xffffffffu, m, o);
    }
    __syncthreads();
    if (lane == 0) { sc[wid] = c; sm[wid] = m; }
    __syncthreads();
    c = lane < nw ? sc[lane] : 0;
    m = lane < nw ? sm[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        c += __shfl_xor_sync(0xffffffffu, c, o);
        m += __shfl_xor_sync(0xffffffffu, m, o);
    }
}

// Largest (or, with want_min, smallest) key over the block, in every thread.
__device__ __forceinline__ uint64_t block_ext(uint64_t k, bool want_min, unsigned long long *sk) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        uint64_t t = __shfl_xor_sync(0xffffffffu, (unsigned long long)k, o);
        k = want_min ? (t < k ? t : k) : (t > k ? t : k);
    }
    __syncthreads();
    if (lane == 0) sk[wid] = k;
    __syncthreads();
    k = lane < nw ? sk[lane] : (want_min ? ~0ull : 0ull);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        uint64_t t = __shfl_xor_sync(0xffffffffu, (unsigned long long)k, o);
        k = want_min ? (t < k ? t : k) : (t > k ? t : k);
    }
    return k;
}

// The weight of logit v: exp((v - mx) / temp), 1 for the largest.
__device__ __forceinline__ float weight(float v, float mx, float temp) { return expf(__fdiv_rn(__fsub_rn(v, mx), temp)); }

// Count and weight sum of the tokens whose key is at least K.
__device__ void at_least(const float *l, int V, uint64_t K, float mx, float temp, bool mass, int *cnt, double *sum,
                         int *sc, double *sm) {
    int c = 0;
    double m = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = l[i];
        if (key_of(v, i) < K) continue;
        c++;
        if (mass) m += (double)weight(v, mx, temp);
    }
    block_totals(c, m, sc, sm);
    *cnt = c;
    *sum = m;
}

// Uniform double in [0, 1) from (seed, step).
__device__ __forceinline__ double uniform01(uint64_t seed, uint64_t step) {
    const uint64_t x = mix64(mix64(seed) ^ (step * 0xd1b54a32d192ed03ull));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

// What a bisection step asks of the keys at or above the middle one.
enum { BY_COUNT, BY_MASS_GE, BY_MASS_GT };

// The largest key K in [lo, hi] whose tokens at or above it satisfy the test (their count
// >= target, their weight sum >= target, or > target), given that the test holds at lo
// (lo is returned when it does not hold anywhere). The tests only weaken as K grows, so
// the answer is the key of a token: the last one of the prefix the cut keeps.
__device__ uint64_t bisect(const float *l, int V, uint64_t lo, uint64_t hi, int what, double target, float mx, float temp,
                           int *sc, double *sm) {
    while (lo < hi) {
        const uint64_t mid = lo + (hi - lo) / 2 + 1;  // lo < mid <= hi
        int c;
        double m;
        at_least(l, V, mid, mx, temp, what != BY_COUNT, &c, &m, sc, sm);
        const bool ok = what == BY_COUNT ? (double)c >= target : what == BY_MASS_GE ? m >= target : m > target;
        if (ok) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(float *logits, const glm_cu_sample_row *rows, const int32_t *hist, int V, int32_t *ids) {
    __shared__ int sc[32];
    __shared__ double sm[32];
    __shared__ unsigned long long sk[32];
    const glm_cu_sample_row p = rows[blockIdx.x];
    float *l = logits + p.logit_off;

    // penalties, as the host sampler applies them: once per distinct token of the window
    if (p.n_hist > 0 && (p.repeat_penalty != 1.f || p.presence_penalty != 0.f || p.frequency_penalty != 0.f)) {
        const int32_t *h = hist + p.hist_off;
        for (int i = threadIdx.x; i < p.n_hist; i += blockDim.x) {
            const int32_t t = h[i];
            if (t < 0 || t >= V) continue;
            bool first = true;
            for (int j = 0; j < i && first; j++) first = h[j] != t;
            if (!first) continue;
            int count = 0;
            for (int j = 0; j < p.n_hist; j++) count += h[j] == t;
            float v = l[t];
            if (p.repeat_penalty != 1.f) v = v > 0.f ? __fdiv_rn(v, p.repeat_penalty) : __fmul_rn(v, p.repeat_penalty);
            v = __fsub_rn(v, __fadd_rn(__fmul_rn((float)count, p.frequency_penalty), p.presence_penalty));
            l[t] = v;
        }
        __syncthreads();
    }

    uint64_t best = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const uint64_t k = key_of(l[i], i);
        best = k > best ? k : best;
    }
    best = block_ext(best, false, sk);
    if (!(p.temp > 0.f)) {  // greedy
        if (threadIdx.x == 0) ids[blockIdx.x] = id_of(best);
        return;
    }
    const float mx = l[id_of(best)], temp = p.temp;
    int c;
    double z;

    // top-k: the k first tokens
    uint64_t k0 = 0;
    if (p.top_k > 0 && p.top_k < V) k0 = bisect(l, V, 0, best, BY_COUNT, (double)p.top_k, mx, temp, sc, sm);
    at_least(l, V, k0, mx, temp, true, &c, &z, sc, sm);  // the softmax's sum over the candidates

    // min-p: the tokens whose probability is at least min_p times the largest (at least one)
    uint64_t k1 = k0;
    if (p.min_p > 0.f) {
        uint64_t lowest = ~0ull;
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const float v = l[i];
            const uint64_t k = key_of(v, i);
            if (k >= k0 && (double)weight(v, mx, temp) >= (double)p.min_p && k < lowest) lowest = k;
        }
        lowest = block_ext(lowest, true, sk);
        k1 = lowest == ~0ull ? best : lowest;
    }

    // top-p: the shortest prefix whose probability reaches top_p (all that is left if none)
    uint64_t k2 = k1;
    if (p.top_p < 1.f) {
        const double target = (double)p.top_p * z;
        double m;
        at_least(l, V, k1, mx, temp, true, &c, &m, sc, sm);
        if (m >= target) k2 = bisect(l, V, k1, best, BY_MASS_GE, target, mx, temp, sc, sm);
    }

    // the draw: the first token at which the running sum passes u * (the kept sum)
    double tot;
    at_least(l, V, k2, mx, temp, true, &c, &tot, sc, sm);
    const double r = uniform01(p.seed, p.step) * tot;
    const uint64_t k3 = bisect(l, V, k2, best, BY_MASS_GT, r, mx, temp, sc, sm);
    if (threadIdx.x == 0) ids[blockIdx.x] = id_of(k3);
}

}  // namespace

extern "C" int glm_cu_sample(float *logits, const glm_cu_sample_row *rows, int R, const int32_t *hist, int V,
                             int32_t *ids, cudaStream_t st) {
    if (R < 0 || V < 1) return glm_err(-1, "glm_cu_sample: %d rows of %d logits", R, V);
    if (R == 0) return 0;
    sample_kernel<<<R, SAMPLE_THREADS, 0, st>>>(logits, rows, hist, V, ids);
    CUDA_CHECK_LAUNCH();
    return 0;
}
