/* glm.h - the one public header of libglm: load GLM-4.x MoE checkpoints, run them
 * on the CPU or CUDA backend, sample, and tokenize.
 *
 * Conventions: functions return an int status (GLM_OK = 0, positive = warning,
 * negative = error) and set a thread-local message readable with glm_last_error().
 * The library never prints to stdout and never exits; the tools decide. */
#ifndef GLM_H
#define GLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ---- */
enum glm_status {
    GLM_OK = 0,
    GLM_WARN_KV_FULL = 1,          /* not enough free KV pages: free sequences and retry */
    GLM_ERR_ARG = -1,              /* invalid argument */
    GLM_ERR_IO = -2,               /* file missing, unreadable or truncated */
    GLM_ERR_FORMAT = -3,           /* malformed file: names the file and the tensor/field */
    GLM_ERR_OOM = -4,              /* host or device memory exhausted */
    GLM_ERR_NOT_IMPLEMENTED = -5,  /* a feature that is not built */
    GLM_ERR_CUDA = -6,             /* a CUDA/cuBLASLt/NCCL call failed */
    GLM_ERR_UNSUPPORTED = -7,      /* input uses a construct this build does not support */
};

/* The message of the last error on this thread ("" if none). */
const char *glm_last_error(void);
/* A short name for a status code. */
const char *glm_status_str(int status);
/* Non-zero when this build has the CUDA backend and a usable GPU. */
int glm_cuda_available(void);

/* ---- model ---- */
typedef struct glm_model glm_model;
typedef struct glm_ctx glm_ctx;
typedef struct glm_sampler glm_sampler;
typedef struct glm_tokenizer glm_tokenizer;

#define GLM_MAX_EOS 8

typedef struct {
    int n_vocab;          /* vocab_size */
    int n_embd;           /* hidden_size */
    int n_layer;          /* num_hidden_layers (the MTP layer is not counted) */
    int n_dense_layer;    /* first_k_dense_replace */
    int n_head;           /* num_attention_heads */
    int n_head_kv;        /* num_key_value_heads */
    int head_dim;         /* head_dim */
    int n_rot;            /* rotary dims per head: head_dim * partial_rotary_factor */
    int n_ff;             /* intermediate_size (dense MLP) */
    int n_ff_exp;         /* moe_intermediate_size */
    int n_expert;         /* n_routed_experts */
    int n_expert_used;    /* num_experts_per_tok */
    int n_expert_shared;  /* n_shared_experts */
    int n_nextn;          /* num_nextn_predict_layers (loaded: no, skipped) */
    int n_ctx_train;      /* max_position_embeddings */
    int norm_topk_prob;
    int use_qk_norm;
    int attn_bias;
    float rope_theta;
    float rms_eps;
    float routed_scale;   /* routed_scaling_factor */
    int n_eos;
    int32_t eos[GLM_MAX_EOS];
} glm_hparams;

/* Called during loading with bytes done and total; return non-zero to cancel. */
typedef int (*glm_progress_fn)(uint64_t done, uint64_t total, void *user);

typedef struct {
    glm_progress_fn progress;   /* when set, the weights are read in once, reporting progress */
    void *progress_user;
    int mtp;                    /* glm_mtp_mode: whether the MTP layer (layer n_layer) is bound */
} glm_model_params;

glm_model_params glm_model_default_params(void);
/* Loads config.json and the safetensors (single or sharded) from a directory. */
int glm_model_load(const char *dir, const glm_model_params *params, glm_model **out);
void glm_model_free(glm_model *model);
const glm_hparams *glm_model_hparams(const glm_model *model);
/* Total parameters (elements) of the loaded tensors, MTP layer excluded. */
uint64_t glm_model_n_params(const glm_model *model);
/* Bytes of weight data as stored (what a decode step streams when all experts are touched). */
uint64_t glm_model_n_bytes(const glm_model *model);
/* A one-line description: "glm4_moe 3 layers, hidden 160, 8 experts, fp8-channel". */
const char *glm_model_desc(const glm_model *model);

