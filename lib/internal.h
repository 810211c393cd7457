/* internal.h - shared declarations inside libglm: error reporting, tensors,
 * the bound model, and the safetensors reader/writer. Not installed. */
#ifndef GLM_INTERNAL_H
#define GLM_INTERNAL_H

#include "glm.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Sets the thread's error message and returns status (so `return glm_err(...)` reads well). */
int glm_err(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Seconds on the monotonic clock. */
double glm_now_s(void);

/* ---- numbers ---- */
float glm_bf16_to_f32(uint16_t h);
uint16_t glm_f32_to_bf16(float f);          /* round to nearest even */
float glm_f16_to_f32(uint16_t h);
uint16_t glm_f32_to_f16(float f);
float glm_fp8e4m3_to_f32(uint8_t b);
extern float glm_fp8_lut[256];              /* fp8 e4m3 byte -> float, filled by glm_numbers_init */
void glm_numbers_init(void);
/* Returns the E4M3 byte nearest to f, ties to even, saturating at +-448 (NaN -> 0x7f,
 * -0 -> 0x00); without branches or a search, so a loop over it vectorises (the converter's
 * hot loop). tests/test-convert.c checks it against a search over the 127 magnitudes. */
static inline uint8_t glm_f32_to_fp8e4m3(float f) {
    uint32_t u, a, t;
    memcpy(&u, &f, 4);
    a = u & 0x7fffffffu;
    float af, tf;
    memcpy(&af, &a, 4);
    /* below 2^-6 the codes are the multiples of 2^-9: adding 2^14 (whose ulp is 2^-9)
     * rounds to one of them, ties to even, and the low bits are the code */
    tf = af + 16384.0f;
    memcpy(&t, &tf, 4);
    uint32_t sub = t - 0x46800000u;
    /* normal range: rebias the exponent (127 -> 7) and round the 23-bit mantissa to 3 bits,
     * ties to even (0x7ffff plus the lowest kept bit) */
    uint32_t nrm = (a + 0xc407ffffu + ((a >> 20) & 1)) >> 20;
    uint32_t code = a >= 0x43e00000u ? 0x7eu : a < 0x3c800000u ? sub : nrm;
    uint32_t sign = a ? (u >> 24) & 0x80u : 0;
    return (uint8_t)(a > 0x7f800000u ? 0x7fu : code | sign);
}

/* ---- tensors ---- */
typedef enum {
    GLM_DT_F32, GLM_DT_F16, GLM_DT_BF16, GLM_DT_F8E4M3, GLM_DT_I64, GLM_DT_I32, GLM_DT_COUNT
} glm_dtype;

const char *glm_dtype_name(glm_dtype t);
size_t glm_dtype_size(glm_dtype t);

typedef enum {
    GLM_SCALE_NONE,     /* plain F32/BF16/F16 weight */
    GLM_SCALE_CHANNEL,  /* FP8, W[n,k] = q[n,k] * s[n] */
    GLM_SCALE_BLOCK,    /* FP8, W[n,k] = q[n,k] * s[n/128][k/128] */
} glm_scale_kind;

#define GLM_BLOCK 128

/* A weight as stored in the checkpoint, 1-D or 2-D ([rows=out, cols=in]). */
typedef struct {
    const char *name;
    glm_dtype dtype;
    int64_t rows, cols;        /* 1-D tensors: rows = 1, cols = n */
    const void *data;          /* host memory (mmap) */
    glm_scale_kind scale_kind;
    glm_dtype scale_dtype;     /* F32, BF16 or F16 */
    const void *scale;         /* CHANNEL: [rows]; BLOCK: [ceil(rows/128), ceil(cols/128)] */
    void *dev;                 /* backend copy of data (CUDA), or NULL */
    void *dev_scale;           /* backend copy of the scale as float32, or NULL */
    /* A view (a tensor-parallel rank's slice): rows x cols of the stored tensor starting
     * at (row0, col0), whose rows are ld elements apart; data and scale stay those of the
     * whole tensor. All zero for a whole tensor (ld 0 = cols). */
    int64_t row0, col0, ld;
} glm_weight;

/* Bytes the weight occupies as stored (data + scales). */
uint64_t glm_weight_bytes(const glm_weight *w);
/* Dequantises row r into out[cols] (float32); of a view, the view's row r and columns. */
void glm_weight_row(const glm_weight *w, int64_t r, float *out);
/* Reads element i of a 1-D weight (or view) as float. */
float glm_weight_get1(const glm_weight *w, int64_t i);
/* Returns the view of rows [r0, r1) of w (w may itself be a view). */
glm_weight glm_weight_rows(const glm_weight *w, int64_t r0, int64_t r1);
/* Returns the view of columns [c0, c1) of w (a 1-D weight's elements [c0, c1)). */
glm_weight glm_weight_cols(const glm_weight *w, int64_t c0, int64_t c1);

/* ---- safetensors ---- */
typedef struct {
    char *name;
    glm_dtype dtype;
    int n_dims;
    int64_t shape[4];
    uint64_t begin, end;       /* absolute byte offsets in the file */
    const void *data;          /* into the mapping */
    int file;                  /* index of the file in the set */
} glm_st_tensor;

typedef struct glm_st_set glm_st_set;

/* Opens one file or a sharded set (dir/model.safetensors.index.json), mmap'd, validated. */
int glm_st_open_dir(const char *dir, glm_st_set **out);
int glm_st_open_file(const char *path, glm_st_set **out);
void glm_st_close(glm_st_set *s);
/* Looks up a tensor by name (hash map); NULL if absent. */
const glm_st_tensor *glm_st_find(const glm_st_set *s, const char *name);
size_t glm_st_count(const glm_st_set *s);
const glm_st_tensor *glm_st_at(const glm_st_set *s, size_t i);
const char *glm_st_file_path(const glm_st_set *s, int file);
uint64_t glm_st_total_bytes(const glm_st_set *s);

/* Reads every mapped page once (so a later pass does not stall on the disk), calling
 * progress after each 64 MiB; a non-zero return from progress cancels. */
int glm_st_prefetch(glm_st_set *s, glm_progress_fn progress, void *user);
/* In-memory sets: tensors described (data may be NULL) for synthetic models. */
glm_st_set *glm_st_new_memory(void);
int glm_st_add_memory(glm_st_set *s, const char *name, glm_dtype dtype, int n_dims,
                      const int64_t *shape, const void *data);
int glm_st_finish_memory(glm_st_set *s);

/* A safetensors header being built, its 8-byte length prefix included: buf[0..len) is
 * what goes at the start of the file once glm_st_header_end has run (data at byte len). */
typedef struct { char *buf; size_t len, cap; } glm_st_header;
/* Starts h with room for the prefix and {"__metadata__":{"format":"pt"}; returns a status. */
int glm_st_header_begin(glm_st_header *h);
/* Appends "name":{dtype, shape[nd], data_offsets [off, off + nbytes)}; returns a status. */
int glm_st_header_add(glm_st_header *h, const char *name, glm_dtype dt, int nd, const int64_t *shape,
                      uint64_t off, uint64_t nbytes);
/* Closes the object, pads it with spaces to a multiple of 8 bytes and fills the length
 * prefix; returns a status. */
int glm_st_header_end(glm_st_header *h);
void glm_st_header_free(glm_st_header *h);

/* Writer: add tensors (data borrowed until write returns), then write to path. */
typedef struct glm_st_writer glm_st_writer;
glm_st_writer *glm_st_writer_new(void);
/* Borrows data (nbytes must equal numel * dtype size) until glm_st_writer_write returns. */
int glm_st_writer_add(glm_st_writer *w, const char *name, glm_dtype dtype, int n_dims,
                      const int64_t *shape, const void *data, size_t nbytes);
int glm_st_writer_write(glm_st_writer *w, const char *path);
void glm_st_writer_free(glm_st_writer *w);

/* ---- files ---- */
/* Reads a whole file into a NUL-terminated malloc'd buffer. */
int glm_read_file(const char *path, char **data, size_t *len);
/* Joins dir and name into buf[cap] (dir's trailing slashes dropped); returns GLM_OK, or
 * GLM_ERR_ARG naming the path (its start and name) with buf empty when it does not fit. */
int glm_path_join(char *buf, size_t cap, const char *dir, const char *name);

/* ---- the bound model ---- */
typedef struct {
    glm_weight attn_norm, ffn_norm;          /* [n_embd] */
    glm_weight wq, wk, wv, wo;               /* [n_head*hd, n_embd] [n_kv*hd, n_embd] x2 [n_embd, n_head*hd] */
    glm_weight bq, bk, bv;                   /* [n_head*hd] [n_kv*hd] [n_kv*hd], or empty */
    glm_weight q_norm, k_norm;               /* [head_dim], or empty */
    /* dense layers (il < n_dense_layer) */
    glm_weight ffn_gate, ffn_up;             /* [n_ff, n_embd] */
    glm_weight ffn_down;                     /* [n_embd, n_ff] */
    /* MoE layers */
    glm_weight router;                       /* [n_expert, n_embd] */
    glm_weight router_bias;                  /* [n_expert] e_score_correction_bias */
    glm_weight *exp_gate, *exp_up;           /* n_expert x [n_ff_exp, n_embd] */
    glm_weight *exp_down;                    /* n_expert x [n_embd, n_ff_exp] */
    glm_weight sh_gate, sh_up;               /* [n_ff_exp*n_shared, n_embd] */
    glm_weight sh_down;                      /* [n_embd, n_ff_exp*n_shared] */
} glm_layer;

struct glm_model {
    char *dir;
    glm_hparams hp;
    glm_st_set *st;
    glm_weight tok_embd;                     /* [n_vocab, n_embd] */
    glm_weight out_norm;                     /* [n_embd] */
    glm_weight lm_head;                      /* [n_vocab, n_embd] */
    glm_layer *layers;                       /* [n_layer] */
    char desc[160];
    uint64_t n_params, n_bytes;
    void *synthetic;                         /* owned host memory for generated models, or NULL */
    /* The MTP (next-token prediction) layer, bound when has_mtp: its decoder block is
     * layers[n_layer] (the layers array then has n_layer + 1 entries). DeepSeek-V3 style:
     * x = eh_proj([enorm(embed(next token)), hnorm(h)]), the block, shared_head.norm, lm_head. */
    int has_mtp;
    glm_weight mtp_enorm, mtp_hnorm;         /* [n_embd] */
    glm_weight mtp_eh_proj;                  /* [n_embd, 2 * n_embd] */
    glm_weight mtp_head_norm;                /* [n_embd] shared_head.norm */
    glm_weight mtp_embd, mtp_head;           /* the layer's own embed_tokens / shared_head.head
                                                copies [n_vocab, n_embd], or empty (name NULL):
                                                the main model's are used */
};

/* The MTP layer's embedding and head: its own copies when the checkpoint has them. */
static inline const glm_weight *glm_mtp_embd(const glm_model *m) { return m->mtp_embd.name ? &m->mtp_embd : &m->tok_embd; }
static inline const glm_weight *glm_mtp_head(const glm_model *m) { return m->mtp_head.name ? &m->mtp_head : &m->lm_head; }

/* Binds a synthetic model's weights from its in-memory tensor set. */
int glm_model_bind_synthetic(glm_model *m);
/* Frees the host buffers a synthetic model owns. */
void glm_synthetic_release(void *owned);

/* Parses config.json text into hp; path names the file in errors. */
int glm_hparams_parse(const char *json, size_t len, const char *path, glm_hparams *hp);

/* ---- sampling (lib/sampler.c) ---- */
/* Applies p's repetition, presence and frequency penalties over the last repeat_last_n
 * tokens of history[n_history] (all with -1; NULL or none on: l unchanged) to l[n_vocab]
 * in place: the first step of glm_sampler_sample, shared with speculative decoding. */
void glm_apply_penalties(float *l, int n_vocab, const glm_sampler_params *p, const int32_t *history, int n_history);

/* ---- speculative decoding (lib/spec.c) ---- */
/* The speculative-sampling rule for one drafted token x drawn from q: accepted when
 * u < p[x] / q[x] (u uniform in [0, 1)); otherwise the token drawn with u2 from
 * norm(max(p - q, 0)). p, q: [n] probabilities. Returns the token; *accepted says which. */
int32_t glm_spec_accept(const float *p, const float *q, int n, int32_t x, double u, double u2, int *accepted);

/* The rules of a speculative step, shared by glm_spec and the scheduler (lib/sched.c):
 * sp is the sequence's sampler parameters (temp <= 0: greedy), rng its generator, and the
 * penalties look at hist[0..n_hist) (the history as the sampler sees it without drafting)
 * followed by the drafts before the position. */
typedef struct {
    int V;
    float *p;          /* [V] a main-model distribution */
    float *pl;         /* [V] penalised logits */
    int32_t *idx;      /* [V] sort scratch */
} glm_spec_work;
int glm_spec_work_init(glm_spec_work *w, int V);
void glm_spec_work_free(glm_spec_work *w);
/* The generator's first state for a seed. */
uint64_t glm_spec_rng_init(uint64_t seed);
/* l after sp's penalties over hist[0..n_hist): l itself when no penalty is on, else w->pl. */
const float *glm_spec_penalised(glm_spec_work *w, const glm_sampler_params *sp, const float *l, const int32_t *hist, int n_hist);
/* A pick from logits l (penalised already): the argmax when greedy, else a draw from the
 * sampler's distribution for l, whose probabilities are left in p[V]. */
int32_t glm_spec_pick(glm_spec_work *w, const glm_sampler_params *sp, uint64_t *rng, const float *l, float *p);
/* Drafts d[0..n) for sequence seq whose main cache holds M tokens (the last token returned
 * not in it): d[0] from the MTP layer's logits qlog, d[j] from the MTP layer run at
 * position M+j-1 on (d[j-1], g for j = 1, else its previous output). q[n, V] receives the
 * draft distributions (sampling; NULL when greedy); dg[D], dlog[V] are scratch. With a penalty on,
 * hist[n_hist + j] = d[j] (d may be that very place). Returns 0 or the MTP layer's error
 * (the caller cuts the sequence back to M). */
int glm_spec_draft(glm_spec_work *w, const glm_sampler_params *sp, uint64_t *rng, glm_ctx *ctx, int seq, int M,
                   const float *qlog, const float *g, int n, int32_t *d, float *q, float *dg, float *dlog,
                   int32_t *hist, int n_hist);
/* Accepts drafts d[0..n) against the main model's logits of batch rows row0..row0+n of the
 * last decode (row row0 + j: the token after the j-th draft): greedy, while the argmax
 * equals the draft; sampling, by glm_spec_accept against q[n, V]. Returns the number k
 * accepted (or an error < 0) and the token after them in *next: the correction, or the
 * bonus token picked from row row0 + n when all are accepted. */
int glm_spec_verify(glm_spec_work *w, const glm_sampler_params *sp, uint64_t *rng, glm_ctx *ctx, int row0,
                    const int32_t *d, const float *q, int n, const int32_t *hist, int n_hist, int32_t *next);

#endif
