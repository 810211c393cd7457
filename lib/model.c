/* model.c - turns a Hugging Face Glm4MoeForCausalLM directory (config.json + one or
 * sharded safetensors, BF16 or either FP8 format) into a bound glm_model, checking
 * every tensor's dtype and shape against config.json. Also builds synthetic models
 * (random weights in the real layout) for glm-convert and glm-bench. */
#include "internal.h"
#include "json.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

glm_model_params glm_model_default_params(void) {
    glm_model_params p = {0};
    return p;
}

/* ---- config.json ---- */

/* The largest value an integer field of config.json may take. */
#define CFG_MAX_INT (1 << 30)

/* Reads a required integer field in [0, CFG_MAX_INT]; returns a status naming the file and field. */
static int need_int(const json_value *root, const char *key, const char *path, int *out) {
    const json_value *j = json_get(root, key);
    char why[160];
    int64_t v;
    if (!j) return glm_err(GLM_ERR_FORMAT, "%s: missing field \"%s\"", path, key);
    if (!json_to_int(j, 0, CFG_MAX_INT, &v, why, sizeof why))
        return glm_err(GLM_ERR_FORMAT, "%s: field \"%s\" must be a non-negative integer: %s", path, key, why);
    *out = (int)v;
    return GLM_OK;
}

/* Reads an optional integer field (default when absent); errors when present but wrong. */
static int opt_int(const json_value *root, const char *key, const char *path, int def, int *out) {
    if (!json_get(root, key) || json_get(root, key)->type == JSON_NULL) { *out = def; return GLM_OK; }
    return need_int(root, key, path, out);
}

/* Reads an optional number field (default when absent) within what a float holds; errors
 * when present but not a number or outside [-FLT_MAX, FLT_MAX]. dotted names the field. */
static int opt_num(const json_value *obj, const char *key, const char *dotted, const char *path, double def, double *out) {
    const json_value *j = json_get(obj, key);
    char why[160];
    if (!j || j->type == JSON_NULL) { *out = def; return GLM_OK; }
    if (!json_to_num(j, -FLT_MAX, FLT_MAX, out, why, sizeof why))
        return glm_err(GLM_ERR_FORMAT, "%s: field \"%s\" %s", path, dotted, why);
    return GLM_OK;
}

static int opt_bool(const json_value *obj, const char *key, const char *path, int def, int *out) {
    const json_value *j = json_get(obj, key);
    if (!j || j->type == JSON_NULL) { *out = def; return GLM_OK; }
    if (j->type != JSON_BOOL) return glm_err(GLM_ERR_FORMAT, "%s: field \"%s\" must be true or false", path, key);
    *out = j->u.boolean;
    return GLM_OK;
}

/* Reads eos_token_id (absent, null, an id or an array of ids) into hp->eos; every id must
 * be a token of the vocabulary. Returns a status naming the file and the entry. */
static int read_eos(const json_value *r, const char *path, glm_hparams *hp) {
    const json_value *eos = json_get(r, "eos_token_id");
    char why[160];
    int64_t id;
    hp->n_eos = 0;
    if (!eos || eos->type == JSON_NULL) return GLM_OK;
    if (eos->type == JSON_NUMBER) {
        if (!json_to_int(eos, 0, hp->n_vocab - 1, &id, why, sizeof why))
            return glm_err(GLM_ERR_FORMAT, "%s: field \"eos_token_id\" must be a token id (vocab_size %d): %s",
                           path, hp->n_vocab, why);
        hp->eos[hp->n_eos++] = (int32_t)id;
        return GLM_OK;
    }
    if (eos->type != JSON_ARRAY)
        return glm_err(GLM_ERR_FORMAT, "%s: field \"eos_token_id\" is %s, not a token id or an array of them",
                       path, json_type_name(eos));
    if (eos->u.arr.n > GLM_MAX_EOS)
        return glm_err(GLM_ERR_UNSUPPORTED, "%s: field \"eos_token_id\" lists %zu ids (at most %d supported)",
                       path, eos->u.arr.n, GLM_MAX_EOS);
    for (size_t i = 0; i < eos->u.arr.n; i++) {
        if (!json_to_int(&eos->u.arr.items[i], 0, hp->n_vocab - 1, &id, why, sizeof why))
            return glm_err(GLM_ERR_FORMAT, "%s: field \"eos_token_id\"[%zu] must be a token id (vocab_size %d): %s",
                           path, i, hp->n_vocab, why);
        hp->eos[hp->n_eos++] = (int32_t)id;
    }
    return GLM_OK;
}