/* ---- synthetic checkpoints (random weights in the real layout) ---- */
typedef enum {
    GLM_FMT_BF16 = 0,          /* unquantised BF16 */
    GLM_FMT_FP8_CHANNEL = 1,   /* GLM-4.7-FP8: F8_E4M3 + per-channel weight_scale */
    GLM_FMT_FP8_BLOCK = 2,     /* DeepSeek-style: F8_E4M3 + 128x128 weight_scale_inv */
} glm_weight_format;

/* Fills hp from a named preset ("tiny", "glm-4.7"); n_layers > 0 overrides the depth. */
int glm_preset(const char *name, int n_layers, glm_hparams *hp);
/* Writes config.json, one shard a layer and model.safetensors.index.json into dir. */
int glm_synthetic_write(const glm_hparams *hp, glm_weight_format fmt, const char *dir, uint64_t seed,
                        glm_progress_fn progress, void *user);
/* Builds a random model in memory; with_host_data = 0 gives shapes only (data == NULL),
 * for backends that generate the weights on the device. */
int glm_model_synthetic(const glm_hparams *hp, glm_weight_format fmt, int with_host_data, uint64_t seed,
                        glm_model **out);

/* ---- context: KV cache + backend ---- */
typedef enum {
    GLM_DEVICE_CPU = 0,
    GLM_DEVICE_CUDA = 1,
} glm_device;

typedef enum {
    GLM_KV_BF16 = 0,  /* CUDA default */
    GLM_KV_FP8 = 1,
    GLM_KV_F32 = 2,   /* CPU */
} glm_kv_type;

typedef struct {
    glm_device device;
    int n_threads;      /* CPU threads; 0 = all cores */
    int n_ctx;          /* max tokens in one sequence */
    int n_seq_max;      /* sequences decoding together */
    int n_batch;        /* max tokens in one glm_ctx_decode call */
    int n_kv_pages;     /* 0 = enough for n_seq_max * n_ctx (CPU), or from kv_frac (CUDA) */
    float kv_frac;      /* CUDA: fraction of free GPU memory for KV pages after loading */
    glm_kv_type kv_type;
    int gpu;            /* CUDA device index */
    int n_tp;           /* tensor-parallel ranks (0 or 1: one); must divide n_head_kv. CPU: the
                           ranks are threads of this process (n_threads split between them);
                           CUDA: a GPU a rank, each driven by a thread, summing through NCCL
                           (docs/PARALLEL.md) */
    int moe_split;      /* glm_moe_split: how the routed experts are shared out between ranks */
    const int *gpus;    /* CUDA with n_tp > 1: rank r runs on gpus[r % n_gpus]; NULL: on GPU
                           r % (GPUs present). Fewer GPUs than ranks: the ranks share them and
                           sum through host memory ("shared-gpu", a test and projection mode) */
    int n_gpus;
    const char *dist_init; /* several processes, one rank each (CUDA): "file:PATH" or
                           "tcp:HOST:PORT", where global rank 0 hands the NCCL id to the others;
                           RANK, WORLD_SIZE (the ranks) and LOCAL_RANK (this process's GPU, or
                           its index in gpus) come from the environment. Every process gathers
                           the whole logits. NULL: one process */
    glm_progress_fn progress;  /* CUDA: called as the weights go onto the GPUs (bytes done and
                           total over all ranks, from the loading threads one at a time);
                           non-zero cancels. NULL: quiet */
    void *progress_user;
    int tp_solo;        /* with n_tp > 1: make and run rank 0's slice alone, collectives
                           skipped: a rank's own step for projections (glm-bench); the logits
                           are not the model's */
    int mtp;            /* 1 = also keep a KV cache for the model's MTP layer, in the same pages
                           (speculative decoding, lib/spec.c); needs a model with it bound, one
                           rank (CPU or CUDA) */
} glm_ctx_params;

/* Routed experts over tensor-parallel ranks (docs/PARALLEL.md). */
typedef enum {
    GLM_MOE_SPLIT_TP = 0,   /* every rank a 1/n_tp slice of every expert's intermediate rows (default) */
    GLM_MOE_SPLIT_EP = 1,   /* each rank n_expert/n_tp whole experts (n_tp must divide n_expert) */
} glm_moe_split;

