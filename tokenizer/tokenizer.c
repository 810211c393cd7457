/* tokenizer.c - byte-level BPE over Hugging Face tokenizer.json, reproducing HF
 * tokenizers' pipeline step for step: added tokens split out first (non-normalized
 * ones on the raw text, normalized ones after the normalizer), then the pre-tokenizer
 * chain (Split regexes, ByteLevel), then BPE merges by rank, then the post-processor
 * template. Vocabulary keys are stored as raw bytes, so the byte-level alphabet never
 * has to be materialised while encoding; a word cache makes repeated words cost one
 * hash lookup. */
#include "tokenizer.h"
#include "internal.h"
#include "regex.h"
#include "unicode.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define CACHE_MAX_WORD 128            /* longer pre-tokens are not cached */
#define CACHE_MAX_ENTRIES (1u << 19)   /* the cache is emptied when it grows past these */
#define CACHE_MAX_BYTES (32u << 20)
#define GLM_TOK_MAX_ID 100000000     /* the largest vocabulary id tokenizer.json may give */

/* ---- byte-string hash map (keys copied into a pool) ---- */
typedef struct {
    uint64_t h;
    uint32_t off, len;
    int32_t val;
} bm_ent;

typedef struct {
    bm_ent *t;
    size_t mask, n;
    char *pool;
    size_t pool_n, pool_cap;
} bytemap;

/* Returns a 64-bit hash of p[0..n). */
static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h | 1;  /* 0 marks an empty slot */
}

/* Returns the value stored for key, or -1. */
static int32_t bm_find(const bytemap *m, const void *key, size_t len) {
    if (!m->t) return -1;
    uint64_t h = hash_bytes(key, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const bm_ent *e = &m->t[i];
        if (!e->h) return -1;
        if (e->h == h && e->len == len && !memcmp(m->pool + e->off, key, len)) return e->val;
    }
}

/* Doubles the table; returns 0 or -1. */
static int bm_grow(bytemap *m) {
    size_t cap = m->t ? (m->mask + 1) * 2 : 1024;
    bm_ent *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    if (m->t) {
        for (size_t i = 0; i <= m->mask; i++) {
            bm_ent *e = &m->t[i];
            if (!e->h) continue;
            size_t j = e->h & (cap - 1);
            while (t[j].h) j = (j + 1) & (cap - 1);
            t[j] = *e;
        }
        free(m->t);
    }
    m->t = t;
    m->mask = cap - 1;
    return 0;
}

/* Inserts or overwrites key -> val; returns 0 or -1 when out of memory. */
static int bm_put(bytemap *m, const void *key, size_t len, int32_t val) {
    if (!m->t || (m->n + 1) * 4 > (m->mask + 1) * 3) {
        if (bm_grow(m)) return -1;
    }
    uint64_t h = hash_bytes(key, len);
    size_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        bm_ent *e = &m->t[i];
        if (!e->h) break;
        if (e->h == h && e->len == len && !memcmp(m->pool + e->off, key, len)) {
            e->val = val;
            return 0;
        }
    }
    if (m->pool_n + len > m->pool_cap || !m->pool) {  /* allocated even for an empty first key */
        size_t nc = m->pool_cap ? m->pool_cap * 2 : 4096;
        while (nc < m->pool_n + len) nc *= 2;
        char *np = realloc(m->pool, nc);
        if (!np) return -1;
        m->pool = np;
        m->pool_cap = nc;
    }
    memcpy(m->pool + m->pool_n, key, len);
    m->t[i].h = h;
    m->t[i].off = (uint32_t)m->pool_n;
    m->t[i].len = (uint32_t)len;
    m->t[i].val = val;
    m->pool_n += len;
    m->n++;
    return 0;
}

/* Empties the map, keeping its memory. */
static void bm_clear(bytemap *m) {
    if (m->t) memset(m->t, 0, (m->mask + 1) * sizeof *m->t);
    m->n = 0;
    m->pool_n = 0;
}

/* Releases a map's memory. */
static void bm_free(bytemap *m) {
    free(m->t);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

/* ---- merge map: (left id, right id) -> (rank, merged id) ---- */
typedef struct {
    uint64_t key;  /* (a << 32 | b) + 1; 0 = empty */
    int32_t rank, id;
} mm_ent;

typedef struct {
    mm_ent *t;
    size_t mask, n;
} mergemap;

/* Returns the slot mixing of a merge key. */
static inline size_t mm_slot(uint64_t k, size_t mask) {
    k ^= k >> 31;
    k *= 0x7fb5d329728ea185ull;
    k ^= k >> 27;
    return (size_t)k & mask;
}

/* Returns the entry for pair (a, b), or NULL. */
static inline const mm_ent *mm_find(const mergemap *m, int32_t a, int32_t b) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (size_t i = mm_slot(k, m->mask);; i = (i + 1) & m->mask) {
        const mm_ent *e = &m->t[i];
        if (e->key == k) return e;
        if (!e->key) return NULL;
    }
}

/* Allocates a merge map for n entries; returns 0 or -1. */
static int mm_init(mergemap *m, size_t n) {
    size_t cap = 1024;
    while (cap < n * 2) cap *= 2;
    m->t = calloc(cap, sizeof *m->t);
    if (!m->t) return -1;
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

/* Inserts or overwrites a merge (the later rank wins, as HF's HashMap collect does). */
static void mm_put(mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = mm_slot(k, m->mask);
    while (m->t[i].key && m->t[i].key != k) i = (i + 1) & m->mask;
    if (!m->t[i].key) m->n++;
    m->t[i].key = k;
    m->t[i].rank = rank;
    m->t[i].id = id;
}

/* ---- tokenizer ---- */
enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD };
enum { PT_SPLIT, PT_BYTELEVEL };
enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };

typedef struct {
    int type;
    glm_regex *re;        /* Split with a Regex pattern, or ByteLevel use_regex */
    char *literal;        /* Split with a String pattern */
    size_t literal_len;
    int behavior, invert;
    int add_prefix_space;
} pt_step;

typedef struct {
    char *content;        /* as in tokenizer.json */
    size_t len;
    char *ncontent;       /* normalized content (normalized tokens) */
    size_t nlen;
    int32_t id;
    uint8_t special, lstrip, rstrip, normalized, single_word;
} added_tok;

/* Added tokens that can start with one byte, longest first. */
typedef struct {
    int *idx[256];
    int n[256];
    int any;
} added_set;

typedef struct enc_state enc_state;

struct glm_tokenizer {
    char *name;
    int n_vocab;
    /* per id */
    uint32_t *piece_off, *piece_len;  /* decoded bytes */
    char *pieces;
    uint32_t *text_off;               /* tokenizer.json string, NUL-terminated */
    char *texts;
    uint8_t *tflags;                  /* TF_* */
    /* model */
    bytemap vocab;                    /* raw bytes -> id */
    bytemap vocab_str;                /* keys outside the byte-level alphabet -> id */
    int32_t byte_id[256];
    int16_t c2b[324];                 /* byte-level character -> byte, -1 */
    mergemap merges;
    int ignore_merges;
    int32_t unk_id;
    int fuse_unk;
    /* added tokens */
    added_tok *added;
    int n_added;
    added_set set_raw, set_norm;
    /* normalizer */
    int norm[16];
    int n_norm;
    /* pre-tokenizer */
    pt_step *steps;
    int n_steps;
    /* post-processor: ids before and after the sequence */
    int32_t *tpl_pre, *tpl_post;
    int n_pre, n_post;
    /* from tokenizer_config.json */
    int32_t eos_id;
    int chat_format;
    /* one shared encoder state, used when free */
    pthread_mutex_t mu;
    enc_state *shared;
};

enum { TF_PRESENT = 1, TF_ADDED = 2, TF_SPECIAL = 4 };

/* ---- loading helpers ---- */

/* Converts a byte-level string (UTF-8 of alphabet characters) to raw bytes in
 * out[0..cap); returns the byte count, or -1 when a character is not in the alphabet.
 * Each character gives one byte, so out must hold len bytes: a smaller cap is refused
 * (-1) rather than overflowed. */
static long bl_to_bytes(const int16_t *c2b, const char *s, size_t len, uint8_t *out, size_t cap) {
    size_t i = 0;
    long k = 0;
    const uint8_t *u = (const uint8_t *)s;
    if (cap < len) return -1;
    while (i < len) {
        int l = glm_utf8_next(u, len, i, NULL);
        if (l < 0) return -1;
        uint32_t cp;
        glm_utf8_decode(u, i, &cp);
        if (cp >= 324 || c2b[cp] < 0) return -1;
        out[k++] = (uint8_t)c2b[cp];
        i += (size_t)l;
    }
    return k;
}

/* Returns the id of the vocabulary key s[0..len) as written in tokenizer.json (a
 * byte-level string, or any other text), or -1 when absent or out of memory. */
static int32_t vocab_find(const glm_tokenizer *tok, const char *s, size_t len) {
    uint8_t small[256];
    uint8_t *buf = len <= sizeof small ? small : malloc(len);
    if (!buf) return -1;
    long k = bl_to_bytes(tok->c2b, s, len, buf, len);
    int32_t id = k >= 0 ? bm_find(&tok->vocab, buf, (size_t)k) : bm_find(&tok->vocab_str, s, len);
    if (buf != small) free(buf);
    return id;
}

/* Returns 1 and sets *id when v is an integral JSON number in [0, max] (json_to_int,
 * max <= INT32_MAX), else 0 with why[cap] saying what is wrong. */