/* Checks the relations between hparams the engine relies on (head grouping, rotary
 * dims, expert counts, positive sizes); returns a status naming the file and field. */
static int hparams_check(const glm_hparams *hp, double prf, const char *path) {
#define BAD(cond, ...) do { if (cond) return glm_err(GLM_ERR_FORMAT, __VA_ARGS__); } while (0)
    BAD(hp->n_vocab < 1, "%s: vocab_size must be at least 1", path);
    BAD(hp->n_embd < 1, "%s: hidden_size must be at least 1", path);
    BAD(hp->n_layer < 1, "%s: num_hidden_layers must be at least 1", path);
    BAD(hp->n_head < 1, "%s: num_attention_heads must be at least 1", path);
    BAD(hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv,
        "%s: num_key_value_heads %d must divide num_attention_heads %d", path, hp->n_head_kv, hp->n_head);
    BAD(hp->head_dim < 2 || hp->head_dim % 2, "%s: head_dim %d must be even and at least 2", path, hp->head_dim);
    BAD((int64_t)hp->n_head * hp->head_dim > CFG_MAX_INT, "%s: num_attention_heads x head_dim = %lld is too large",
        path, (long long)hp->n_head * hp->head_dim);
    BAD(!(prf > 0 && prf <= 1), "%s: partial_rotary_factor %g must be in (0, 1]", path, prf);
    BAD(hp->n_rot < 2 || hp->n_rot % 2 || hp->n_rot > hp->head_dim,
        "%s: partial_rotary_factor %g gives %d rotary dims of head_dim %d (must be even, 2 to head_dim)",
        path, prf, hp->n_rot, hp->head_dim);
    BAD(hp->n_dense_layer > hp->n_layer, "%s: first_k_dense_replace %d is more than num_hidden_layers %d",
        path, hp->n_dense_layer, hp->n_layer);
    BAD(hp->n_dense_layer > 0 && hp->n_ff < 1, "%s: intermediate_size must be at least 1 (dense layers)", path);
    if (hp->n_dense_layer < hp->n_layer) {   /* MoE layers */
        BAD(hp->n_expert < 1, "%s: n_routed_experts must be at least 1", path);
        BAD(hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert,
            "%s: num_experts_per_tok %d must be 1 to n_routed_experts %d", path, hp->n_expert_used, hp->n_expert);
        BAD(hp->n_ff_exp < 1, "%s: moe_intermediate_size must be at least 1", path);
        BAD((int64_t)hp->n_ff_exp * hp->n_expert_shared > CFG_MAX_INT,
            "%s: moe_intermediate_size x n_shared_experts = %lld is too large", path,
            (long long)hp->n_ff_exp * hp->n_expert_shared);
    }
    BAD(hp->n_ctx_train < 1, "%s: max_position_embeddings must be at least 1", path);
    BAD(!(hp->rms_eps > 0), "%s: rms_norm_eps %g must be positive", path, hp->rms_eps);
    BAD(!(hp->rope_theta > 0), "%s: rope_theta %g must be positive", path, hp->rope_theta);
    BAD(!(hp->routed_scale > 0), "%s: routed_scaling_factor %g must be positive", path, hp->routed_scale);
#undef BAD
    return GLM_OK;
}

