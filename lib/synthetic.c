/* synthetic.c - random-weight GLM-4 MoE models in the real checkpoint layout:
 * written to disk (glm-convert --synthetic) through the same safetensors writer a
 * conversion uses, or built in memory for benchmarks (data may stay on the device). */
#include "internal.h"
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int glm_preset(const char *name, int n_layers, glm_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    if (strcmp(name, "tiny") == 0) {
        *hp = (glm_hparams){
            .n_vocab = 512, .n_embd = 160, .n_layer = 3, .n_dense_layer = 1, .n_head = 6, .n_head_kv = 2,
            .head_dim = 32, .n_rot = 16, .n_ff = 192, .n_ff_exp = 48, .n_expert = 8, .n_expert_used = 3,
            .n_expert_shared = 1, .n_ctx_train = 4096, .norm_topk_prob = 1, .use_qk_norm = 1, .attn_bias = 1,
            .rope_theta = 10000.0f, .rms_eps = 1e-5f, .routed_scale = 2.5f, .n_eos = 1, .eos = {1},
        };
    } else if (strcmp(name, "glm-4.7") == 0) {
        *hp = (glm_hparams){
            .n_vocab = 151552, .n_embd = 5120, .n_layer = 92, .n_dense_layer = 3, .n_head = 96, .n_head_kv = 8,
            .head_dim = 128, .n_rot = 64, .n_ff = 12288, .n_ff_exp = 1536, .n_expert = 160, .n_expert_used = 8,
            .n_expert_shared = 1, .n_ctx_train = 202752, .norm_topk_prob = 1, .use_qk_norm = 1, .attn_bias = 1,
            .rope_theta = 1000000.0f, .rms_eps = 1e-5f, .routed_scale = 2.5f, .n_eos = 3, .eos = {151329, 151336, 151338},
        };
    } else {
        return glm_err(GLM_ERR_ARG, "unknown preset '%s' (tiny, glm-4.7)", name);
    }
    if (n_layers > 0) {
        hp->n_layer = n_layers;
        if (hp->n_dense_layer > n_layers) hp->n_dense_layer = n_layers;
    }
    return GLM_OK;
}

/* ---- the tensor list ---- */
typedef enum { T_NORM, T_BIAS, T_LINEAR, T_EMBED, T_ROUTER, T_ROUTER_BIAS } tkind;
typedef struct { char name[160]; int64_t rows, cols; tkind kind; int shard; } tspec;
typedef int (*tspec_fn)(const tspec *t, void *user);