static int json_id(const json_value *v, int64_t max, int32_t *id, char *why, size_t cap) {
    int64_t x;
    if (!v) { snprintf(why, cap, "is missing"); return 0; }
    if (!json_to_int(v, 0, max, &x, why, cap)) return 0;
    *id = (int32_t)x;
    return 1;
}

/* Appends bytes to a growable pool; returns the offset or -1. */
static long pool_add(char **pool, size_t *n, size_t *cap, const void *p, size_t len, int nul) {
    size_t need = *n + len + (nul ? 1 : 0);
    if (need > *cap || !*pool) {  /* allocated even for an empty first entry */
        size_t nc = *cap ? *cap : 65536;
        while (nc < need) nc *= 2;
        char *np = realloc(*pool, nc);
        if (!np) return -1;
        *pool = np;
        *cap = nc;
    }
    long off = (long)*n;
    memcpy(*pool + *n, p, len);
    *n += len;
    if (nul) (*pool)[(*n)++] = 0;
    return off;
}

/* Applies the normalizers to s[0..n); returns a malloc'd result (and *out_len), or NULL
 * when out of memory. */
static uint8_t *normalize(const glm_tokenizer *tok, const uint8_t *s, size_t n, size_t *out_len) {
    uint8_t *cur = malloc(n + 1);
    if (!cur) return NULL;
    memcpy(cur, s, n);
    cur[n] = 0;
    size_t len = n;
    for (int k = 0; k < tok->n_norm; k++) {
        int opt = UTF8PROC_STABLE;
        switch (tok->norm[k]) {
        case NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
        case NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
        case NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
        case NORM_NFKD: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
        }
        utf8proc_uint8_t *o = NULL;
        utf8proc_ssize_t r = utf8proc_map(cur, (utf8proc_ssize_t)len, &o, (utf8proc_option_t)opt);
        free(cur);
        if (r < 0) return NULL;
        cur = o;
        len = (size_t)r;
    }
    *out_len = len;
    return cur;
}

/* Returns non-zero when s[0..n) is all ASCII (normalization leaves it unchanged). */
static int is_ascii(const uint8_t *s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        if (v & 0x8080808080808080ull) return 0;
    }
    for (; i < n; i++)
        if (s[i] & 0x80) return 0;
    return 1;
}

/* Builds a first-byte index over the added tokens selected by `normalized`; 0 or -1. */
static int build_set(glm_tokenizer *tok, added_set *set, int normalized) {
    for (int k = 0; k < tok->n_added; k++) {
        added_tok *a = &tok->added[k];
        if (a->normalized != normalized) continue;
        const char *c = normalized ? a->ncontent : a->content;
        size_t l = normalized ? a->nlen : a->len;
        if (!l) continue;
        uint8_t b = (uint8_t)c[0];
        int *ni = realloc(set->idx[b], sizeof(int) * (size_t)(set->n[b] + 1));
        if (!ni) return -1;
        set->idx[b] = ni;
        /* insertion keeping longest first */
        int j = set->n[b]++;
        while (j > 0) {
            added_tok *p = &tok->added[ni[j - 1]];
            size_t pl = normalized ? p->nlen : p->len;
            if (pl >= l) break;
            ni[j] = ni[j - 1];
            j--;
        }
        ni[j] = k;
        set->any = 1;
    }
    return 0;
}

/* Releases an added-token index. */
static void free_set(added_set *set) {
    for (int b = 0; b < 256; b++) free(set->idx[b]);
}

/* Returns a json string value's text, or NULL. */
static const char *jstr(const json_value *v) {
    return v && v->type == JSON_STRING ? v->u.str.s : NULL;
}

/* Reads a boolean member with a default. */
static int jbool(const json_value *obj, const char *key, int dflt) {
    int b;
    return json_get_bool(obj, key, &b) ? b : dflt;
}

/* Parses one normalizer (recursing into Sequence); returns GLM_OK or an error. */
static int load_normalizer(glm_tokenizer *tok, const json_value *v, const char *name) {
    if (!v || v->type == JSON_NULL) return GLM_OK;
    const char *type = json_get_str(v, "type");
    if (!type) return glm_err(GLM_ERR_FORMAT, "%s: normalizer without a type", name);
    if (!strcmp(type, "Sequence")) {
        const json_value *arr = json_get(v, "normalizers");
        if (!arr || arr->type != JSON_ARRAY) return glm_err(GLM_ERR_FORMAT, "%s: normalizer Sequence without normalizers", name);
        for (size_t i = 0; i < arr->u.arr.n; i++) {
            int rc = load_normalizer(tok, &arr->u.arr.items[i], name);
            if (rc) return rc;
        }
        return GLM_OK;
    }
    int k;
    if (!strcmp(type, "NFC")) k = NORM_NFC;
    else if (!strcmp(type, "NFD")) k = NORM_NFD;
    else if (!strcmp(type, "NFKC")) k = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) k = NORM_NFKD;
    else return glm_err(GLM_ERR_UNSUPPORTED, "%s: normalizer type %s is not supported (NFC, NFD, NFKC, NFKD, Sequence)", name, type);
    if (tok->n_norm >= 16) return glm_err(GLM_ERR_UNSUPPORTED, "%s: too many normalizers", name);
    tok->norm[tok->n_norm++] = k;
    return GLM_OK;
}

/* Appends a pre-tokenizer step; returns it or NULL. */
static pt_step *add_step(glm_tokenizer *tok) {
    pt_step *ns = realloc(tok->steps, sizeof(pt_step) * (size_t)(tok->n_steps + 1));
    if (!ns) return NULL;
    tok->steps = ns;
    pt_step *st = &ns[tok->n_steps++];
    memset(st, 0, sizeof *st);
    return st;
}

/* Parses one pre-tokenizer (recursing into Sequence); returns GLM_OK or an error. */
static int load_pretok(glm_tokenizer *tok, const json_value *v, const char *name) {
    if (!v || v->type == JSON_NULL) return GLM_OK;
    const char *type = json_get_str(v, "type");
    if (!type) return glm_err(GLM_ERR_FORMAT, "%s: pre_tokenizer without a type", name);
    if (!strcmp(type, "Sequence")) {
        const json_value *arr = json_get(v, "pretokenizers");
        if (!arr || arr->type != JSON_ARRAY) return glm_err(GLM_ERR_FORMAT, "%s: pre_tokenizer Sequence without pretokenizers", name);
        for (size_t i = 0; i < arr->u.arr.n; i++) {
            int rc = load_pretok(tok, &arr->u.arr.items[i], name);
            if (rc) return rc;
        }
        return GLM_OK;
    }
    if (tok->n_steps && tok->steps[tok->n_steps - 1].type == PT_BYTELEVEL)
        return glm_err(GLM_ERR_UNSUPPORTED, "%s: pre-tokenizer %s after ByteLevel is not supported", name, type);
    char err[256];
    if (!strcmp(type, "Split")) {
        const json_value *pat = json_get(v, "pattern");
        const char *rx = pat ? json_get_str(pat, "Regex") : NULL;
        const json_value *lit = pat ? json_get(pat, "String") : NULL;
        const char *beh = json_get_str(v, "behavior");
        if (!pat || (!rx && (!lit || lit->type != JSON_STRING)))
            return glm_err(GLM_ERR_FORMAT, "%s: Split pre-tokenizer needs pattern.Regex or pattern.String", name);
        int b;
        if (!beh) return glm_err(GLM_ERR_FORMAT, "%s: Split pre-tokenizer without behavior", name);
        if (!strcmp(beh, "Removed")) b = B_REMOVED;
        else if (!strcmp(beh, "Isolated")) b = B_ISOLATED;
        else if (!strcmp(beh, "MergedWithPrevious")) b = B_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) b = B_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) b = B_CONTIGUOUS;
        else return glm_err(GLM_ERR_UNSUPPORTED, "%s: Split behavior %s is not supported", name, beh);
        pt_step *st = add_step(tok);
        if (!st) return glm_err(GLM_ERR_OOM, "out of memory");
        st->type = PT_SPLIT;
        st->behavior = b;
        st->invert = jbool(v, "invert", 0);
        if (rx) {
            const json_value *rv = json_get(pat, "Regex");
            if (glm_regex_compile(rx, rv->u.str.len, &st->re, err, sizeof err))
                return glm_err(GLM_ERR_UNSUPPORTED, "%s: Split regex: %s", name, err);
        } else {
            st->literal = malloc(lit->u.str.len + 1);
            if (!st->literal) return glm_err(GLM_ERR_OOM, "out of memory");
            memcpy(st->literal, lit->u.str.s, lit->u.str.len + 1);
            st->literal_len = lit->u.str.len;
        }
        return GLM_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        pt_step *st = add_step(tok);
        if (!st) return glm_err(GLM_ERR_OOM, "out of memory");
        st->type = PT_BYTELEVEL;
        st->add_prefix_space = jbool(v, "add_prefix_space", 1);
        if (jbool(v, "use_regex", 1)) {
            if (glm_regex_compile(GPT2_PATTERN, strlen(GPT2_PATTERN), &st->re, err, sizeof err))
                return glm_err(GLM_ERR_UNSUPPORTED, "%s: ByteLevel regex: %s", name, err);
        }
        return GLM_OK;
    }
    return glm_err(GLM_ERR_UNSUPPORTED, "%s: pre_tokenizer type %s is not supported (Split, ByteLevel, Sequence)", name, type);
}