int glm_hparams_parse(const char *text, size_t len, const char *path, glm_hparams *hp) {
    char jerr[200];
    memset(hp, 0, sizeof *hp);
    json_doc *doc = json_parse(text, len, jerr, sizeof jerr);
    if (!doc) return glm_err(GLM_ERR_FORMAT, "%s: %s", path, jerr);
    const json_value *r = json_root(doc);
    int rc = GLM_OK;
    if (r->type != JSON_OBJECT) { rc = glm_err(GLM_ERR_FORMAT, "%s: not a JSON object", path); goto done; }
    const char *mt = json_get_str(r, "model_type");
    const json_value *arch = json_get(r, "architectures");
    int arch_ok = mt && strcmp(mt, "glm4_moe") == 0;
    if (arch && arch->type == JSON_ARRAY)
        for (size_t i = 0; i < arch->u.arr.n; i++)
            if (arch->u.arr.items[i].type == JSON_STRING && strcmp(arch->u.arr.items[i].u.str.s, "Glm4MoeForCausalLM") == 0)
                arch_ok = 1;
    if (!arch_ok) {
        rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: model_type \"%s\" is not glm4_moe (architectures must include Glm4MoeForCausalLM)",
                     path, mt ? mt : "(missing)");
        goto done;
    }
    if ((rc = need_int(r, "vocab_size", path, &hp->n_vocab)) ||
        (rc = need_int(r, "hidden_size", path, &hp->n_embd)) ||
        (rc = need_int(r, "num_hidden_layers", path, &hp->n_layer)) ||
        (rc = need_int(r, "num_attention_heads", path, &hp->n_head)) ||
        (rc = need_int(r, "intermediate_size", path, &hp->n_ff)) ||
        (rc = need_int(r, "moe_intermediate_size", path, &hp->n_ff_exp)) ||
        (rc = need_int(r, "n_routed_experts", path, &hp->n_expert)) ||
        (rc = need_int(r, "num_experts_per_tok", path, &hp->n_expert_used)))
        goto done;
    if ((rc = opt_int(r, "num_key_value_heads", path, hp->n_head, &hp->n_head_kv)) ||
        (rc = opt_int(r, "head_dim", path, hp->n_head ? hp->n_embd / hp->n_head : 0, &hp->head_dim)) ||
        (rc = opt_int(r, "n_shared_experts", path, 1, &hp->n_expert_shared)) ||
        (rc = opt_int(r, "first_k_dense_replace", path, 1, &hp->n_dense_layer)) ||
        (rc = opt_int(r, "num_nextn_predict_layers", path, 0, &hp->n_nextn)) ||
        (rc = opt_int(r, "max_position_embeddings", path, 4096, &hp->n_ctx_train)))
        goto done;
    int n_group, topk_group;
    if ((rc = opt_int(r, "n_group", path, 1, &n_group)) || (rc = opt_int(r, "topk_group", path, 1, &topk_group))) goto done;
    if (n_group != 1 || topk_group != 1) {
        rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: n_group %d / topk_group %d: grouped routing is not implemented (GLM-4.x uses 1/1)",
                     path, n_group, topk_group);
        goto done;
    }
    double eps, rs, theta, prf;
    if ((rc = opt_num(r, "rms_norm_eps", "rms_norm_eps", path, 1e-5, &eps)) ||
        (rc = opt_num(r, "routed_scaling_factor", "routed_scaling_factor", path, 1.0, &rs)) ||
        (rc = opt_bool(r, "norm_topk_prob", path, 1, &hp->norm_topk_prob)) ||
        (rc = opt_bool(r, "use_qk_norm", path, 0, &hp->use_qk_norm)) ||
        (rc = opt_bool(r, "attention_bias", path, 0, &hp->attn_bias)))
        goto done;
    /* rope: top level (GLM-4.5 style) or inside rope_parameters (newer configs) */
    const json_value *rp = json_get(r, "rope_parameters");
    if (rp && rp->type == JSON_OBJECT) {
        const char *rt = json_get_str(rp, "rope_type");
        if (rt && strcmp(rt, "default") != 0) {
            rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: rope_parameters.rope_type \"%s\" is not implemented", path, rt);
            goto done;
        }
    } else {
        rp = NULL;
    }
    int theta_in_rp = rp && json_get(rp, "rope_theta"), prf_in_rp = rp && json_get(rp, "partial_rotary_factor");
    if ((rc = opt_num(theta_in_rp ? rp : r, "rope_theta", theta_in_rp ? "rope_parameters.rope_theta" : "rope_theta",
                      path, 10000.0, &theta)) ||
        (rc = opt_num(prf_in_rp ? rp : r, "partial_rotary_factor",
                      prf_in_rp ? "rope_parameters.partial_rotary_factor" : "partial_rotary_factor", path, 0.5, &prf)))
        goto done;
    hp->rms_eps = (float)eps;          /* all within [-FLT_MAX, FLT_MAX]: checked above */
    hp->routed_scale = (float)rs;
    hp->rope_theta = (float)theta;
    /* rotary dims: int(head_dim * factor) as transformers computes it, for factors in (0, 1] */
    hp->n_rot = prf > 0 && prf <= 1 ? (int)(hp->head_dim * prf) : 0;
    if ((rc = hparams_check(hp, prf, path))) goto done;
    rc = read_eos(r, path, hp);