/* Calls fn for every tensor of the model described by hp, in checkpoint order. */
static int each_tensor(const glm_hparams *hp, tspec_fn fn, void *user) {
    tspec t;
    int rc;
    int64_t D = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
#define EMIT(R, C, K, ...)                                                     \
    do {                                                                       \
        snprintf(t.name, sizeof t.name, __VA_ARGS__);                          \
        t.rows = (R); t.cols = (C); t.kind = (K);                              \
        if ((rc = fn(&t, user))) return rc;                                    \
    } while (0)
    t.shard = 0;
    EMIT(hp->n_vocab, D, T_EMBED, "model.embed_tokens.weight");
    EMIT(0, D, T_NORM, "model.norm.weight");
    EMIT(hp->n_vocab, D, T_EMBED, "lm_head.weight");
    /* layers 0..n_layer-1, then the MTP layer (index n_layer) when n_nextn > 0 */
    for (int il = 0; il < hp->n_layer + (hp->n_nextn > 0); il++) {
        t.shard = il + 1;
        if (il == hp->n_layer) {
            EMIT(0, D, T_NORM, "model.layers.%d.enorm.weight", il);
            EMIT(0, D, T_NORM, "model.layers.%d.hnorm.weight", il);
            EMIT(D, 2 * D, T_LINEAR, "model.layers.%d.eh_proj.weight", il);
            EMIT(0, D, T_NORM, "model.layers.%d.shared_head.norm.weight", il);
        }
        EMIT(0, D, T_NORM, "model.layers.%d.input_layernorm.weight", il);
        EMIT(0, D, T_NORM, "model.layers.%d.post_attention_layernorm.weight", il);
        EMIT(qd, D, T_LINEAR, "model.layers.%d.self_attn.q_proj.weight", il);
        EMIT(kvd, D, T_LINEAR, "model.layers.%d.self_attn.k_proj.weight", il);
        EMIT(kvd, D, T_LINEAR, "model.layers.%d.self_attn.v_proj.weight", il);
        EMIT(D, qd, T_LINEAR, "model.layers.%d.self_attn.o_proj.weight", il);
        if (hp->attn_bias) {
            EMIT(0, qd, T_BIAS, "model.layers.%d.self_attn.q_proj.bias", il);
            EMIT(0, kvd, T_BIAS, "model.layers.%d.self_attn.k_proj.bias", il);
            EMIT(0, kvd, T_BIAS, "model.layers.%d.self_attn.v_proj.bias", il);
        }
        if (hp->use_qk_norm) {
            EMIT(0, hp->head_dim, T_NORM, "model.layers.%d.self_attn.q_norm.weight", il);
            EMIT(0, hp->head_dim, T_NORM, "model.layers.%d.self_attn.k_norm.weight", il);
        }
        if (il < hp->n_dense_layer) {
            EMIT(hp->n_ff, D, T_LINEAR, "model.layers.%d.mlp.gate_proj.weight", il);
            EMIT(hp->n_ff, D, T_LINEAR, "model.layers.%d.mlp.up_proj.weight", il);
            EMIT(D, hp->n_ff, T_LINEAR, "model.layers.%d.mlp.down_proj.weight", il);
            continue;
        }
        EMIT(hp->n_expert, D, T_ROUTER, "model.layers.%d.mlp.gate.weight", il);
        EMIT(0, hp->n_expert, T_ROUTER_BIAS, "model.layers.%d.mlp.gate.e_score_correction_bias", il);
        for (int e = 0; e < hp->n_expert; e++) {
            EMIT(hp->n_ff_exp, D, T_LINEAR, "model.layers.%d.mlp.experts.%d.gate_proj.weight", il, e);
            EMIT(hp->n_ff_exp, D, T_LINEAR, "model.layers.%d.mlp.experts.%d.up_proj.weight", il, e);
            EMIT(D, hp->n_ff_exp, T_LINEAR, "model.layers.%d.mlp.experts.%d.down_proj.weight", il, e);
        }
        if (hp->n_expert_shared > 0) {
            int64_t sf = (int64_t)hp->n_ff_exp * hp->n_expert_shared;
            EMIT(sf, D, T_LINEAR, "model.layers.%d.mlp.shared_experts.gate_proj.weight", il);
            EMIT(sf, D, T_LINEAR, "model.layers.%d.mlp.shared_experts.up_proj.weight", il);
            EMIT(D, sf, T_LINEAR, "model.layers.%d.mlp.shared_experts.down_proj.weight", il);
        }
    }
#undef EMIT
    return GLM_OK;
}

/* ---- random data ---- */
static float gauss_table[4096];

static void gauss_init(void) {
    static int done;
    if (done) return;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 4096; i += 2) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u1 = ((s >> 11) + 1.0) / 9007199254740993.0;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u2 = (s >> 11) / 9007199254740992.0;
        double r = sqrt(-2 * log(u1));
        gauss_table[i] = (float)(r * cos(2 * M_PI * u2));
        gauss_table[i + 1] = (float)(r * sin(2 * M_PI * u2));
    }
    done = 1;
}

typedef struct { uint64_t s; } rng;
static inline uint64_t rng_next(rng *r) {
    r->s ^= r->s >> 12; r->s ^= r->s << 25; r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}
static inline float rng_gauss(rng *r) { return gauss_table[rng_next(r) & 4095]; }

static rng rng_for(const char *name, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (const char *c = name; *c; c++) { h ^= (unsigned char)*c; h *= 1099511628211ull; }
    rng r = { h | 1 };
    for (int i = 0; i < 4; i++) rng_next(&r);
    return r;
}

/* One generated tensor (and its scale). */
typedef struct {
    glm_dtype dtype, scale_dtype;
    void *data, *scale;
    size_t nbytes, scale_nbytes;
    int64_t scale_shape[2];
    int scale_dims;
    const char *scale_suffix;
} gen_tensor;

static void gen_free(gen_tensor *g) { free(g->data); free(g->scale); memset(g, 0, sizeof *g); }