/* Checks the decoder is ByteLevel (alone or in a Sequence); returns GLM_OK or an error. */
static int check_decoder(const json_value *v, const char *name) {
    if (!v || v->type == JSON_NULL)
        return glm_err(GLM_ERR_UNSUPPORTED, "%s: decoder is null; only the ByteLevel decoder is supported", name);
    const char *type = json_get_str(v, "type");
    if (type && !strcmp(type, "ByteLevel")) return GLM_OK;
    if (type && !strcmp(type, "Sequence")) {
        const json_value *arr = json_get(v, "decoders");
        if (!arr || arr->type != JSON_ARRAY || !arr->u.arr.n) return glm_err(GLM_ERR_FORMAT, "%s: decoder Sequence without decoders", name);
        for (size_t i = 0; i < arr->u.arr.n; i++) {
            int rc = check_decoder(&arr->u.arr.items[i], name);
            if (rc) return rc;
        }
        return GLM_OK;
    }
    return glm_err(GLM_ERR_UNSUPPORTED, "%s: decoder type %s is not supported (ByteLevel)", name, type ? type : "?");
}

/* Appends one id to a growable array; returns GLM_OK or GLM_ERR_OOM. */
static int push_id(int32_t **arr, int *n, int32_t id) {
    int32_t *na = realloc(*arr, sizeof(int32_t) * (size_t)(*n + 1));
    if (!na) return glm_err(GLM_ERR_OOM, "out of memory");
    *arr = na;
    na[(*n)++] = id;
    return GLM_OK;
}

/* Looks up a special token's ids in a TemplateProcessing special_tokens map into the
 * growable array *arr; returns GLM_OK or an error. */
static int tpl_add(const json_value *specials, const char *key, int32_t **arr, int *n, const char *name) {
    const json_value *st = specials ? json_get(specials, key) : NULL;
    const json_value *ids = st ? json_get(st, "ids") : NULL;
    if (!ids || ids->type != JSON_ARRAY)
        return glm_err(GLM_ERR_FORMAT, "%s: TemplateProcessing special token %s has no ids", name, key);
    for (size_t i = 0; i < ids->u.arr.n; i++) {
        int32_t id;
        char why[96];
        if (!json_id(&ids->u.arr.items[i], INT32_MAX, &id, why, sizeof why))
            return glm_err(GLM_ERR_FORMAT, "%s: TemplateProcessing special token %s: ids[%zu] is not a token id (%s)", name, key, i, why);
        int rc = push_id(arr, n, id);
        if (rc) return rc;
    }
    return GLM_OK;
}

/* Parses the post-processor; returns GLM_OK or an error. */
static int load_post(glm_tokenizer *tok, const json_value *v, const char *name) {
    if (!v || v->type == JSON_NULL) return GLM_OK;
    const char *type = json_get_str(v, "type");
    if (!type) return glm_err(GLM_ERR_FORMAT, "%s: post_processor without a type", name);
    if (!strcmp(type, "ByteLevel")) return GLM_OK;  /* offsets only */
    if (!strcmp(type, "Sequence")) {
        const json_value *arr = json_get(v, "processors");
        if (!arr || arr->type != JSON_ARRAY) return glm_err(GLM_ERR_FORMAT, "%s: post_processor Sequence without processors", name);
        for (size_t i = 0; i < arr->u.arr.n; i++) {
            int rc = load_post(tok, &arr->u.arr.items[i], name);
            if (rc) return rc;
        }
        return GLM_OK;
    }
    if (tok->n_pre || tok->n_post)
        return glm_err(GLM_ERR_UNSUPPORTED, "%s: more than one post-processor adding tokens", name);
    if (!strcmp(type, "TemplateProcessing")) {
        const json_value *single = json_get(v, "single");
        const json_value *specials = json_get(v, "special_tokens");
        if (!single || single->type != JSON_ARRAY) return glm_err(GLM_ERR_FORMAT, "%s: TemplateProcessing without single", name);
        int seen_seq = 0;
        for (size_t i = 0; i < single->u.arr.n; i++) {
            const json_value *it = &single->u.arr.items[i];
            const json_value *sp = json_get(it, "SpecialToken");
            const json_value *sq = json_get(it, "Sequence");
            if (sp) {
                const char *id = json_get_str(sp, "id");
                if (!id) return glm_err(GLM_ERR_FORMAT, "%s: TemplateProcessing SpecialToken without id", name);
                int rc = tpl_add(specials, id, seen_seq ? &tok->tpl_post : &tok->tpl_pre,
                                 seen_seq ? &tok->n_post : &tok->n_pre, name);
                if (rc) return rc;
            } else if (sq) {
                const char *id = json_get_str(sq, "id");
                if (!id || strcmp(id, "A") || seen_seq)
                    return glm_err(GLM_ERR_UNSUPPORTED, "%s: TemplateProcessing single must hold sequence A once", name);
                seen_seq = 1;
            } else {
                return glm_err(GLM_ERR_FORMAT, "%s: TemplateProcessing item %zu is neither SpecialToken nor Sequence", name, i);
            }
        }
        if (!seen_seq) return glm_err(GLM_ERR_UNSUPPORTED, "%s: TemplateProcessing single without sequence A", name);
        return GLM_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const json_value *cls = json_get(v, "cls"), *sep = json_get(v, "sep");
        int32_t cls_id, sep_id;
        char why[96];
        if (!cls || cls->type != JSON_ARRAY || cls->u.arr.n != 2 || cls->u.arr.items[0].type != JSON_STRING ||
            !json_id(&cls->u.arr.items[1], INT32_MAX, &cls_id, why, sizeof why))
            return glm_err(GLM_ERR_FORMAT, "%s: %s cls must be [token, id]", name, type);
        if (!sep || sep->type != JSON_ARRAY || sep->u.arr.n != 2 || sep->u.arr.items[0].type != JSON_STRING ||
            !json_id(&sep->u.arr.items[1], INT32_MAX, &sep_id, why, sizeof why))
            return glm_err(GLM_ERR_FORMAT, "%s: %s sep must be [token, id]", name, type);
        int rc = push_id(&tok->tpl_pre, &tok->n_pre, cls_id);
        if (!rc) rc = push_id(&tok->tpl_post, &tok->n_post, sep_id);
        return rc;
    }
    return glm_err(GLM_ERR_UNSUPPORTED, "%s: post_processor type %s is not supported", name, type);
}

/* Sets the per-id arrays for token id; returns GLM_OK or an error. */
static int set_token(glm_tokenizer *tok, int32_t id, const char *text, size_t text_len, const void *piece,
                     size_t piece_len, int flags, char **ppool, size_t *pn, size_t *pcap, size_t *tn, size_t *tcap) {
    if (id < 0 || id >= tok->n_vocab) return glm_err(GLM_ERR_FORMAT, "%s: token id %d out of range", tok->name, id);
    long po = pool_add(ppool, pn, pcap, piece, piece_len, 0);
    long to = pool_add(&tok->texts, tn, tcap, text, text_len, 1);
    if (po < 0 || to < 0) return glm_err(GLM_ERR_OOM, "out of memory");
    tok->piece_off[id] = (uint32_t)po;
    tok->piece_len[id] = (uint32_t)piece_len;
    tok->text_off[id] = (uint32_t)to;
    tok->tflags[id] = (uint8_t)(flags | TF_PRESENT);
    return GLM_OK;
}

/* Decodes a token string the way HF's ByteLevel decoder does: every character mapped
 * back to its byte when all of them are in the alphabet, else the UTF-8 as is. Writes
 * into out (len bytes room); returns the byte count. */
static size_t decode_piece(const int16_t *c2b, const char *s, size_t len, uint8_t *out) {
    long k = bl_to_bytes(c2b, s, len, out, len);
    if (k >= 0) return (size_t)k;
    memcpy(out, s, len);
    return len;
}

/* Frees everything a tokenizer owns. */
void glm_tokenizer_free(glm_tokenizer *tok);