done:
    json_free(doc);
    return rc;
}

/* ---- binding ---- */

typedef struct {
    glm_model *m;
    const char *where;   /* directory, for messages */
} binder;

static const char *st_where(const glm_model *m, const glm_st_tensor *t) {
    return t->file >= 0 ? glm_st_file_path(m->st, t->file) : m->dir;
}

/* Binds tensor `name` with the expected shape (rows x cols; rows = 0 for 1-D) into w.
 * FP8 tensors get their weight_scale (per channel) or weight_scale_inv (block) bound too. */
static int bind(binder *b, glm_weight *w, const char *name, int64_t rows, int64_t cols, int optional) {
    glm_model *m = b->m;
    const glm_st_tensor *t = glm_st_find(m->st, name);
    memset(w, 0, sizeof *w);
    if (!t) {
        if (optional) return GLM_OK;
        return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' is missing", b->where, name);
    }
    int ok_shape = rows == 0 ? (t->n_dims == 1 && t->shape[0] == cols)
                             : (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols);
    if (!ok_shape) {
        char got[96] = "";
        for (int d = 0; d < t->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        if (rows == 0)
            return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' has shape [%s], config.json implies [%lld]",
                           st_where(m, t), name, got, (long long)cols);
        return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' has shape [%s], config.json implies [%lld, %lld]",
                       st_where(m, t), name, got, (long long)rows, (long long)cols);
    }
    if (t->dtype != GLM_DT_F32 && t->dtype != GLM_DT_BF16 && t->dtype != GLM_DT_F16 && t->dtype != GLM_DT_F8E4M3)
        return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' has dtype %s; expected F32, BF16, F16 or F8_E4M3",
                       st_where(m, t), name, glm_dtype_name(t->dtype));
    w->name = t->name;
    w->dtype = t->dtype;
    w->rows = rows == 0 ? 1 : rows;
    w->cols = cols;
    w->data = t->data;
    w->scale_kind = GLM_SCALE_NONE;
    if (t->dtype == GLM_DT_F8E4M3) {
        char sname[512];
        if (rows == 0) return glm_err(GLM_ERR_FORMAT, "%s: 1-D tensor '%s' is F8_E4M3 (only matrices may be FP8)", st_where(m, t), name);
        snprintf(sname, sizeof sname, "%s_scale", name);
        const glm_st_tensor *s = glm_st_find(m->st, sname);
        if (s) {
            int ok = (s->n_dims == 2 && s->shape[0] == rows && s->shape[1] == 1) || (s->n_dims == 1 && s->shape[0] == rows);
            if (!ok) return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' should have shape [%lld, 1] (one scale per output channel)",
                                    st_where(m, s), sname, (long long)rows);
            w->scale_kind = GLM_SCALE_CHANNEL;
        } else {
            snprintf(sname, sizeof sname, "%s_scale_inv", name);
            s = glm_st_find(m->st, sname);
            if (!s) return glm_err(GLM_ERR_FORMAT, "%s: FP8 tensor '%s' has neither '%s_scale' nor '%s_scale_inv'",
                                   st_where(m, t), name, name, name);
            int64_t br = (rows + GLM_BLOCK - 1) / GLM_BLOCK, bc = (cols + GLM_BLOCK - 1) / GLM_BLOCK;
            if (s->n_dims != 2 || s->shape[0] != br || s->shape[1] != bc)
                return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' should have shape [%lld, %lld] (128x128 blocks)",
                               st_where(m, s), sname, (long long)br, (long long)bc);
            w->scale_kind = GLM_SCALE_BLOCK;
        }
        if (s->dtype != GLM_DT_F32 && s->dtype != GLM_DT_BF16 && s->dtype != GLM_DT_F16)
            return glm_err(GLM_ERR_FORMAT, "%s: scale tensor '%s' has dtype %s; expected F32, BF16 or F16",
                           st_where(m, s), sname, glm_dtype_name(s->dtype));
        w->scale = s->data;
        w->scale_dtype = s->dtype;
    }
    m->n_params += (uint64_t)w->rows * (uint64_t)w->cols;
    m->n_bytes += glm_weight_bytes(w);
    return GLM_OK;
}