/* Fills g with random data for t in the given format; returns a status. */
static int gen(const tspec *t, glm_weight_format fmt, uint64_t seed, gen_tensor *g) {
    memset(g, 0, sizeof *g);
    rng r = rng_for(t->name, seed);
    int64_t rows = t->rows ? t->rows : 1, n = rows * t->cols;
    if (t->kind == T_NORM || t->kind == T_BIAS || t->kind == T_ROUTER_BIAS) {
        int f32 = t->kind == T_ROUTER_BIAS;
        g->dtype = f32 ? GLM_DT_F32 : GLM_DT_BF16;
        g->nbytes = (size_t)n * (f32 ? 4 : 2);
        g->data = malloc(g->nbytes);
        if (!g->data) return glm_err(GLM_ERR_OOM, "out of memory generating '%s'", t->name);
        for (int64_t i = 0; i < n; i++) {
            float v = t->kind == T_NORM ? 1.0f + 0.1f * rng_gauss(&r) : 0.1f * rng_gauss(&r);
            if (f32) ((float *)g->data)[i] = v; else ((uint16_t *)g->data)[i] = glm_f32_to_bf16(v);
        }
        return GLM_OK;
    }
    float sigma = t->kind == T_EMBED && strstr(t->name, "embed") ? 1.0f : 1.0f / sqrtf((float)t->cols);
    int fp8 = t->kind == T_LINEAR && fmt != GLM_FMT_BF16;
    if (!fp8) {
        g->dtype = GLM_DT_BF16;
        g->nbytes = (size_t)n * 2;
        g->data = malloc(g->nbytes);
        if (!g->data) return glm_err(GLM_ERR_OOM, "out of memory generating '%s'", t->name);
        uint16_t *d = g->data;
        for (int64_t i = 0; i < n; i++) d[i] = glm_f32_to_bf16(sigma * rng_gauss(&r));
        return GLM_OK;
    }
    /* FP8 codes of N(0,1)*64 (the table is built once), scaled by sigma/64 */
    static uint8_t codes[4096];
    static int codes_done;
    if (!codes_done) {
        for (int i = 0; i < 4096; i++) codes[i] = glm_f32_to_fp8e4m3(gauss_table[i] * 64.0f);
        codes_done = 1;
    }
    g->dtype = GLM_DT_F8E4M3;
    g->nbytes = (size_t)n;
    g->data = malloc(g->nbytes);
    if (!g->data) return glm_err(GLM_ERR_OOM, "out of memory generating '%s'", t->name);
    uint8_t *d = g->data;
    int64_t i = 0;
    for (; i + 5 <= n; i += 5) {
        uint64_t x = rng_next(&r);
        d[i] = codes[x & 4095]; d[i + 1] = codes[(x >> 12) & 4095]; d[i + 2] = codes[(x >> 24) & 4095];
        d[i + 3] = codes[(x >> 36) & 4095]; d[i + 4] = codes[(x >> 48) & 4095];
    }
    for (; i < n; i++) d[i] = codes[rng_next(&r) & 4095];
    if (fmt == GLM_FMT_FP8_CHANNEL) {
        g->scale_dtype = GLM_DT_BF16;
        g->scale_suffix = "_scale";
        g->scale_dims = 2;
        g->scale_shape[0] = rows;
        g->scale_shape[1] = 1;
        g->scale_nbytes = (size_t)rows * 2;
        g->scale = malloc(g->scale_nbytes);
        if (!g->scale) return glm_err(GLM_ERR_OOM, "out of memory");
        for (int64_t k = 0; k < rows; k++)
            ((uint16_t *)g->scale)[k] = glm_f32_to_bf16(sigma / 64.0f * (1.0f + 0.1f * rng_gauss(&r)));
    } else {
        int64_t br = (rows + GLM_BLOCK - 1) / GLM_BLOCK, bc = (t->cols + GLM_BLOCK - 1) / GLM_BLOCK;
        g->scale_dtype = GLM_DT_F32;
        g->scale_suffix = "_scale_inv";
        g->scale_dims = 2;
        g->scale_shape[0] = br;
        g->scale_shape[1] = bc;
        g->scale_nbytes = (size_t)(br * bc) * 4;
        g->scale = malloc(g->scale_nbytes);
        if (!g->scale) return glm_err(GLM_ERR_OOM, "out of memory");
        for (int64_t k = 0; k < br * bc; k++) ((float *)g->scale)[k] = sigma / 64.0f * (1.0f + 0.1f * rng_gauss(&r));
    }
    return GLM_OK;
}