/* Returns GLM_OK and a tokenizer built from the parsed tokenizer.json root. */
int glm_tokenizer_from_json(const json_value *root, const char *name, glm_tokenizer **out) {
    int rc = GLM_OK;
    uint8_t *buf = NULL;
    size_t pn = 0, pcap = 0, tn = 0, tcap = 0;
    int16_t c2b[324];
    *out = NULL;
    glm_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return glm_err(GLM_ERR_OOM, "out of memory");
    pthread_mutex_init(&tok->mu, NULL);
    tok->eos_id = -1;
    tok->unk_id = -1;
    tok->chat_format = GLM_CHAT_GLM47;
    tok->name = strdup(name ? name : "tokenizer.json");
    if (!tok->name) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
    for (int k = 0; k < 324; k++) c2b[k] = -1;
    for (int b = 0; b < 256; b++) c2b[glm_byte_to_char((uint8_t)b)] = (int16_t)b;
    memcpy(tok->c2b, c2b, sizeof c2b);

    if (!root || root->type != JSON_OBJECT) { rc = glm_err(GLM_ERR_FORMAT, "%s: not a JSON object", name); goto fail; }
    const json_value *model = json_get(root, "model");
    if (!model || model->type != JSON_OBJECT) { rc = glm_err(GLM_ERR_FORMAT, "%s: no model object", name); goto fail; }
    const char *mtype = json_get_str(model, "type");
    if (mtype && strcmp(mtype, "BPE")) { rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: model type %s is not supported (BPE)", name, mtype); goto fail; }
    const json_value *vocab = json_get(model, "vocab");
    const json_value *merges = json_get(model, "merges");
    if (!vocab || vocab->type != JSON_OBJECT) { rc = glm_err(GLM_ERR_FORMAT, "%s: model.vocab missing", name); goto fail; }
    if (!merges || merges->type != JSON_ARRAY) { rc = glm_err(GLM_ERR_FORMAT, "%s: model.merges missing", name); goto fail; }
    double dropout;
    if (json_get_num(model, "dropout", &dropout) && dropout > 0) { rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", name); goto fail; }
    if (jbool(model, "byte_fallback", 0)) { rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: BPE byte_fallback is not supported", name); goto fail; }
    const char *csp = json_get_str(model, "continuing_subword_prefix");
    const char *eows = json_get_str(model, "end_of_word_suffix");
    if ((csp && *csp) || (eows && *eows)) {
        rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: continuing_subword_prefix / end_of_word_suffix are not supported", name);
        goto fail;
    }
    tok->ignore_merges = jbool(model, "ignore_merges", 0);
    tok->fuse_unk = jbool(model, "fuse_unk", 0);

    const json_value *added = json_get(root, "added_tokens");
    if (added && added->type != JSON_ARRAY && added->type != JSON_NULL) {
        rc = glm_err(GLM_ERR_FORMAT, "%s: added_tokens is not an array", name);
        goto fail;
    }
    size_t maxkey = 16;
    for (size_t i = 0; i < vocab->u.obj.n; i++)
        if (vocab->u.obj.members[i].key_len > maxkey) maxkey = vocab->u.obj.members[i].key_len;
    if (added && added->type == JSON_ARRAY)
        for (size_t i = 0; i < added->u.arr.n; i++) {
            const json_value *c = json_get(&added->u.arr.items[i], "content");
            if (c && c->type == JSON_STRING && c->u.str.len > maxkey) maxkey = c->u.str.len;
        }
    buf = malloc(maxkey * 2 + 16);
    if (!buf) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }

    /* model vocabulary: raw bytes -> id (strings outside the byte alphabet by their text) */
    int64_t maxid = -1;
    for (int b = 0; b < 256; b++) tok->byte_id[b] = -1;
    for (size_t i = 0; i < vocab->u.obj.n; i++) {
        const json_member *m = &vocab->u.obj.members[i];
        int32_t id;
        char why[96];
        if (!json_id(&m->value, GLM_TOK_MAX_ID, &id, why, sizeof why)) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: vocab entry %zu has a bad id (an integer in [0, 1e8]): %s", name, i, why);
            goto fail;
        }
        if (id > maxid) maxid = id;
        long k = bl_to_bytes(c2b, m->key, m->key_len, buf, maxkey);
        int r = k >= 0 ? bm_put(&tok->vocab, buf, (size_t)k, id) : bm_put(&tok->vocab_str, m->key, m->key_len, id);
        if (r) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
        if (k == 1) tok->byte_id[buf[0]] = id;
    }

    /* added tokens take their ids as HF's AddedVocabulary assigns them on load (the
     * "id" fields are only checked there): the model's id when the content is in the
     * vocabulary, the earlier id when already added, else the next free one */
    if (added && added->type == JSON_ARRAY && added->u.arr.n) {
        tok->added = calloc(added->u.arr.n, sizeof(added_tok));
        if (!tok->added) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
        size_t model_size = vocab->u.obj.n;
        int64_t max_added = -1;
        for (size_t i = 0; i < added->u.arr.n; i++) {
            const json_value *t = &added->u.arr.items[i];
            const json_value *c = json_get(t, "content");
            if (!c || c->type != JSON_STRING) { rc = glm_err(GLM_ERR_FORMAT, "%s: added_tokens[%zu] without content", name, i); goto fail; }
            if (!c->u.str.len) continue;
            if (glm_utf8_check((const uint8_t *)c->u.str.s, c->u.str.len) != c->u.str.len) {
                rc = glm_err(GLM_ERR_FORMAT, "%s: added_tokens[%zu] is not valid UTF-8", name, i);
                goto fail;
            }
            added_tok *a = NULL;
            for (int k = 0; k < tok->n_added; k++)
                if (tok->added[k].len == c->u.str.len && !memcmp(tok->added[k].content, c->u.str.s, c->u.str.len))
                    a = &tok->added[k];
            int32_t id;
            if (a) {
                id = a->id;
            } else {
                id = vocab_find(tok, c->u.str.s, c->u.str.len);
                if (id < 0) {
                    if (max_added < 0) id = (int32_t)model_size;
                    else id = (max_added >= (int64_t)model_size || !model_size) ? (int32_t)(max_added + 1) : (int32_t)model_size;
                }
                a = &tok->added[tok->n_added++];
                a->content = malloc(c->u.str.len + 1);
                if (!a->content) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
                memcpy(a->content, c->u.str.s, c->u.str.len + 1);
                a->len = c->u.str.len;
            }
            if (id > max_added) max_added = id;
            a->id = id;
            int special = jbool(t, "special", 0);
            a->special = (uint8_t)(a->special | special);
            a->lstrip = (uint8_t)jbool(t, "lstrip", 0);
            a->rstrip = (uint8_t)jbool(t, "rstrip", 0);
            a->normalized = (uint8_t)jbool(t, "normalized", !special);
            a->single_word = (uint8_t)jbool(t, "single_word", 0);
            if (id > maxid) maxid = id;
        }
    }

    /* per-id tables */
    tok->n_vocab = (int)(maxid + 1);
    tok->piece_off = calloc((size_t)tok->n_vocab + 1, sizeof(uint32_t));
    tok->piece_len = calloc((size_t)tok->n_vocab + 1, sizeof(uint32_t));
    tok->text_off = calloc((size_t)tok->n_vocab + 1, sizeof(uint32_t));
    tok->tflags = calloc((size_t)tok->n_vocab + 1, 1);
    if (!tok->piece_off || !tok->piece_len || !tok->text_off || !tok->tflags) {
        rc = glm_err(GLM_ERR_OOM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < vocab->u.obj.n; i++) {
        const json_member *m = &vocab->u.obj.members[i];
        int32_t id;
        char why[96];
        if (!json_id(&m->value, GLM_TOK_MAX_ID, &id, why, sizeof why)) {  /* checked above: cannot fail */
            rc = glm_err(GLM_ERR_FORMAT, "%s: vocab entry %zu has a bad id: %s", name, i, why);
            goto fail;
        }
        size_t plen = decode_piece(c2b, m->key, m->key_len, buf);
        rc = set_token(tok, id, m->key, m->key_len, buf, plen, 0, &tok->pieces, &pn, &pcap, &tn, &tcap);
        if (rc) goto fail;
    }
    const json_value *unk = json_get(model, "unk_token");
    if (unk && unk->type == JSON_STRING) tok->unk_id = vocab_find(tok, unk->u.str.s, unk->u.str.len);

    /* merges */
    if (mm_init(&tok->merges, merges->u.arr.n)) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
    for (size_t i = 0; i < merges->u.arr.n; i++) {
        const json_value *m = &merges->u.arr.items[i];
        const char *a, *b;
        size_t al, bl;
        if (m->type == JSON_STRING) {
            const char *sp = memchr(m->u.str.s, ' ', m->u.str.len);
            if (!sp) { rc = glm_err(GLM_ERR_FORMAT, "%s: merge %zu has no space", name, i); goto fail; }
            a = m->u.str.s;
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = m->u.str.len - al - 1;
        } else if (m->type == JSON_ARRAY && m->u.arr.n == 2 && m->u.arr.items[0].type == JSON_STRING &&
                   m->u.arr.items[1].type == JSON_STRING) {
            a = m->u.arr.items[0].u.str.s;
            al = m->u.arr.items[0].u.str.len;
            b = m->u.arr.items[1].u.str.s;
            bl = m->u.arr.items[1].u.str.len;
        } else {
            rc = glm_err(GLM_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [a, b]", name, i);
            goto fail;
        }
        if (al + bl > maxkey * 2) { rc = glm_err(GLM_ERR_FORMAT, "%s: merge %zu is too long", name, i); goto fail; }
        long ka = bl_to_bytes(c2b, a, al, buf, al);
        long kb = ka >= 0 ? bl_to_bytes(c2b, b, bl, buf + ka, bl) : -1;
        int32_t ia = ka >= 0 ? bm_find(&tok->vocab, buf, (size_t)ka) : -1;
        int32_t ib = kb >= 0 ? bm_find(&tok->vocab, buf + ka, (size_t)kb) : -1;
        int32_t in = (ia >= 0 && ib >= 0) ? bm_find(&tok->vocab, buf, (size_t)(ka + kb)) : -1;
        if (ia < 0 || ib < 0 || in < 0) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: merge %zu (%.*s %.*s) uses a token missing from the vocab", name, i,
                         (int)al, a, (int)bl, b);
            goto fail;
        }
        mm_put(&tok->merges, ia, ib, (int32_t)i, in);
    }

    /* pipeline */
    rc = load_normalizer(tok, json_get(root, "normalizer"), name);
    if (rc) goto fail;
    for (int k = 0; k < tok->n_added; k++) {
        added_tok *a = &tok->added[k];
        if (!a->normalized) continue;
        if (tok->n_norm) {
            a->ncontent = (char *)normalize(tok, (const uint8_t *)a->content, a->len, &a->nlen);
            if (!a->ncontent) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
        } else {
            a->ncontent = strdup(a->content);
            a->nlen = a->len;
            if (!a->ncontent) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
        }
    }
    /* an added token reads back as its content, normalized for normalized ones (what
     * HF's id_to_token gives), through the same ByteLevel decoding as any token */
    for (int k = 0; k < tok->n_added; k++) {
        added_tok *a = &tok->added[k];
        const char *c = a->normalized ? a->ncontent : a->content;
        size_t cl = a->normalized ? a->nlen : a->len;
        if (cl > maxkey * 2) { rc = glm_err(GLM_ERR_FORMAT, "%s: added token %d too long once normalized", name, a->id); goto fail; }
        size_t plen = decode_piece(c2b, c, cl, buf);
        rc = set_token(tok, a->id, c, cl, buf, plen, TF_ADDED | (a->special ? TF_SPECIAL : 0),
                       &tok->pieces, &pn, &pcap, &tn, &tcap);
        if (rc) goto fail;
    }
    if (build_set(tok, &tok->set_raw, 0) || build_set(tok, &tok->set_norm, 1)) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
    rc = load_pretok(tok, json_get(root, "pre_tokenizer"), name);
    if (rc) goto fail;
    if (!tok->n_steps || tok->steps[tok->n_steps - 1].type != PT_BYTELEVEL) {
        rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: the pre_tokenizer does not end in ByteLevel: only byte-level BPE is supported", name);
        goto fail;
    }
    rc = check_decoder(json_get(root, "decoder"), name);
    if (rc) goto fail;
    rc = load_post(tok, json_get(root, "post_processor"), name);
    if (rc) goto fail;
    for (int k = 0; k < tok->n_pre + tok->n_post; k++) {
        int32_t id = k < tok->n_pre ? tok->tpl_pre[k] : tok->tpl_post[k - tok->n_pre];
        if (id < 0 || id >= tok->n_vocab || !(tok->tflags[id] & TF_PRESENT)) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: post_processor id %d is not in the vocabulary", name, id);
            goto fail;
        }
    }
    free(buf);
    *out = tok;
    return GLM_OK;
fail:
    free(buf);
    glm_tokenizer_free(tok);
    return rc;
}