glm_ctx_params glm_ctx_default_params(void);
int glm_ctx_new(glm_model *model, const glm_ctx_params *params, glm_ctx **out);
void glm_ctx_free(glm_ctx *ctx);

/* A batch: tokens appended to their sequences' caches, in order, in one forward pass. */
typedef struct {
    int n_tokens;
    const int32_t *tokens;   /* [n_tokens] */
    const int32_t *seq;      /* [n_tokens] sequence of each token, or NULL: all sequence 0 */
    const int8_t *logits;    /* [n_tokens] 1 = return logits for this row, or NULL: last row only */
} glm_batch;

/* Runs the batch. Returns GLM_OK, GLM_WARN_KV_FULL (nothing done) or an error. */
int glm_ctx_decode(glm_ctx *ctx, const glm_batch *batch);
/* Logits [n_vocab] of batch row i of the last decode (only rows that asked). */
const float *glm_ctx_logits(glm_ctx *ctx, int i);
/* Drops a sequence's tokens and frees its pages. */
int glm_ctx_seq_clear(glm_ctx *ctx, int seq);
/* Tokens cached for a sequence. */
int glm_ctx_seq_len(const glm_ctx *ctx, int seq);
/* KV pages free / total. */
int glm_ctx_kv_pages_free(const glm_ctx *ctx);
int glm_ctx_kv_pages_total(const glm_ctx *ctx);

/* ---- tensor parallel (docs/PARALLEL.md) ---- */
/* CUDA devices present (0 without CUDA or a GPU); free and total bytes of one GPU. */
int glm_cuda_device_count(void);
int glm_cuda_mem_info(int gpu, uint64_t *free_b, uint64_t *total_b);
/* The place of this process from RANK, WORLD_SIZE and LOCAL_RANK in the environment
 * (unset: 0, 1, 0); a status naming a variable that is not an integer in range. */
int glm_dist_env(int *rank, int *world_size, int *local_rank);
/* Checks a dist_init spec ("file:PATH" or "tcp:HOST:PORT") without the file system or the
 * network; GLM_OK or GLM_ERR_ARG naming what is wrong. */
int glm_dist_spec_check(const char *spec);
/* Ranks the context runs (1 without tensor parallelism, and with tp_solo) and how they
 * sum: "none" (one rank), "local" (CPU threads), "nccl" or "shared-gpu". */
int glm_ctx_tp_ranks(const glm_ctx *ctx);
const char *glm_ctx_tp_kind(const glm_ctx *ctx);
/* Host seconds rank 0 has spent inside collectives since the context was made (the whole
 * sum for "local" and "shared-gpu"; for "nccl" only the enqueue, the sum itself runs on
 * the GPU), and their number in *n (may be NULL). */
double glm_ctx_comm_seconds(const glm_ctx *ctx, long *n);

/* ---- sampling ---- */
typedef struct {
    float temp;              /* 0 = greedy */
    int top_k;               /* 0 = off */
    float top_p;             /* 1 = off */
    float min_p;             /* 0 = off */
    float repeat_penalty;    /* 1 = off */
    int repeat_last_n;       /* tokens of history the penalties look at; -1 = all */
    float presence_penalty;  /* 0 = off */
    float frequency_penalty; /* 0 = off */
    uint64_t seed;
} glm_sampler_params;

glm_sampler_params glm_sampler_default_params(void);
glm_sampler *glm_sampler_new(const glm_sampler_params *params);
void glm_sampler_free(glm_sampler *s);
/* Picks the next token from logits[n_vocab]; history (may be NULL) feeds the penalties. */
int32_t glm_sampler_sample(glm_sampler *s, const float *logits, int n_vocab,
                           const int32_t *history, int n_history);
/* Sampling on the context's device, a batch at once (only the ids leave the device):
 * ids[i] = a token from the logits of batch row rows[i] of the last glm_ctx_decode, under
 * params[i] and glm_sampler_sample's rules, the penalties over hist[i][0..n_hist[i])
 * (hist, n_hist may be NULL: none) and the draw a function of (params[i].seed, steps[i])
 * alone, not of the rest of the batch. Greedy (temp <= 0) gives exactly what
 * glm_sampler_sample gives from glm_ctx_logits; the other draws follow the same
 * distribution, from a different generator. The rows must be distinct, and a decode's
 * rows are sampled once. GLM_ERR_NOT_IMPLEMENTED (nothing done) where the context cannot
 * sample these rows on its device (see glm_ctx_samples_on_device; also the rows of a
 * decode's earlier passes, or a pass of more than 256 logits rows): sample on the host. */