#define BIND(w, rows, cols, opt, ...)                                           \
    do {                                                                        \
        snprintf(name, sizeof name, __VA_ARGS__);                               \
        if ((rc = bind(&b, (w), name, (rows), (cols), (opt)))) return rc;       \
    } while (0)

/* Binds the tensors of decoder layer il (model.layers.il.*) into L: a dense MLP below
 * first_k_dense_replace, MoE from there (the MTP layer, il = n_layer, is MoE). */
static int bind_layer(binder *bp, int il, glm_layer *L) {
    binder b = *bp;
    const glm_hparams *hp = &b.m->hp;
    char name[256];
    int rc;
    int64_t D = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    const char *p = "model.layers";
    BIND(&L->attn_norm, 0, D, 0, "%s.%d.input_layernorm.weight", p, il);
    BIND(&L->ffn_norm, 0, D, 0, "%s.%d.post_attention_layernorm.weight", p, il);
    BIND(&L->wq, qd, D, 0, "%s.%d.self_attn.q_proj.weight", p, il);
    BIND(&L->wk, kvd, D, 0, "%s.%d.self_attn.k_proj.weight", p, il);
    BIND(&L->wv, kvd, D, 0, "%s.%d.self_attn.v_proj.weight", p, il);
    BIND(&L->wo, D, qd, 0, "%s.%d.self_attn.o_proj.weight", p, il);
    BIND(&L->bq, 0, qd, !hp->attn_bias, "%s.%d.self_attn.q_proj.bias", p, il);
    BIND(&L->bk, 0, kvd, !hp->attn_bias, "%s.%d.self_attn.k_proj.bias", p, il);
    BIND(&L->bv, 0, kvd, !hp->attn_bias, "%s.%d.self_attn.v_proj.bias", p, il);
    if (hp->use_qk_norm) {
        BIND(&L->q_norm, 0, hp->head_dim, 0, "%s.%d.self_attn.q_norm.weight", p, il);
        BIND(&L->k_norm, 0, hp->head_dim, 0, "%s.%d.self_attn.k_norm.weight", p, il);
    }
    if (il < hp->n_dense_layer) {
        BIND(&L->ffn_gate, hp->n_ff, D, 0, "%s.%d.mlp.gate_proj.weight", p, il);
        BIND(&L->ffn_up, hp->n_ff, D, 0, "%s.%d.mlp.up_proj.weight", p, il);
        BIND(&L->ffn_down, D, hp->n_ff, 0, "%s.%d.mlp.down_proj.weight", p, il);
        return GLM_OK;
    }
    BIND(&L->router, hp->n_expert, D, 0, "%s.%d.mlp.gate.weight", p, il);
    BIND(&L->router_bias, 0, hp->n_expert, 0, "%s.%d.mlp.gate.e_score_correction_bias", p, il);
    L->exp_gate = calloc((size_t)hp->n_expert * 3, sizeof(glm_weight));
    if (!L->exp_gate) return glm_err(GLM_ERR_OOM, "out of memory");
    L->exp_up = L->exp_gate + hp->n_expert;
    L->exp_down = L->exp_up + hp->n_expert;
    for (int e = 0; e < hp->n_expert; e++) {
        BIND(&L->exp_gate[e], hp->n_ff_exp, D, 0, "%s.%d.mlp.experts.%d.gate_proj.weight", p, il, e);
        BIND(&L->exp_up[e], hp->n_ff_exp, D, 0, "%s.%d.mlp.experts.%d.up_proj.weight", p, il, e);
        BIND(&L->exp_down[e], D, hp->n_ff_exp, 0, "%s.%d.mlp.experts.%d.down_proj.weight", p, il, e);
    }
    if (hp->n_expert_shared > 0) {
        int64_t sf = (int64_t)hp->n_ff_exp * hp->n_expert_shared;
        BIND(&L->sh_gate, sf, D, 0, "%s.%d.mlp.shared_experts.gate_proj.weight", p, il);
        BIND(&L->sh_up, sf, D, 0, "%s.%d.mlp.shared_experts.up_proj.weight", p, il);
        BIND(&L->sh_down, D, sf, 0, "%s.%d.mlp.shared_experts.down_proj.weight", p, il);
    }
    return GLM_OK;
}