/* ---- config.json ---- */
/* Writes config.json for hp in the GLM-4.7 style; returns a status. */
static int write_config(const glm_hparams *hp, glm_weight_format fmt, const char *dir) {
    char path[4096];
    int rc = glm_path_join(path, sizeof path, dir, "config.json");
    if (rc) return rc;
    FILE *f = fopen(path, "w");
    if (!f) return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"architectures\": [\"Glm4MoeForCausalLM\"],\n  \"model_type\": \"glm4_moe\",\n");
    fprintf(f, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n", hp->n_vocab, hp->n_embd, hp->n_layer);
    fprintf(f, "  \"first_k_dense_replace\": %d,\n  \"intermediate_size\": %d,\n  \"moe_intermediate_size\": %d,\n",
            hp->n_dense_layer, hp->n_ff, hp->n_ff_exp);
    fprintf(f, "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n", hp->n_head, hp->n_head_kv, hp->head_dim);
    fprintf(f, "  \"n_routed_experts\": %d,\n  \"num_experts_per_tok\": %d,\n  \"n_shared_experts\": %d,\n",
            hp->n_expert, hp->n_expert_used, hp->n_expert_shared);
    fprintf(f, "  \"routed_scaling_factor\": %g,\n  \"norm_topk_prob\": %s,\n  \"n_group\": 1,\n  \"topk_group\": 1,\n",
            hp->routed_scale, hp->norm_topk_prob ? "true" : "false");
    fprintf(f, "  \"attention_bias\": %s,\n  \"use_qk_norm\": %s,\n", hp->attn_bias ? "true" : "false", hp->use_qk_norm ? "true" : "false");
    fprintf(f, "  \"partial_rotary_factor\": %g,\n  \"rope_theta\": %.1f,\n  \"rms_norm_eps\": %g,\n",
            (double)hp->n_rot / hp->head_dim, hp->rope_theta, hp->rms_eps);
    fprintf(f, "  \"max_position_embeddings\": %d,\n  \"num_nextn_predict_layers\": %d,\n  \"tie_word_embeddings\": false,\n",
            hp->n_ctx_train, hp->n_nextn > 0 ? 1 : 0);
    fprintf(f, "  \"hidden_act\": \"silu\",\n  \"torch_dtype\": \"bfloat16\",\n  \"eos_token_id\": [");
    for (int i = 0; i < hp->n_eos; i++) fprintf(f, "%s%d", i ? ", " : "", hp->eos[i]);
    fprintf(f, "]");
    if (fmt == GLM_FMT_FP8_CHANNEL) {
        fprintf(f, ",\n  \"quantization_config\": {\n    \"quant_method\": \"compressed-tensors\",\n    \"format\": \"float-quantized\",\n"
                   "    \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"],\n"
                   "      \"weights\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"channel\", \"symmetric\": true, \"dynamic\": false},\n"
                   "      \"input_activations\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"token\", \"symmetric\": true, \"dynamic\": true}}},\n"
                   "    \"ignore\": [\"lm_head\", \"re:.*mlp.gate$\"]\n  }");
    } else if (fmt == GLM_FMT_FP8_BLOCK) {
        fprintf(f, ",\n  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"dynamic\", "
                   "\"weight_block_size\": [128, 128]}");
    }
    fprintf(f, "\n}\n");
    if (fclose(f) != 0) return glm_err(GLM_ERR_IO, "%s: write failed", path);
    return GLM_OK;
}

/* ---- writing a checkpoint ---- */
typedef struct {
    const glm_hparams *hp;
    glm_weight_format fmt;
    uint64_t seed;
    const char *dir;
    int n_shards, shard;
    glm_st_writer *w;
    gen_tensor *held;
    size_t n_held, cap_held;
    FILE *index;
    int first_entry;
    uint64_t total, done;
    glm_progress_fn progress;
    void *progress_user;
} writer_state;

static void shard_name(char *buf, size_t cap, int shard, int n) {
    snprintf(buf, cap, "model-%05d-of-%05d.safetensors", shard + 1, n);
}

static int flush_shard(writer_state *s) {
    char name[64], path[4096];
    shard_name(name, sizeof name, s->shard, s->n_shards);
    int rc = glm_path_join(path, sizeof path, s->dir, name);
    if (!rc) rc = glm_st_writer_write(s->w, path);
    glm_st_writer_free(s->w);
    s->w = NULL;
    for (size_t i = 0; i < s->n_held; i++) gen_free(&s->held[i]);
    s->n_held = 0;
    return rc;
}