/* ---- encoder state ---- */
typedef struct {
    uint32_t off, n;
} cache_val;

typedef struct {
    int32_t rank, pos, id;
} heap_ent;

struct enc_state {
    glm_regex_scratch rs;
    int32_t *ids;
    size_t n_ids, cap_ids;
    /* word cache */
    bytemap cache;
    int32_t *cache_ids;
    size_t cache_n, cache_cap;
    /* BPE work */
    int32_t *sym, *prev, *next;
    uint32_t *slen;
    size_t sym_cap;
    heap_ent *heap;
    size_t heap_cap;
    /* pre-tokenizer work: one byte buffer per step (ByteLevel prefix space) */
    uint8_t **pbuf;
    size_t *pbuf_cap;
    int n_pbuf;
    /* Split behaviours that need the whole list of pieces: one list per step, since
     * emitting a piece runs the later steps */
    size_t **marks;
    size_t *marks_cap;
    int flags;
    int use_cache;
    int regex_limit;  /* a search hit the backtracking limit */
};

/* Frees an encoder state. */
static void enc_free(enc_state *E) {
    if (!E) return;
    glm_regex_scratch_free(&E->rs);
    free(E->ids);
    bm_free(&E->cache);
    free(E->cache_ids);
    free(E->sym);
    free(E->prev);
    free(E->next);
    free(E->slen);
    free(E->heap);
    for (int k = 0; k < E->n_pbuf; k++) free(E->pbuf[k]);
    free(E->pbuf);
    free(E->pbuf_cap);
    for (int k = 0; k < E->n_pbuf && E->marks; k++) free(E->marks[k]);
    free(E->marks);
    free(E->marks_cap);
    free(E);
}

/* Returns a new encoder state for tok, or NULL. */
static enc_state *enc_new(const glm_tokenizer *tok) {
    enc_state *E = calloc(1, sizeof *E);
    if (!E) return NULL;
    E->n_pbuf = tok->n_steps + 1;
    E->pbuf = calloc((size_t)E->n_pbuf, sizeof(uint8_t *));
    E->pbuf_cap = calloc((size_t)E->n_pbuf, sizeof(size_t));
    E->marks = calloc((size_t)E->n_pbuf, sizeof(size_t *));
    E->marks_cap = calloc((size_t)E->n_pbuf, sizeof(size_t));
    if (!E->pbuf || !E->pbuf_cap || !E->marks || !E->marks_cap) {
        enc_free(E);
        return NULL;
    }
    return E;
}

/* Appends one id to the output; returns 0 or -1. */
static inline int out_id(enc_state *E, int32_t id) {
    if (E->n_ids == E->cap_ids) {
        size_t nc = E->cap_ids ? E->cap_ids * 2 : 1024;
        int32_t *ni = realloc(E->ids, nc * sizeof(int32_t));
        if (!ni) return -1;
        E->ids = ni;
        E->cap_ids = nc;
    }
    E->ids[E->n_ids++] = id;
    return 0;
}

/* Heap order: lower rank first, then lower position (HF's BinaryHeap of Merge). */
static inline int heap_less(const heap_ent *a, const heap_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

/* Pushes onto the merge heap; returns 0 or -1. */
static int heap_push(enc_state *E, size_t *n, heap_ent e) {
    if (*n == E->heap_cap) {
        size_t nc = E->heap_cap ? E->heap_cap * 2 : 64;
        heap_ent *nh = realloc(E->heap, nc * sizeof *nh);
        if (!nh) return -1;
        E->heap = nh;
        E->heap_cap = nc;
    }
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &E->heap[p])) break;
        E->heap[i] = E->heap[p];
        i = p;
    }
    E->heap[i] = e;
    return 0;
}

/* Pops the smallest heap entry. */
static heap_ent heap_pop(enc_state *E, size_t *n) {
    heap_ent top = E->heap[0];
    heap_ent last = E->heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const heap_ent *best = &last;
        if (l < *n && heap_less(&E->heap[l], best)) { m = l; best = &E->heap[l]; }
        if (r < *n && heap_less(&E->heap[r], best)) { m = r; best = &E->heap[r]; }
        if (m == i) break;
        E->heap[i] = E->heap[m];
        i = m;
    }
    if (*n) E->heap[i] = last;
    return top;
}

/* Runs BPE over one pre-token (raw bytes) and appends its ids; returns 0 or -1. */
static int bpe_word(const glm_tokenizer *tok, enc_state *E, const uint8_t *w, size_t n) {
    if (tok->ignore_merges) {
        int32_t id = bm_find(&tok->vocab, w, n);
        if (id >= 0) return out_id(E, id);
    }
    int cacheable = E->use_cache && n <= CACHE_MAX_WORD;
    if (cacheable) {
        int32_t ci = bm_find(&E->cache, w, n);
        if (ci >= 0) {
            const int32_t *src = E->cache_ids + ci;
            uint32_t cnt = (uint32_t)src[0];
            if (E->n_ids + cnt > E->cap_ids) {
                size_t nc = E->cap_ids ? E->cap_ids : 1024;
                while (nc < E->n_ids + cnt) nc *= 2;
                int32_t *ni = realloc(E->ids, nc * sizeof(int32_t));
                if (!ni) return -1;
                E->ids = ni;
                E->cap_ids = nc;
            }
            memcpy(E->ids + E->n_ids, src + 1, cnt * sizeof(int32_t));
            E->n_ids += cnt;
            return 0;
        }
    }
    if (n > E->sym_cap) {
        size_t nc = E->sym_cap ? E->sym_cap : 64;
        while (nc < n) nc *= 2;
        int32_t *a = realloc(E->sym, nc * sizeof(int32_t));
        if (a) E->sym = a;
        int32_t *b = realloc(E->prev, nc * sizeof(int32_t));
        if (b) E->prev = b;
        int32_t *c = realloc(E->next, nc * sizeof(int32_t));
        if (c) E->next = c;
        uint32_t *d = realloc(E->slen, nc * sizeof(uint32_t));
        if (d) E->slen = d;
        if (!a || !b || !c || !d) return -1;
        E->sym_cap = nc;
    }
    /* initial symbols: one per byte (unknown bytes become unk, or are dropped as HF
     * does without an unk token) */
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[w[i]];
        if (id < 0) {
            if (tok->unk_id < 0) continue;
            if (tok->fuse_unk && m > 0 && E->sym[m - 1] == tok->unk_id) {
                E->slen[m - 1]++;
                continue;
            }
            id = tok->unk_id;
        }
        E->sym[m] = id;
        E->slen[m] = 1;
        E->prev[m] = m - 1;
        E->next[m] = m + 1;
        m++;
    }
    if (m == 0) return 0;
    E->next[m - 1] = -1;
    size_t hn = 0;
    for (int i = 0; i + 1 < m; i++) {
        const mm_ent *me = mm_find(&tok->merges, E->sym[i], E->sym[i + 1]);
        if (me && heap_push(E, &hn, (heap_ent){me->rank, i, me->id})) return -1;
    }
    while (hn) {
        heap_ent top = heap_pop(E, &hn);
        int p = top.pos;
        if (!E->slen[p] || E->next[p] < 0) continue;
        int q = E->next[p];
        const mm_ent *me = mm_find(&tok->merges, E->sym[p], E->sym[q]);
        if (!me || me->id != top.id) continue;
        E->sym[p] = top.id;
        E->slen[p] += E->slen[q];
        E->slen[q] = 0;
        E->next[p] = E->next[q];
        if (E->next[q] >= 0) E->prev[E->next[q]] = p;
        if (E->prev[p] >= 0) {
            int r = E->prev[p];
            const mm_ent *ml = mm_find(&tok->merges, E->sym[r], E->sym[p]);
            if (ml && heap_push(E, &hn, (heap_ent){ml->rank, r, ml->id})) return -1;
        }
        if (E->next[p] >= 0) {
            const mm_ent *mr = mm_find(&tok->merges, E->sym[p], E->sym[E->next[p]]);
            if (mr && heap_push(E, &hn, (heap_ent){mr->rank, p, mr->id})) return -1;
        }
    }
    size_t first = E->n_ids;
    for (int i = 0; i >= 0; i = E->next[i])
        if (out_id(E, E->sym[i])) return -1;
    if (cacheable) {
        uint32_t cnt = (uint32_t)(E->n_ids - first);
        if (E->cache.n >= CACHE_MAX_ENTRIES || E->cache.pool_n > CACHE_MAX_BYTES) {
            bm_clear(&E->cache);
            E->cache_n = 0;
        }
        if (E->cache_n + cnt + 1 > E->cache_cap) {
            size_t nc = E->cache_cap ? E->cache_cap * 2 : 65536;
            while (nc < E->cache_n + cnt + 1) nc *= 2;
            int32_t *nci = realloc(E->cache_ids, nc * sizeof(int32_t));
            if (!nci) return 0;  /* the cache is optional */
            E->cache_ids = nci;
            E->cache_cap = nc;
        }
        int32_t at = (int32_t)E->cache_n;
        E->cache_ids[E->cache_n++] = (int32_t)cnt;
        memcpy(E->cache_ids + E->cache_n, E->ids + first, cnt * sizeof(int32_t));
        E->cache_n += cnt;
        if (bm_put(&E->cache, w, n, at)) bm_clear(&E->cache);
    }
    return 0;
}