/* Tensor-name suffixes of the MTP layer beyond a decoder block's. */
static const char *const mtp_extra[] = { "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight" };

/* Non-zero when every tensor the MTP layer il needs is in m->st (AUTO binds it then). */
static int mtp_complete(const glm_model *m, int il) {
    const glm_hparams *hp = &m->hp;
    char name[256];
    static const char *const block[] = { "input_layernorm.weight", "post_attention_layernorm.weight",
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate.weight", "mlp.gate.e_score_correction_bias" };
    for (size_t i = 0; i < sizeof mtp_extra / sizeof *mtp_extra; i++) {
        snprintf(name, sizeof name, "model.layers.%d.%s", il, mtp_extra[i]);
        if (!glm_st_find(m->st, name)) return 0;
    }
    for (size_t i = 0; i < sizeof block / sizeof *block; i++) {
        snprintf(name, sizeof name, "model.layers.%d.%s", il, block[i]);
        if (!glm_st_find(m->st, name)) return 0;
    }
    static const char *const ew[] = { "gate_proj", "up_proj", "down_proj" };
    for (int e = 0; e < hp->n_expert; e++)
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", il, e, ew[k]);
            if (!glm_st_find(m->st, name)) return 0;
        }
    return 1;
}

/* Binds the MTP layer (index n_layer) per mode: m->layers must have n_layer + 1 entries.
 * Its parameters are not counted in n_params / n_bytes (the main model's figures). */
static int bind_mtp(binder *bp, int mode) {
    binder b = *bp;
    glm_model *m = b.m;
    const glm_hparams *hp = &m->hp;
    const int il = hp->n_layer;
    const int64_t D = hp->n_embd;
    char name[256];
    int rc;
    if (mode == GLM_MTP_OFF) return GLM_OK;
    if (hp->n_nextn < 1) {
        if (mode == GLM_MTP_AUTO) return GLM_OK;
        return glm_err(GLM_ERR_FORMAT, "%s: no MTP layer (config.json: num_nextn_predict_layers %d)", b.where, hp->n_nextn);
    }
    if (hp->n_dense_layer == hp->n_layer &&   /* every main layer dense: the MoE fields were not checked */
        (hp->n_expert < 1 || hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert || hp->n_ff_exp < 1))
        return mode == GLM_MTP_AUTO ? GLM_OK
                                    : glm_err(GLM_ERR_FORMAT, "%s: the MTP layer is MoE: n_routed_experts %d, num_experts_per_tok %d "
                                              "and moe_intermediate_size %d must be positive (and top-k at most the experts)",
                                              b.where, hp->n_expert, hp->n_expert_used, hp->n_ff_exp);
    if (mode == GLM_MTP_AUTO && !mtp_complete(m, il)) return GLM_OK;
    const uint64_t n_params = m->n_params, n_bytes = m->n_bytes;
    if ((rc = bind_layer(&b, il, &m->layers[il]))) return rc;
    BIND(&m->mtp_enorm, 0, D, 0, "model.layers.%d.enorm.weight", il);
    BIND(&m->mtp_hnorm, 0, D, 0, "model.layers.%d.hnorm.weight", il);
    BIND(&m->mtp_eh_proj, D, 2 * D, 0, "model.layers.%d.eh_proj.weight", il);
    BIND(&m->mtp_head_norm, 0, D, 0, "model.layers.%d.shared_head.norm.weight", il);
    BIND(&m->mtp_embd, hp->n_vocab, D, 1, "model.layers.%d.embed_tokens.weight", il);
    BIND(&m->mtp_head, hp->n_vocab, D, 1, "model.layers.%d.shared_head.head.weight", il);
    m->n_params = n_params;
    m->n_bytes = n_bytes;
    m->has_mtp = 1;
    return GLM_OK;
}

/* Binds every weight of the model from m->st according to m->hp; the MTP layer per
 * mtp_mode (glm_mtp_mode). */