int glm_ctx_sample(glm_ctx *ctx, int n, const int32_t *rows, const glm_sampler_params *params,
                   const uint64_t *steps, const int32_t *const *hist, const int *n_hist, int32_t *ids);
/* 1 when glm_ctx_sample can work: a CUDA context of one rank; 0 otherwise. */
int glm_ctx_samples_on_device(const glm_ctx *ctx);

/* ---- tokenizer (tokenizer/) ---- */
/* BEGIN tokenizer API */
/* Byte-level BPE from a Hugging Face tokenizer.json, id-for-id equal to HF tokenizers'
 * encode(text, add_special_tokens=...) for the constructs it loads; anything else in
 * the file (another model type, normalizer, pre-tokenizer, regex construct) is a load
 * error naming it. Input text must be valid UTF-8: glm_tokenize returns GLM_ERR_ARG
 * naming the byte offset of the first invalid byte. Decoding follows HF's ByteLevel
 * decoder; byte sequences that are not valid UTF-8 come out as U+FFFD, one per maximal
 * invalid subsequence (Rust's String::from_utf8_lossy). A tokenizer may be used from
 * several threads at once. */

enum glm_tok_flags {
    GLM_TOK_PARSE_SPECIAL = 1,  /* special-token strings in the text become their ids (HF default);
                                   without it they are encoded as plain text */
    GLM_TOK_ADD_SPECIAL = 2,    /* apply the post-processor template (GLM: [gMASK]<sop> first), as
                                   HF's encode(text) does by default */
    GLM_DETOK_SKIP_SPECIAL = 4, /* glm_detokenize / stream: drop special tokens */
};

/* Loads a tokenizer.json file. */
int glm_tokenizer_load(const char *path, glm_tokenizer **out);
/* Loads an in-memory tokenizer.json; name labels error messages. */
int glm_tokenizer_load_mem(const char *json, size_t len, const char *name, glm_tokenizer **out);
/* Loads dir/tokenizer.json, plus dir/tokenizer_config.json (chat template, eos token) and
 * dir/chat_template.jinja when present. */
int glm_tokenizer_load_dir(const char *dir, glm_tokenizer **out);
void glm_tokenizer_free(glm_tokenizer *tok);

/* Largest token id + 1 (model vocabulary and added tokens). */
int glm_tokenizer_n_vocab(const glm_tokenizer *tok);

/* Encodes text[0..len) into a malloc'd array of ids (*out, caller frees with free()) of
 * *n_out ids. flags: GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL. */
int glm_tokenize(const glm_tokenizer *tok, const char *text, size_t len, int flags,
                 int32_t **out, int *n_out);

/* The bytes token id stands for once decoded (not NUL-terminated; may be part of a UTF-8
 * character), with *len set; NULL for an id outside the vocabulary. */
const char *glm_token_piece(const glm_tokenizer *tok, int32_t id, size_t *len);
/* The token's string as written in tokenizer.json ("Ġthe", "<|user|>"), NUL-terminated;
 * NULL for an id outside the vocabulary. */
const char *glm_token_text(const glm_tokenizer *tok, int32_t id);
/* Non-zero when id is an added token marked special. */
int glm_token_is_special(const glm_tokenizer *tok, int32_t id);
/* The id of the added token whose content is text, else of the vocabulary token whose
 * tokenizer.json string is text; -1 when there is none. */
int32_t glm_tokenizer_find(const glm_tokenizer *tok, const char *text);
/* The id of tokenizer_config.json's eos_token, or -1 when unknown. */
int32_t glm_tokenizer_eos(const glm_tokenizer *tok);

/* Decodes ids into a malloc'd NUL-terminated string (*out, caller frees; *len bytes
 * without the NUL; len may be NULL). flags: GLM_DETOK_SKIP_SPECIAL. Invalid UTF-8 from
 * byte tokens becomes U+FFFD; an id outside the vocabulary is GLM_ERR_ARG. */