static int pretok(const glm_tokenizer *tok, enc_state *E, int k, const uint8_t *p, size_t n);

/* Finds the next occurrence of a literal in p[from..n); returns 1 and the span, or 0. */
static int literal_search(const pt_step *st, const uint8_t *p, size_t n, size_t from, size_t *ms, size_t *me) {
    if (!st->literal_len || from >= n) return 0;
    const uint8_t *hit = memmem(p + from, n - from, st->literal, st->literal_len);
    if (!hit) return 0;
    *ms = (size_t)(hit - p);
    *me = *ms + st->literal_len;
    return 1;
}

/* Feeds piece [a, b) of p to the next step if non-empty; returns 0 or -1. */
static inline int emit_piece(const glm_tokenizer *tok, enc_state *E, int k, const uint8_t *p, size_t a, size_t b) {
    return b > a ? pretok(tok, E, k + 1, p + a, b - a) : 0;
}

/* Runs a Split step over p[0..n) and feeds the pieces on; returns 0 or -1. For
 * Isolated and Removed the pieces stream out as found; the merging behaviours collect
 * the (start, is_match) boundaries first, as HF's fold over the match list does. */
static int split_step(const glm_tokenizer *tok, enc_state *E, int k, const uint8_t *p, size_t n) {
    const pt_step *st = &tok->steps[k];
    int streaming = st->behavior == B_ISOLATED || st->behavior == B_REMOVED;
    size_t nmark = 0;
    size_t *marks = NULL;
    size_t prev = 0, pos = 0, ms, me;
    long last_end = -1;
    /* pieces as (start, end, flag) triples while collecting */
#define ADD_PIECE(a_, b_, f_)                                                                  \
    do {                                                                                       \
        int fl_ = (f_) ^ st->invert;                                                           \
        if (streaming) {                                                                       \
            if ((st->behavior == B_ISOLATED || !fl_) && emit_piece(tok, E, k, p, (a_), (b_))) \
                goto fail;                                                                     \
        } else {                                                                               \
            if (nmark + 3 > E->marks_cap[k]) {                                                 \
                size_t nc_ = E->marks_cap[k] ? E->marks_cap[k] * 2 : 384;                      \
                size_t *nm_ = realloc(E->marks[k], nc_ * sizeof(size_t));                      \
                if (!nm_) goto fail;                                                           \
                E->marks[k] = nm_;                                                             \
                E->marks_cap[k] = nc_;                                                         \
            }                                                                                  \
            marks = E->marks[k];                                                               \
            marks[nmark++] = (a_);                                                             \
            marks[nmark++] = (b_);                                                             \
            marks[nmark++] = (size_t)fl_;                                                      \
        }                                                                                      \
    } while (0)
    for (;;) {
        int r = st->re ? glm_regex_search(st->re, &E->rs, p, n, pos, &ms, &me) : literal_search(st, p, n, pos, &ms, &me);
        if (r < 0) {
            E->regex_limit = r == -1;
            goto fail;
        }
        if (r == 0) break;
        if (me == ms && last_end == (long)me) {
            /* no empty match right after the previous match (the onig iterator's rule) */
            if (ms >= n) break;
            uint8_t c = p[ms];
            pos = ms + (c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4);
            continue;
        }
        if (prev != ms) ADD_PIECE(prev, ms, 0);
        ADD_PIECE(ms, me, 1);
        prev = me;
        last_end = (long)me;
        pos = me;
        if (pos > n) break;
    }
    if (prev != n) ADD_PIECE(prev, n, 0);
#undef ADD_PIECE
    if (streaming) return 0;
    /* HF's folds for the merging behaviours, over (a, b, is_match) triples */
    size_t cnt = nmark / 3, outn = 0;
    if (st->behavior == B_MERGED_PREV || st->behavior == B_CONTIGUOUS) {
        int prevm = 0;
        for (size_t i = 0; i < cnt; i++) {
            size_t a = marks[3 * i], b = marks[3 * i + 1];
            int m = (int)marks[3 * i + 2];
            int merge = st->behavior == B_MERGED_PREV ? (m && !prevm) : (m == prevm);
            if (merge && outn) marks[3 * (outn - 1) + 1] = b;
            else {
                marks[3 * outn] = a;
                marks[3 * outn + 1] = b;
                outn++;
            }
            prevm = m;
        }
        for (size_t i = 0; i < outn; i++)
            if (emit_piece(tok, E, k, p, marks[3 * i], marks[3 * i + 1])) return -1;
        return 0;
    }
    /* MergedWithNext: fold from the back, a match joins the piece after it */
    {
        int prevm = 0;
        size_t w = cnt;  /* write index from the back */
        for (size_t ii = cnt; ii-- > 0;) {
            size_t a = marks[3 * ii], b = marks[3 * ii + 1];
            int m = (int)marks[3 * ii + 2];
            if (m && !prevm && w < cnt) marks[3 * w] = a;
            else {
                w--;
                marks[3 * w] = a;
                marks[3 * w + 1] = b;
            }
            prevm = m;
        }
        for (size_t i = w; i < cnt; i++)
            if (emit_piece(tok, E, k, p, marks[3 * i], marks[3 * i + 1])) return -1;
    }
    return 0;
fail:
    return -1;
}

/* Runs pre-tokenizer step k (and the ones after it) over p[0..n); the last step feeds
 * BPE. Returns 0 or -1. */
static int pretok(const glm_tokenizer *tok, enc_state *E, int k, const uint8_t *p, size_t n) {
    if (!n) return 0;
    if (k == tok->n_steps) return bpe_word(tok, E, p, n);
    const pt_step *st = &tok->steps[k];
    if (st->type == PT_SPLIT) return split_step(tok, E, k, p, n);
    /* ByteLevel */
    if (st->add_prefix_space && p[0] != ' ') {
        if (n + 1 > E->pbuf_cap[k]) {
            size_t nc = n + 64;
            uint8_t *nb = realloc(E->pbuf[k], nc);
            if (!nb) return -1;
            E->pbuf[k] = nb;
            E->pbuf_cap[k] = nc;
        }
        E->pbuf[k][0] = ' ';
        memcpy(E->pbuf[k] + 1, p, n);
        p = E->pbuf[k];
        n++;
    }
    if (!st->re) return pretok(tok, E, k + 1, p, n);
    size_t pos = 0, ms, me, prev = 0;
    for (;;) {
        int r = glm_regex_search(st->re, &E->rs, p, n, pos, &ms, &me);
        if (r < 0) {
            E->regex_limit = r == -1;
            return -1;
        }
        if (r == 0) break;
        if (ms > prev && pretok(tok, E, k + 1, p + prev, ms - prev)) return -1;
        if (pretok(tok, E, k + 1, p + ms, me - ms)) return -1;
        prev = pos = me;
    }
    if (prev < n && pretok(tok, E, k + 1, p + prev, n - prev)) return -1;
    return 0;
}

/* Returns non-zero when the character ending before `end` in s is a word character
 * (Rust regex \w). */
static int word_before(const uint8_t *s, size_t end) {
    if (!end) return 0;
    size_t q = end - 1;
    while (q > 0 && (s[q] & 0xC0) == 0x80) q--;
    uint32_t cp;
    glm_utf8_decode(s, q, &cp);
    int c = glm_ucat(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ND) || c == UTF8PROC_CATEGORY_NL ||
           c == UTF8PROC_CATEGORY_PC || cp == 0x200C || cp == 0x200D;
}