static int model_bind(glm_model *m, const char *where, int mtp_mode) {
    const glm_hparams *hp = &m->hp;
    binder b = { m, where };
    char name[256];
    int rc;
    const int64_t D = hp->n_embd;
    BIND(&m->tok_embd, hp->n_vocab, D, 0, "model.embed_tokens.weight");
    BIND(&m->out_norm, 0, D, 0, "model.norm.weight");
    BIND(&m->lm_head, hp->n_vocab, D, 0, "lm_head.weight");
    /* the last layer and expert must exist before arrays of n_layer and n_expert are made */
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", hp->n_layer - 1);
    if (!glm_st_find(m->st, name))
        return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' is missing (config.json: num_hidden_layers %d)", where, name, hp->n_layer);
    if (hp->n_dense_layer < hp->n_layer) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.gate_proj.weight", hp->n_dense_layer, hp->n_expert - 1);
        if (!glm_st_find(m->st, name))
            return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' is missing (config.json: n_routed_experts %d)", where, name, hp->n_expert);
    }
    m->layers = calloc((size_t)hp->n_layer + 1, sizeof *m->layers);   /* + the MTP layer's slot */
    if (!m->layers) return glm_err(GLM_ERR_OOM, "out of memory");
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = bind_layer(&b, il, &m->layers[il]))) return rc;
    if ((rc = bind_mtp(&b, mtp_mode))) return rc;
    /* describe: the weight format of the first layer's q_proj */
    const glm_weight *q = &m->layers[0].wq;
    const char *fmt = q->dtype == GLM_DT_F8E4M3 ? (q->scale_kind == GLM_SCALE_CHANNEL ? "fp8-channel" : "fp8-block128")
                                                : glm_dtype_name(q->dtype);
    snprintf(m->desc, sizeof m->desc, "glm4_moe %d layers (%d dense), hidden %d, %d/%d heads, %d experts top-%d, %s, %.2f B params",
             hp->n_layer, hp->n_dense_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_expert, hp->n_expert_used, fmt,
             (double)m->n_params / 1e9);
    if (m->has_mtp) snprintf(m->desc + strlen(m->desc), sizeof m->desc - strlen(m->desc), ", MTP layer");
    return GLM_OK;
}

int glm_model_load(const char *dir, const glm_model_params *params, glm_model **out) {
    (void)params;
    *out = NULL;
    glm_numbers_init();
    struct stat st;
    if (!dir || stat(dir, &st) != 0) return glm_err(GLM_ERR_IO, "%s: %s", dir ? dir : "(null)", dir ? strerror(errno) : "no model directory");
    if (!S_ISDIR(st.st_mode)) return glm_err(GLM_ERR_IO, "%s: not a directory (give the model directory)", dir);
    glm_model *m = calloc(1, sizeof *m);
    if (!m) return glm_err(GLM_ERR_OOM, "out of memory");
    m->dir = strdup(dir);
    char path[4096], *text = NULL;
    size_t len;
    int rc = glm_path_join(path, sizeof path, dir, "config.json");
    if (!rc) rc = glm_read_file(path, &text, &len);
    if (rc) goto fail;
    rc = glm_hparams_parse(text, len, path, &m->hp);
    free(text);
    if (rc) goto fail;
    if ((rc = glm_st_open_dir(dir, &m->st))) goto fail;
    if ((rc = model_bind(m, dir, params ? params->mtp : GLM_MTP_AUTO))) goto fail;
    if (params && params->progress && (rc = glm_st_prefetch(m->st, params->progress, params->progress_user))) goto fail;
    *out = m;
    return GLM_OK;
fail:
    glm_model_free(m);
    return rc;
}

int glm_model_bind_synthetic(glm_model *m) { return model_bind(m, "(synthetic)", GLM_MTP_AUTO); }

void glm_model_free(glm_model *m) {
    if (!m) return;
    if (m->layers)
        for (int il = 0; il < m->hp.n_layer + 1; il++) free(m->layers[il].exp_gate);
    free(m->layers);
    glm_st_close(m->st);
    glm_synthetic_release(m->synthetic);
    free(m->dir);
    free(m);
}

const glm_hparams *glm_model_hparams(const glm_model *m) { return &m->hp; }
uint64_t glm_model_n_params(const glm_model *m) { return m->n_params; }
int glm_model_has_mtp(const glm_model *m) { return m->has_mtp; }
uint64_t glm_model_n_bytes(const glm_model *m) { return m->n_bytes; }
const char *glm_model_desc(const glm_model *m) { return m->desc; }