int glm_detokenize(const glm_tokenizer *tok, const int32_t *ids, int n_ids, int flags,
                   char **out, size_t *len);

/* Streaming decoder for generation: feed ids one at a time, get only complete UTF-8
 * characters back (a character split over tokens comes out whole with its last byte).
 * The concatenated output equals glm_detokenize of all ids. */
typedef struct glm_detok_stream glm_detok_stream;
int glm_detok_stream_new(const glm_tokenizer *tok, int flags, glm_detok_stream **out);
/* Adds one token; *text (owned by the stream, valid until the next call) gets *len
 * bytes of complete characters, possibly zero. */
int glm_detok_stream_push(glm_detok_stream *s, int32_t id, const char **text, size_t *len);
/* Ends the stream: returns what is still held (U+FFFD for an unfinished character). */
int glm_detok_stream_flush(glm_detok_stream *s, const char **text, size_t *len);
void glm_detok_stream_free(glm_detok_stream *s);

/* ---- chat format ---- */
typedef enum {
    GLM_CHAT_GLM45 = 1,  /* GLM-4.5 / 4.6: "<|user|>\n{msg}", "/nothink" when thinking is off */
    GLM_CHAT_GLM47 = 2,  /* GLM-4.7: "<|user|>{msg}", "<|assistant|><think>" or "</think>" */
} glm_chat_format;

typedef struct {
    const char *role;       /* "system", "user", "assistant" or "tool" */
    const char *content;
    const char *reasoning;  /* assistant reasoning_content, or NULL (then taken from
                               "<think>...</think>" inside content, as the templates do) */
} glm_chat_msg;

/* The format a chat template text uses: GLM-4.5 when the first "<|user|>" in it is
 * followed by a newline (written out, or as the escape \n inside a template string),
 * else GLM-4.7 (also when text is NULL or has no "<|user|>"). */
glm_chat_format glm_chat_detect_format(const char *template_text);
/* The format of a tokenizer loaded with glm_tokenizer_load_dir (from its chat template),
 * GLM-4.7 otherwise. */
glm_chat_format glm_tokenizer_chat_format(const glm_tokenizer *tok);
/* Renders messages as the model's chat template does for string contents (no tools),
 * starting with "[gMASK]<sop>"; add_generation_prompt opens the assistant turn and
 * thinking = 0 renders enable_thinking=false. *out is malloc'd and NUL-terminated
 * (caller frees); len may be NULL. Unknown roles are GLM_ERR_ARG. */
int glm_chat_render(glm_chat_format format, const glm_chat_msg *msgs, int n_msgs,
                    int add_generation_prompt, int thinking, char **out, size_t *len);
/* END tokenizer API */


/* ---- scheduler ---- */
/* Continuous batching over one context: requests come and go between steps; each step
 * feeds the running requests' next tokens (one a decoding request, then chunks of
 * prompts) under a token budget, and samples every request whose tokens are all in the
 * cache. Admission waits for free KV pages; when pages run out the newest running
 * request is preempted (its pages freed, recomputed later: its output is what it would
 * have been). With the prefix cache, full 16-token pages are shared between requests
 * whose tokens agree up to the end of the page; cached pages no request holds are
 * reclaimed, least recently used first, before anything is preempted. Uses the context's
 * sequences 0..n_seq_max-1 as request slots. Not thread-safe: one thread calls it. */
typedef struct glm_sched glm_sched;

typedef enum {
    GLM_FINISH_NONE = 0,       /* still generating */
    GLM_FINISH_STOP = 1,       /* an end-of-sequence token or a stop string */
    GLM_FINISH_LENGTH = 2,     /* max_tokens generated, or the context is full */
    GLM_FINISH_CANCELLED = 3,  /* glm_sched_cancel */
    GLM_FINISH_ERROR = 4,      /* a step failed (glm_sched_step returned the error) */
} glm_finish_reason;

/* What a request's callback receives: one event a generated token, the last one with
 * finish set (a cancelled or failed request gets a last event with token -1). */