/* Returns non-zero when the character starting s[0..n) is a word character. */
static int word_after(const uint8_t *s, size_t n) {
    if (!n) return 0;
    uint32_t cp;
    glm_utf8_decode(s, 0, &cp);
    int c = glm_ucat(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ND) || c == UTF8PROC_CATEGORY_NL ||
           c == UTF8PROC_CATEGORY_PC || cp == 0x200C || cp == 0x200D;
}

typedef int (*plain_fn)(const glm_tokenizer *tok, enc_state *E, const uint8_t *p, size_t n);

/* Splits s[0..n) on the added tokens of set (HF's find_matches: leftmost-longest,
 * single_word / lstrip / rstrip handling, special tokens skipped unless parsing them),
 * appending token ids and passing the text between them to plain. Returns 0 or -1. */
static int split_added(const glm_tokenizer *tok, enc_state *E, const added_set *set, int normalized,
                       const uint8_t *s, size_t n, plain_fn plain) {
    if (!set->any) return plain(tok, E, s, n);
    size_t start_offset = 0, i = 0;
    while (i < n) {
        uint8_t b = s[i];
        int best = -1;
        size_t best_len = 0;
        for (int j = 0; j < set->n[b]; j++) {
            const added_tok *a = &tok->added[set->idx[b][j]];
            const char *c = normalized ? a->ncontent : a->content;
            size_t l = normalized ? a->nlen : a->len;
            if (l <= n - i && !memcmp(s + i, c, l)) {
                best = set->idx[b][j];
                best_len = l;
                break;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        const added_tok *a = &tok->added[best];
        size_t start = i, stop = i + best_len;
        i = stop;
        if (a->special && !(E->flags & GLM_TOK_PARSE_SPECIAL)) continue;
        if (a->single_word) {
            int start_space = start == 0 || !word_before(s, start);
            int stop_space = stop == n || !word_after(s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t q = ns - 1;
                while (q > 0 && (s[q] & 0xC0) == 0x80) q--;
                uint32_t cp;
                glm_utf8_decode(s, q, &cp);
                if (!glm_is_white_space(cp)) break;
                ns = q;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int l = glm_utf8_decode(s, stop, &cp);
                if (!glm_is_white_space(cp)) break;
                stop += (size_t)l;
            }
        }
        if (start > start_offset && plain(tok, E, s + start_offset, start - start_offset)) return -1;
        if (out_id(E, a->id)) return -1;
        start_offset = stop;
    }
    if (start_offset < n && plain(tok, E, s + start_offset, n - start_offset)) return -1;
    return 0;
}

/* Pre-tokenizes and encodes a normalized piece. */
static int plain_normalized(const glm_tokenizer *tok, enc_state *E, const uint8_t *p, size_t n) {
    return pretok(tok, E, 0, p, n);
}

/* Normalizes a piece between raw added tokens, then splits out normalized added tokens. */
static int plain_raw(const glm_tokenizer *tok, enc_state *E, const uint8_t *p, size_t n) {
    if (!n) return 0;
    if (!tok->n_norm || is_ascii(p, n))
        return split_added(tok, E, &tok->set_norm, 1, p, n, plain_normalized);
    size_t nl;
    uint8_t *q = normalize(tok, p, n, &nl);
    if (!q) return -1;
    int r = split_added(tok, E, &tok->set_norm, 1, q, nl, plain_normalized);
    free(q);
    return r;
}

/* Returns GLM_OK with the ids of text, or an error. */
int glm_tokenize(const glm_tokenizer *tok, const char *text, size_t len, int flags, int32_t **out, int *n_out) {
    if (!tok || !out || !n_out || (!text && len)) return glm_err(GLM_ERR_ARG, "glm_tokenize: NULL argument");
    *out = NULL;
    *n_out = 0;
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = glm_utf8_check(s, len);
    if (bad != len) return glm_err(GLM_ERR_ARG, "invalid UTF-8 at byte offset %zu (byte 0x%02X)", bad, s[bad]);
    glm_tokenizer *mt = (glm_tokenizer *)tok;
    enc_state *E = NULL;
    int locked = pthread_mutex_trylock(&mt->mu) == 0;
    if (locked) {
        if (!mt->shared) mt->shared = enc_new(tok);
        E = mt->shared;
    }
    int own = 0;
    if (!E) {
        E = enc_new(tok);
        own = 1;
    }
    int rc = GLM_OK;
    if (!E) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
    E->n_ids = 0;
    E->regex_limit = 0;
    E->rs.steps_used = 0;
    E->rs.steps_max = GLM_REGEX_STEPS_BASE + GLM_REGEX_STEPS_PER_BYTE * (uint64_t)len;
    E->flags = flags;
    E->use_cache = 1;
    if (flags & GLM_TOK_ADD_SPECIAL)
        for (int k = 0; k < tok->n_pre; k++)
            if (out_id(E, tok->tpl_pre[k])) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
    if (split_added(tok, E, &tok->set_raw, 0, s, len, plain_raw)) {
        rc = E->regex_limit ? glm_err(GLM_ERR_UNSUPPORTED,
                                      "tokenize: the split regex needs more work than its limits allow on this text"
                                      " (%llu of its %llu steps used; one search may take 1M + 1000 a byte, and 10M backtracks)",
                                      (unsigned long long)E->rs.steps_used, (unsigned long long)E->rs.steps_max)
                            : glm_err(GLM_ERR_OOM, "tokenize: out of memory");
        goto done;
    }
    if (flags & GLM_TOK_ADD_SPECIAL)
        for (int k = 0; k < tok->n_post; k++)
            if (out_id(E, tok->tpl_post[k])) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
    if (E->n_ids > (size_t)0x7FFFFFFF) { rc = glm_err(GLM_ERR_ARG, "tokenize: too many tokens"); goto done; }
    *out = malloc((E->n_ids ? E->n_ids : 1) * sizeof(int32_t));
    if (!*out) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
    if (E->n_ids) memcpy(*out, E->ids, E->n_ids * sizeof(int32_t));
    *n_out = (int)E->n_ids;
done:
    if (own) enc_free(E);
    else if (E && E->cap_ids > (1u << 22)) {
        /* do not keep a huge output buffer around after one big call */
        free(E->ids);
        E->ids = NULL;
        E->cap_ids = 0;
    }
    if (locked) pthread_mutex_unlock(&mt->mu);
    return rc;
}

/* ---- lookups ---- */

/* Returns the vocabulary size (largest id + 1). */
int glm_tokenizer_n_vocab(const glm_tokenizer *tok) {
    return tok ? tok->n_vocab : 0;
}

/* Returns the decoded bytes of token id, or NULL. */
const char *glm_token_piece(const glm_tokenizer *tok, int32_t id, size_t *len) {
    if (!tok || id < 0 || id >= tok->n_vocab || !(tok->tflags[id] & TF_PRESENT)) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = tok->piece_len[id];
    return tok->pieces + tok->piece_off[id];
}

/* Returns the tokenizer.json string of token id, or NULL. */
const char *glm_token_text(const glm_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab || !(tok->tflags[id] & TF_PRESENT)) return NULL;
    return tok->texts + tok->text_off[id];
}

/* Returns non-zero for special added tokens. */
int glm_token_is_special(const glm_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return 0;
    return (tok->tflags[id] & TF_SPECIAL) != 0;
}

/* Returns the id whose added content or vocabulary string is text, or -1. */
int32_t glm_tokenizer_find(const glm_tokenizer *tok, const char *text) {
    if (!tok || !text) return -1;
    size_t len = strlen(text);
    for (int k = 0; k < tok->n_added; k++)
        if (tok->added[k].len == len && !memcmp(tok->added[k].content, text, len)) return tok->added[k].id;
    return vocab_find(tok, text, len);
}

/* Returns the eos token id from tokenizer_config.json, or -1. */
int32_t glm_tokenizer_eos(const glm_tokenizer *tok) {
    return tok ? tok->eos_id : -1;
}

/* Returns the chat format found when loading. */
glm_chat_format glm_tokenizer_chat_format(const glm_tokenizer *tok) {
    return tok ? (glm_chat_format)tok->chat_format : GLM_CHAT_GLM47;
}

/* Releases the tokenizer and everything it owns. */
void glm_tokenizer_free(glm_tokenizer *tok) {
    if (!tok) return;
    free(tok->name);
    free(tok->piece_off);
    free(tok->piece_len);
    free(tok->pieces);
    free(tok->text_off);
    free(tok->texts);
    free(tok->tflags);
    bm_free(&tok->vocab);
    bm_free(&tok->vocab_str);
    free(tok->merges.t);
    for (int k = 0; k < tok->n_added; k++) {
        free(tok->added[k].content);
        free(tok->added[k].ncontent);
    }
    free(tok->added);
    free_set(&tok->set_raw);
    free_set(&tok->set_norm);
    for (int k = 0; k < tok->n_steps; k++) {
        glm_regex_free(tok->steps[k].re);
        free(tok->steps[k].literal);
    }
    free(tok->steps);
    free(tok->tpl_pre);
    free(tok->tpl_post);
    enc_free(tok->shared);
    pthread_mutex_destroy(&tok->mu);
    free(tok);
}

/* ---- loading entry points ---- */

/* Returns GLM_OK and a tokenizer parsed from json[0..len). */
int glm_tokenizer_load_mem(const char *json, size_t len, const char *name, glm_tokenizer **out) {
    if (!json || !out) return glm_err(GLM_ERR_ARG, "glm_tokenizer_load_mem: NULL argument");
    *out = NULL;
    char err[256];
    json_doc *doc = json_parse(json, len, err, sizeof err);
    if (!doc) return glm_err(GLM_ERR_FORMAT, "%s: %s", name ? name : "tokenizer.json", err);
    int rc = glm_tokenizer_from_json(json_root(doc), name, out);
    json_free(doc);
    return rc;
}

/* Returns GLM_OK and the tokenizer of a tokenizer.json file. */
int glm_tokenizer_load(const char *path, glm_tokenizer **out) {
    if (!path || !out) return glm_err(GLM_ERR_ARG, "glm_tokenizer_load: NULL argument");
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    int rc = glm_read_file(path, &data, &len);
    if (rc) return rc;
    rc = glm_tokenizer_load_mem(data, len, path, out);
    free(data);
    return rc;
}

/* Returns GLM_OK and the tokenizer of a model directory, with its chat format and eos. */
int glm_tokenizer_load_dir(const char *dir, glm_tokenizer **out) {
    if (!dir || !out) return glm_err(GLM_ERR_ARG, "glm_tokenizer_load_dir: NULL argument");
    char path[4096];
    int rc = glm_path_join(path, sizeof path, dir, "tokenizer.json");
    if (rc) return rc;
    rc = glm_tokenizer_load(path, out);
    if (rc) return rc;
    glm_tokenizer *tok = *out;
    char *data = NULL, *tpl_file = NULL;
    size_t len = 0;
    json_doc *doc = NULL;
    const char *tpl = NULL;
    rc = glm_path_join(path, sizeof path, dir, "tokenizer_config.json");
    if (rc) goto fail;
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        rc = glm_read_file(path, &data, &len);
        if (rc) goto fail;
        char err[256];
        doc = json_parse(data, len, err, sizeof err);
        if (!doc) { rc = glm_err(GLM_ERR_FORMAT, "%s: %s", path, err); goto fail; }
        const json_value *root = json_root(doc);
        const json_value *eos = json_get(root, "eos_token");
        const char *eos_s = jstr(eos);
        if (!eos_s && eos && eos->type == JSON_OBJECT) eos_s = json_get_str(eos, "content");
        if (eos_s) tok->eos_id = glm_tokenizer_find(tok, eos_s);
        const json_value *ct = json_get(root, "chat_template");
        if (ct && ct->type == JSON_STRING) tpl = ct->u.str.s;
        else if (ct && ct->type == JSON_ARRAY) {
            for (size_t i = 0; i < ct->u.arr.n && !tpl; i++) {
                const char *nm = json_get_str(&ct->u.arr.items[i], "name");
                if (nm && !strcmp(nm, "default")) tpl = json_get_str(&ct->u.arr.items[i], "template");
            }
        }
    }
    if (!tpl) {
        rc = glm_path_join(path, sizeof path, dir, "chat_template.jinja");
        if (rc) goto fail;
        f = fopen(path, "rb");
        if (f) {
            fclose(f);
            size_t tl;
            rc = glm_read_file(path, &tpl_file, &tl);
            if (rc) goto fail;
            tpl = tpl_file;
        }
    }
    tok->chat_format = glm_chat_detect_format(tpl);
    json_free(doc);
    free(data);
    free(tpl_file);
    return GLM_OK;
fail:
    json_free(doc);
    free(data);
    free(tpl_file);
    glm_tokenizer_free(tok);
    *out = NULL;
    return rc;
}