/* ---- weights ---- */

uint64_t glm_weight_bytes(const glm_weight *w) {
    uint64_t n = (uint64_t)w->rows * (uint64_t)w->cols * glm_dtype_size(w->dtype);
    if (w->scale_kind == GLM_SCALE_CHANNEL) n += (uint64_t)w->rows * glm_dtype_size(w->scale_dtype);
    if (w->scale_kind == GLM_SCALE_BLOCK)
        n += (uint64_t)((w->rows + GLM_BLOCK - 1) / GLM_BLOCK) * ((w->cols + GLM_BLOCK - 1) / GLM_BLOCK) *
             glm_dtype_size(w->scale_dtype);
    return n;
}

static float scalar_at(const void *p, glm_dtype t, int64_t i) {
    switch (t) {
    case GLM_DT_F32: return ((const float *)p)[i];
    case GLM_DT_BF16: return glm_bf16_to_f32(((const uint16_t *)p)[i]);
    case GLM_DT_F16: return glm_f16_to_f32(((const uint16_t *)p)[i]);
    case GLM_DT_F8E4M3: return glm_fp8_lut[((const uint8_t *)p)[i]];
    default: return 0;
    }
}

/* Row stride of the stored tensor in elements (a view's ld, else its cols). */
static int64_t stored_cols(const glm_weight *w) { return w->ld ? w->ld : w->cols; }

float glm_weight_get1(const glm_weight *w, int64_t i) {
    return scalar_at(w->data, w->dtype, w->row0 * stored_cols(w) + w->col0 + i);
}

glm_weight glm_weight_rows(const glm_weight *w, int64_t r0, int64_t r1) {
    glm_weight v = *w;
    v.ld = stored_cols(w);
    v.row0 = w->row0 + r0;
    v.rows = r1 - r0;
    v.dev = v.dev_scale = NULL;
    return v;
}

glm_weight glm_weight_cols(const glm_weight *w, int64_t c0, int64_t c1) {
    glm_weight v = *w;
    v.ld = stored_cols(w);
    v.col0 = w->col0 + c0;
    v.cols = c1 - c0;
    v.dev = v.dev_scale = NULL;
    return v;
}

void glm_weight_row(const glm_weight *w, int64_t r, float *out) {
    const int64_t K = w->cols, ld = stored_cols(w), sr = w->row0 + r, c0 = w->col0; /* stored row, first column */
    const int64_t off = sr * ld + c0;
    switch (w->dtype) {
    case GLM_DT_F32: memcpy(out, (const float *)w->data + off, (size_t)K * 4); return;
    case GLM_DT_BF16: {
        const uint16_t *s = (const uint16_t *)w->data + off;
        for (int64_t k = 0; k < K; k++) out[k] = glm_bf16_to_f32(s[k]);
        return;
    }
    case GLM_DT_F16: {
        const uint16_t *s = (const uint16_t *)w->data + off;
        for (int64_t k = 0; k < K; k++) out[k] = glm_f16_to_f32(s[k]);
        return;
    }
    case GLM_DT_F8E4M3: {
        const uint8_t *s = (const uint8_t *)w->data + off;
        if (w->scale_kind == GLM_SCALE_CHANNEL) {
            float sc = scalar_at(w->scale, w->scale_dtype, sr);
            for (int64_t k = 0; k < K; k++) out[k] = glm_fp8_lut[s[k]] * sc;
        } else {
            /* 128 x 128 blocks of the stored tensor: block column (c0 + k) / 128 */
            int64_t nb = (ld + GLM_BLOCK - 1) / GLM_BLOCK, br = sr / GLM_BLOCK;
            for (int64_t k0 = 0; k0 < K;) {
                int64_t b = (c0 + k0) / GLM_BLOCK, k1 = (b + 1) * GLM_BLOCK - c0;
                if (k1 > K) k1 = K;
                float sc = scalar_at(w->scale, w->scale_dtype, br * nb + b);
                for (int64_t k = k0; k < k1; k++) out[k] = glm_fp8_lut[s[k]] * sc;
                k0 = k1;
            }
        }
        return;
    }
    default: memset(out, 0, (size_t)K * 4);
    }
}