static int index_entry(writer_state *s, const char *name) {
    char shard[64], esc[512];
    shard_name(shard, sizeof shard, s->shard, s->n_shards);
    json_escape(esc, sizeof esc, name, strlen(name));
    fprintf(s->index, "%s\n    %s: \"%s\"", s->first_entry ? "" : ",", esc, shard);
    s->first_entry = 0;
    return GLM_OK;
}

static int write_one(const tspec *t, void *user) {
    writer_state *s = user;
    int rc;
    if (t->shard != s->shard || !s->w) {
        if (s->w && (rc = flush_shard(s))) return rc;
        s->shard = t->shard;
        s->w = glm_st_writer_new();
        if (!s->w) return glm_err(GLM_ERR_OOM, "out of memory");
    }
    if (s->n_held + 1 > s->cap_held) {
        size_t nc = s->cap_held ? s->cap_held * 2 : 64;
        gen_tensor *nh = realloc(s->held, nc * sizeof *nh);
        if (!nh) return glm_err(GLM_ERR_OOM, "out of memory");
        s->held = nh;
        s->cap_held = nc;
    }
    gen_tensor *g = &s->held[s->n_held++];
    if ((rc = gen(t, s->fmt, s->seed, g))) return rc;
    int64_t shape[2] = { t->rows, t->cols };
    int nd = t->rows ? 2 : 1;
    if ((rc = glm_st_writer_add(s->w, t->name, g->dtype, nd, t->rows ? shape : shape + 1, g->data, g->nbytes))) return rc;
    index_entry(s, t->name);
    if (g->scale) {
        char sname[200];
        snprintf(sname, sizeof sname, "%s%s", t->name, g->scale_suffix);
        if ((rc = glm_st_writer_add(s->w, sname, g->scale_dtype, g->scale_dims, g->scale_shape, g->scale, g->scale_nbytes))) return rc;
        index_entry(s, sname);
    }
    s->done += g->nbytes + g->scale_nbytes;
    if (s->progress && s->progress(s->done, s->total, s->progress_user))
        return glm_err(GLM_ERR_ARG, "cancelled");
    return GLM_OK;
}

static int count_bytes(const tspec *t, void *user) {
    uint64_t *n = user;
    *n += (uint64_t)(t->rows ? t->rows : 1) * (uint64_t)t->cols;
    return GLM_OK;
}

int glm_synthetic_write(const glm_hparams *hp, glm_weight_format fmt, const char *dir, uint64_t seed,
                        glm_progress_fn progress, void *user) {
    glm_numbers_init();
    gauss_init();
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return glm_err(GLM_ERR_IO, "%s: %s", dir, strerror(errno));
    int rc = write_config(hp, fmt, dir);
    if (rc) return rc;
    char path[4096];
    if ((rc = glm_path_join(path, sizeof path, dir, "model.safetensors.index.json"))) return rc;
    writer_state s = { .hp = hp, .fmt = fmt, .seed = seed, .dir = dir, .n_shards = hp->n_layer + 1 + (hp->n_nextn > 0), .shard = -1,
                       .first_entry = 1, .progress = progress, .progress_user = user };
    each_tensor(hp, count_bytes, &s.total);
    s.index = fopen(path, "w");
    if (!s.index) return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(s.index, "{\n  \"metadata\": {\"format\": \"glm.c synthetic\"},\n  \"weight_map\": {");
    rc = each_tensor(hp, write_one, &s);
    if (!rc && s.w) rc = flush_shard(&s);
    glm_st_writer_free(s.w);
    for (size_t i = 0; i < s.n_held; i++) gen_free(&s.held[i]);
    free(s.held);
    fprintf(s.index, "\n  }\n}\n");
    if (fclose(s.index) != 0 && !rc) rc = glm_err(GLM_ERR_IO, "%s: write failed", path);
    return rc;
}

/* ---- in-memory models ---- */
typedef struct {
    glm_st_set *st;
    glm_weight_format fmt;
    uint64_t seed;
    int with_data;
    void **owned;
    size_t n_owned, cap_owned;
} mem_state;