typedef struct {
    int64_t id;
    int32_t token;             /* the token generated, or -1 */
    const char *text;          /* text that became final with this event (NULL without a
                                  tokenizer); text that may begin a stop string is held back */
    size_t len;
    glm_finish_reason finish;
    int n_prompt;              /* prompt tokens */
    int n_cached;              /* of them taken from the prefix cache at admission */
    int n_gen;                 /* tokens generated so far, this one included */
} glm_sched_event;

typedef void (*glm_sched_fn)(void *user, const glm_sched_event *ev);

typedef struct {
    int batch_tokens;              /* tokens one step feeds at most; 0 = the context's n_batch */
    int prefix_cache;              /* 1 = share full pages between requests by content */
    const glm_tokenizer *tok;      /* for text in the events and stop strings; NULL: ids only */
    int host_sampling;             /* 1 = sample on the host even where the context could
                                      on its device (glm_ctx_sample) */
    int n_draft;                   /* speculative decoding: tokens the MTP layer drafts for each
                                      decoding request a step, verified for the whole batch in
                                      the step's one forward (0 = off, up to GLM_SPEC_MAX_DRAFT;
                                      needs a context made with params.mtp = 1). Greedy
                                      requests give the same tokens as without; sampling
                                      follows glm_spec's rules on the host, from a generator
                                      seeded with the request's seed */
} glm_sched_params;

typedef struct {
    const int32_t *prompt;         /* [n_prompt], copied */
    int n_prompt;
    int max_tokens;                /* tokens to generate at most, >= 1 */
    glm_sampler_params sampling;   /* penalties look at the generated tokens */
    const char *const *stop;       /* [n_stop] stop strings (copied; need a tokenizer) */
    int n_stop;
    int ignore_eos;                /* 1 = go on past the model's end-of-sequence tokens */
    glm_sched_fn on_event;         /* called from glm_sched_step / glm_sched_cancel; it must
                                      not call the scheduler */
    void *user;
} glm_request;

typedef struct {
    int running, waiting;          /* requests holding a slot / queued (preempted ones too) */
    int kv_pages_total;
    int kv_pages_used;             /* held by requests */
    int kv_pages_cached;           /* held only by the prefix cache (reclaimable) */
    uint64_t prompt_tokens;        /* prompt tokens of admitted requests */
    uint64_t cached_tokens;        /* of them found in the prefix cache */
    uint64_t computed_tokens;      /* tokens fed to the model (recomputation included) */
    uint64_t generated_tokens;
    uint64_t preemptions;
    uint64_t finished;             /* requests ended (any reason) */
    uint64_t device_sampled;       /* tokens sampled on the context's device (glm_ctx_sample) */
    uint64_t draft_steps;          /* n_draft: request steps that verified drafts */
    uint64_t draft_tokens;         /* tokens drafted */
    uint64_t accepted_tokens;      /* of them accepted by the main model */
    uint64_t steps;                /* glm_sched_step calls that fed the model */
    uint64_t prefill_steps;        /* of them those that fed a prompt chunk (or recomputed
                                      a preempted request's tokens) */
    double t_step;                 /* seconds inside those calls, all of it */
    double t_prefill_step;         /* of it in those steps */
    double t_forward;              /* of it in the model's forward (glm_ctx_decode*) */
    double t_sample;               /* of it picking the tokens after the forward (sampling;
                                      with drafting, verifying and the MTP layer's passes) */
} glm_sched_stats;

glm_sched_params glm_sched_default_params(void);
/* A scheduler over ctx (which it does not own; its sequences must be empty). */
int glm_sched_new(glm_ctx *ctx, const glm_sched_params *params, glm_sched **out);
/* Frees the scheduler; requests still in it end without an event. */
void glm_sched_free(glm_sched *s);
/* Queues a request; *id identifies it. GLM_ERR_ARG when it can never run (tokens out of
 * the vocabulary, n_prompt + max_tokens past the context or the cache, stop strings
 * without a tokenizer). */
int glm_sched_submit(glm_sched *s, const glm_request *r, int64_t *id);
/* Ends a request now, freeing its pages; its callback gets GLM_FINISH_CANCELLED.
 * GLM_ERR_ARG when there is no such request (it may have finished). */