/* ---- decoding ---- */

/* Appends the lossy UTF-8 form of s[0..n) to a growable buffer; *held gets the length
 * of an unfinished character at the end that is kept back when keep_tail is set.
 * Returns 0 or -1. */
static int lossy_append(char **buf, size_t *bn, size_t *bcap, const uint8_t *s, size_t n, int keep_tail, size_t *held) {
    size_t need = *bn + n * 3 + 4;
    if (need > *bcap) {
        size_t nc = *bcap ? *bcap : 256;
        while (nc < need) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *bcap = nc;
    }
    if (held) *held = 0;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            (*buf)[(*bn)++] = (char)s[i++];
            continue;
        }
        int inc;
        int l = glm_utf8_next(s, n, i, &inc);
        if (l > 0) {
            memcpy(*buf + *bn, s + i, (size_t)l);
            *bn += (size_t)l;
            i += (size_t)l;
            continue;
        }
        if (inc && keep_tail) {
            if (held) *held = n - i;
            break;
        }
        memcpy(*buf + *bn, "\xEF\xBF\xBD", 3);
        *bn += 3;
        i += (size_t)(-l);
    }
    return 0;
}

/* Returns GLM_OK with the decoded text of ids. */
int glm_detokenize(const glm_tokenizer *tok, const int32_t *ids, int n_ids, int flags, char **out, size_t *len) {
    if (!tok || !out || (!ids && n_ids)) return glm_err(GLM_ERR_ARG, "glm_detokenize: NULL argument");
    *out = NULL;
    size_t total = 0;
    for (int i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_vocab || !(tok->tflags[id] & TF_PRESENT))
            return glm_err(GLM_ERR_ARG, "detokenize: id %d at position %d is not in the vocabulary", id, i);
        if ((flags & GLM_DETOK_SKIP_SPECIAL) && (tok->tflags[id] & TF_SPECIAL)) continue;
        total += tok->piece_len[id];
    }
    uint8_t *raw = malloc(total + 1);
    if (!raw) return glm_err(GLM_ERR_OOM, "out of memory");
    size_t k = 0;
    for (int i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if ((flags & GLM_DETOK_SKIP_SPECIAL) && (tok->tflags[id] & TF_SPECIAL)) continue;
        memcpy(raw + k, tok->pieces + tok->piece_off[id], tok->piece_len[id]);
        k += tok->piece_len[id];
    }
    char *buf = NULL;
    size_t bn = 0, bcap = 0;
    int r = lossy_append(&buf, &bn, &bcap, raw, k, 0, NULL);
    free(raw);
    if (r) {
        free(buf);
        return glm_err(GLM_ERR_OOM, "out of memory");
    }
    if (!buf) {
        buf = malloc(1);
        if (!buf) return glm_err(GLM_ERR_OOM, "out of memory");
    }
    buf[bn] = 0;
    *out = buf;
    if (len) *len = bn;
    return GLM_OK;
}

struct glm_detok_stream {
    const glm_tokenizer *tok;
    int flags;
    uint8_t pend[8];      /* an unfinished character carried to the next token */
    size_t n_pend;
    uint8_t *work;
    size_t work_cap;
    char *out;
    size_t out_n, out_cap;
};

/* Returns GLM_OK and a new streaming decoder. */
int glm_detok_stream_new(const glm_tokenizer *tok, int flags, glm_detok_stream **out) {
    if (!tok || !out) return glm_err(GLM_ERR_ARG, "glm_detok_stream_new: NULL argument");
    *out = calloc(1, sizeof **out);
    if (!*out) return glm_err(GLM_ERR_OOM, "out of memory");
    (*out)->tok = tok;
    (*out)->flags = flags;
    return GLM_OK;
}

/* Returns GLM_OK with the complete characters after adding token id. */
int glm_detok_stream_push(glm_detok_stream *s, int32_t id, const char **text, size_t *len) {
    if (!s || !text || !len) return glm_err(GLM_ERR_ARG, "glm_detok_stream_push: NULL argument");
    *text = "";
    *len = 0;
    const glm_tokenizer *tok = s->tok;
    if (id < 0 || id >= tok->n_vocab || !(tok->tflags[id] & TF_PRESENT))
        return glm_err(GLM_ERR_ARG, "detokenize: id %d is not in the vocabulary", id);
    if ((s->flags & GLM_DETOK_SKIP_SPECIAL) && (tok->tflags[id] & TF_SPECIAL)) return GLM_OK;
    size_t pl = tok->piece_len[id];
    size_t n = s->n_pend + pl;
    if (n > s->work_cap) {
        size_t nc = n + 64;
        uint8_t *nw = realloc(s->work, nc);
        if (!nw) return glm_err(GLM_ERR_OOM, "out of memory");
        s->work = nw;
        s->work_cap = nc;
    }
    memcpy(s->work, s->pend, s->n_pend);
    memcpy(s->work + s->n_pend, tok->pieces + tok->piece_off[id], pl);
    s->out_n = 0;
    size_t held = 0;
    if (lossy_append(&s->out, &s->out_n, &s->out_cap, s->work, n, 1, &held)) return glm_err(GLM_ERR_OOM, "out of memory");
    memcpy(s->pend, s->work + n - held, held);
    s->n_pend = held;
    *text = s->out ? s->out : "";
    *len = s->out_n;
    return GLM_OK;
}

/* Returns GLM_OK with whatever the stream still holds (U+FFFD for an unfinished character). */
int glm_detok_stream_flush(glm_detok_stream *s, const char **text, size_t *len) {
    if (!s || !text || !len) return glm_err(GLM_ERR_ARG, "glm_detok_stream_flush: NULL argument");
    s->out_n = 0;
    if (lossy_append(&s->out, &s->out_n, &s->out_cap, s->pend, s->n_pend, 0, NULL)) return glm_err(GLM_ERR_OOM, "out of memory");
    s->n_pend = 0;
    *text = s->out ? s->out : "";
    *len = s->out_n;
    return GLM_OK;
}

/* Releases a streaming decoder. */
void glm_detok_stream_free(glm_detok_stream *s) {
    if (!s) return;
    free(s->work);
    free(s->out);
    free(s);
}