static int keep(mem_state *s, void *p) {
    if (!p) return GLM_OK;
    if (s->n_owned == s->cap_owned) {
        size_t nc = s->cap_owned ? s->cap_owned * 2 : 256;
        void **no = realloc(s->owned, nc * sizeof *no);
        if (!no) { free(p); return glm_err(GLM_ERR_OOM, "out of memory"); }
        s->owned = no;
        s->cap_owned = nc;
    }
    s->owned[s->n_owned++] = p;
    return GLM_OK;
}

static int add_one(const tspec *t, void *user) {
    mem_state *s = user;
    gen_tensor g;
    int rc;
    if (s->with_data) {
        if ((rc = gen(t, s->fmt, s->seed, &g))) { gen_free(&g); return rc; }
    } else {
        /* shapes and dtypes only: what gen would produce, without the bytes */
        memset(&g, 0, sizeof g);
        int fp8 = t->kind == T_LINEAR && s->fmt != GLM_FMT_BF16;
        g.dtype = t->kind == T_ROUTER_BIAS ? GLM_DT_F32 : fp8 ? GLM_DT_F8E4M3 : GLM_DT_BF16;
        if (fp8) {
            int64_t rows = t->rows;
            g.scale_suffix = s->fmt == GLM_FMT_FP8_CHANNEL ? "_scale" : "_scale_inv";
            g.scale_dtype = s->fmt == GLM_FMT_FP8_CHANNEL ? GLM_DT_BF16 : GLM_DT_F32;
            g.scale_dims = 2;
            g.scale_shape[0] = s->fmt == GLM_FMT_FP8_CHANNEL ? rows : (rows + GLM_BLOCK - 1) / GLM_BLOCK;
            g.scale_shape[1] = s->fmt == GLM_FMT_FP8_CHANNEL ? 1 : (t->cols + GLM_BLOCK - 1) / GLM_BLOCK;
            g.scale = NULL;
        }
    }
    int64_t shape[2] = { t->rows, t->cols };
    if ((rc = glm_st_add_memory(s->st, t->name, g.dtype, t->rows ? 2 : 1, t->rows ? shape : shape + 1, g.data))) goto fail;
    if (g.scale_suffix) {
        char sname[200];
        snprintf(sname, sizeof sname, "%s%s", t->name, g.scale_suffix);
        if ((rc = glm_st_add_memory(s->st, sname, g.scale_dtype, g.scale_dims, g.scale_shape, g.scale))) goto fail;
    }
    if ((rc = keep(s, g.data))) { g.data = NULL; goto fail; }
    g.data = NULL;
    if ((rc = keep(s, g.scale))) { g.scale = NULL; goto fail; }
    return GLM_OK;
fail:
    gen_free(&g);
    return rc;
}

/* Frees the owned buffers list stored in model->synthetic. */
typedef struct { void **p; size_t n; } owned_list;

int glm_model_synthetic(const glm_hparams *hp, glm_weight_format fmt, int with_host_data, uint64_t seed, glm_model **out) {
    glm_numbers_init();
    gauss_init();
    *out = NULL;
    glm_model *m = calloc(1, sizeof *m);
    if (!m) return glm_err(GLM_ERR_OOM, "out of memory");
    m->dir = strdup("(synthetic)");
    m->hp = *hp;
    mem_state s = { .st = glm_st_new_memory(), .fmt = fmt, .seed = seed, .with_data = with_host_data };
    m->st = s.st;
    int rc = s.st ? each_tensor(hp, add_one, &s) : glm_err(GLM_ERR_OOM, "out of memory");
    if (!rc) rc = glm_st_finish_memory(s.st);
    /* one block: the list header followed by nothing; the pointers are freed by glm_model_synthetic_free */
    owned_list *ol = malloc(sizeof *ol);
    if (!ol) rc = rc ? rc : glm_err(GLM_ERR_OOM, "out of memory");
    else { ol->p = s.owned; ol->n = s.n_owned; }
    m->synthetic = ol;
    if (!rc) rc = glm_model_bind_synthetic(m);
    if (rc) { glm_model_free(m); return rc; }
    *out = m;
    return GLM_OK;
}

void glm_synthetic_release(void *p) {
    owned_list *ol = p;
    if (!ol) return;
    for (size_t i = 0; i < ol->n; i++) free(ol->p[i]);
    free(ol->p);
    free(ol);
}