int glm_sched_cancel(glm_sched *s, int64_t id);
/* Runs one step. Returns the tokens it fed (0: nothing to do) or an error, after which
 * every request that was running has ended with GLM_FINISH_ERROR. */
int glm_sched_step(glm_sched *s);
/* Non-zero when no request is queued or running. */
int glm_sched_idle(const glm_sched *s);
void glm_sched_get_stats(const glm_sched *s, glm_sched_stats *st);
/* Drops the cached pages no request holds; returns how many were freed. */
int glm_sched_cache_clear(glm_sched *s);

/* ---- speculative decoding ---- */
/* The MTP (multi-token prediction) layer GLM-4.x checkpoints carry as layer n_layer
 * drafts tokens autoregressively; the main model verifies them all in one forward of
 * n_draft + 1 rows; greedy accepts drafts equal to the main model's argmax, sampling
 * accepts draft x with probability min(1, p(x)/q(x)) and otherwise samples from
 * norm(max(p - q, 0)) (so the output has the main model's distribution); the KV cache of
 * the main and MTP layers is rolled back past rejected tokens. The MTP layer's KV lives
 * in the sequence's own pages (layer n_layer of the context's cache). */
typedef enum {
    GLM_MTP_AUTO = 0,      /* bind the MTP layer when config.json declares it and every tensor of
                              it is present (a partial layer is left out, as without it) */
    GLM_MTP_REQUIRE = 1,   /* bind it; a missing or malformed tensor of it is a load error */
    GLM_MTP_OFF = 2,       /* never bind it (loads as a checkpoint without it) */
} glm_mtp_mode;

#define GLM_SPEC_MAX_DRAFT 16

/* Non-zero when the model's MTP layer is bound. */
int glm_model_has_mtp(const glm_model *model);
/* Cuts a sequence to its first len tokens (0 <= len <= its length), freeing the pages past
 * them; the MTP layer's positions past len go too. GLM_ERR_ARG when the page that would
 * hold the next token is shared with another holder (the prefix cache). */
int glm_ctx_seq_truncate(glm_ctx *ctx, int seq, int len);

typedef struct glm_spec glm_spec;

typedef struct {
    uint64_t steps;       /* verify forwards */
    uint64_t drafted;     /* tokens drafted */
    uint64_t accepted;    /* of them accepted */
    uint64_t emitted;     /* tokens produced by glm_spec_step (accepted + one a step) */
} glm_spec_stats;

/* A speculative decoder over ctx (created with params.mtp = 1) drafting n_draft tokens a
 * step (1..GLM_SPEC_MAX_DRAFT). sp: temp <= 0 is greedy; the penalties, temp, top_k, top_p
 * and min_p shape both the main model's and the draft's distributions as in
 * glm_sampler_sample, the penalties over the sequence's tokens (the prompt, the tokens
 * returned, then the drafts before the position), so that the output is the same as
 * glm_sampler_sample's with that history (greedy: token for token). */
int glm_spec_new(glm_ctx *ctx, int n_draft, const glm_sampler_params *sp, glm_spec **out);
void glm_spec_free(glm_spec *s);
/* Feeds the prompt to sequence seq (empty) through the main model and the MTP layer and
 * picks the first generated token into *first. */
int glm_spec_prefill(glm_spec *s, int seq, const int32_t *prompt, int n_prompt, int32_t *first);
/* One step of sequence seq: drafts, verifies, accepts; writes the 1..n_draft+1 tokens
 * that follow the last one returned into out[] and their count into *n_out. The last token
 * returned is not in the cache yet (as after glm_spec_prefill). Near the end of the context
 * it drafts fewer (none: one plain step); GLM_WARN_KV_FULL (nothing done) when the context
 * is full or the pages run out. */
int glm_spec_step(glm_spec *s, int seq, int32_t *out, int *n_out);
/* Forgets sequence seq's state (its cache is cleared too). */
int glm_spec_seq_clear(glm_spec *s, int seq);
void glm_spec_get_stats(const glm_spec *s, glm_spec_stats *st);

#ifdef __cplusplus
}
#endif
#endif
