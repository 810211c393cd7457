/* server-body.h - glm-server's handling of request and answer text: the reader of OpenAI
 * request bodies (POST /v1/completions and /v1/chat/completions: JSON through the
 * library's parser, every field type- and range-checked, the first problem reported with
 * the field's name, the error object's "param"; unknown fields are ignored, as OpenAI's
 * servers do), a growing string, and the split of a chat answer into reasoning_content and
 * content. Header-only so that the fuzz target (tests/fuzz/fuzz-http-body.c) and the tests
 * run the same code as the server. */
#ifndef GLM_SERVER_BODY_H
#define GLM_SERVER_BODY_H

#include "glm.h"
#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a growing string (sb_* drop what does not fit in memory: s stays NULL) ---- */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

/* Makes room for n more bytes; returns 0, -1 when out of memory. */
static inline int sb_room(sbuf *b, size_t n) {
    if (b->n + n + 1 <= b->cap) return 0;
    size_t cap = (b->n + n + 1) * 2;
    char *s = realloc(b->s, cap);
    if (!s) return -1;
    b->s = s;
    b->cap = cap;
    return 0;
}

/* Appends s[0..n). */
static inline void sb_add(sbuf *b, const char *s, size_t n) {
    if (sb_room(b, n)) return;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* Appends printf-formatted text. */
__attribute__((format(printf, 2, 3)))
static inline void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sb_room(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

/* Appends s[0..n) as a JSON string literal. */
static inline void sb_json(sbuf *b, const char *s, size_t n) {
    size_t need = json_escape(NULL, 0, s, n);
    if (sb_room(b, need)) return;
    json_escape(b->s + b->n, need + 1, s, n);
    b->n += need;
}

/* Frees the string and empties it. */
static inline void sb_free(sbuf *b) { free(b->s); memset(b, 0, sizeof *b); }

/* ---- reasoning_content ---- */
/* The state of a chat answer's split into reasoning (what comes before "</think>") and
 * content: mode 0 at the start (newlines, then "<think>" opens reasoning, anything else
 * is content), 1 in reasoning (the prompt ended in "<think>", or the answer opened it),
 * 2 in content; hold keeps what may be the beginning of a tag. */
typedef struct {
    int mode;
    char hold[16];
    int n_hold;
} think_split;

/* Splits the next n bytes of an answer into reason and content; flush (the last call)
 * gives out what is held. */
static inline void think_feed(think_split *t, const char *s, size_t n, int flush, sbuf *reason, sbuf *content) {
    sbuf w = {0};
    sb_add(&w, t->hold, (size_t)t->n_hold);
    sb_add(&w, s, n);
    t->n_hold = 0;
    const char *p = w.s ? w.s : "";
    size_t len = w.n;
    for (;;) {
        if (t->mode == 0) {
            size_t nl = 0;
            while (nl < len && p[nl] == '\n') nl++;
            const size_t rest = len - nl;
            if (rest >= 7 && !memcmp(p + nl, "<think>", 7)) { p += nl + 7; len -= nl + 7; t->mode = 1; continue; }
            if (rest < 7 && !memcmp(p + nl, "<think>", rest) && len < sizeof t->hold && !flush) {
                memcpy(t->hold, p, len);
                t->n_hold = (int)len;
                break;
            }
            t->mode = 2;
        }
        if (t->mode == 1) {
            const char *e = len ? memmem(p, len, "</think>", 8) : NULL;
            if (e) {
                sb_add(reason, p, (size_t)(e - p));
                len -= (size_t)(e - p) + 8;
                p = e + 8;
                t->mode = 2;
                continue;
            }
            size_t keep = 0;
            for (size_t k = len < 7 ? len : 7; k > 0 && !flush; k--)
                if (!memcmp(p + len - k, "</think>", k)) { keep = k; break; }
            sb_add(reason, p, len - keep);
            memcpy(t->hold, p + len - keep, keep);
            t->n_hold = (int)keep;
            break;
        }
        sb_add(content, p, len);
        break;
    }
    sb_free(&w);
}

#define BODY_MAX_STOP 16         /* stop strings a request may give */
#define BODY_MAX_STOP_LEN 256    /* bytes of one stop string */

typedef struct {
    int chat;                    /* 1: chat/completions, 0: completions */
    const char *model;           /* NULL when absent */
    const char *prompt;          /* completions: the prompt text (NULL with prompt_ids) */
    size_t prompt_len;
    int32_t *prompt_ids;         /* completions: a prompt given as token ids */
    int n_prompt_ids;
    glm_chat_msg *msgs;          /* chat: the messages (strings owned by the body) */
    int n_msgs;
    char **parts;                /* chat: contents joined from arrays of text parts */
    int n_parts;
    int max_tokens;              /* -1 when absent */
    double temperature, top_p, min_p, presence_penalty, frequency_penalty;
    double repetition_penalty;   /* 1 = off (a vLLM extension) */
    int top_k;
    int has_seed;
    uint64_t seed;
    const char *stop[BODY_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    int thinking;                /* chat_template_kwargs.enable_thinking: 1, 0, or -1 absent */
    int ignore_eos;
    json_doc *doc;
} body_req;

/* Frees what body_parse made (safe on a zeroed or failed body). */
static inline void body_free(body_req *b) {
    free(b->prompt_ids);
    free(b->msgs);
    for (int i = 0; i < b->n_parts; i++) free(b->parts[i]);
    free(b->parts);
    json_free(b->doc);
    memset(b, 0, sizeof *b);
}

/* Sets the error message and the offending field; returns -1. */
__attribute__((format(printf, 4, 5)))
static inline int body_fail(char *err, size_t cap, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    (void)param;
    return -1;
}

/* A number field within [lo, hi] into *out; 0 absent or null (out untouched), 1 set, -1 bad. */
static inline int body_num(const json_value *root, const char *key, double lo, double hi, double *out, char *err, size_t cap,
                           const char **param) {
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) return 0;
    char why[96];
    if (!json_to_num(v, lo, hi, out, why, sizeof why)) {
        *param = key;
        return body_fail(err, cap, key, "'%s' %s", key, why);
    }
    return 1;
}

/* An integer field within [lo, hi]; as body_num. */
static inline int body_int(const json_value *root, const char *key, int64_t lo, int64_t hi, int64_t *out, char *err, size_t cap,
                           const char **param) {
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) return 0;
    char why[96];
    if (!json_to_int(v, lo, hi, out, why, sizeof why)) {
        *param = key;
        return body_fail(err, cap, key, "'%s' %s", key, why);
    }
    return 1;
}

/* A boolean field; as body_num. */
static inline int body_bool(const json_value *root, const char *key, int *out, char *err, size_t cap, const char **param) {
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_BOOL) {
        *param = key;
        return body_fail(err, cap, key, "'%s' is %s, not a boolean", key, json_type_name(v));
    }
    *out = v->u.boolean;
    return 1;
}

/* Non-zero when s[0..n) holds a NUL byte (the library's strings end at the first). */
static inline int body_has_nul(const char *s, size_t n) { return memchr(s, 0, n) != NULL; }

/* A chat message's content: a string, null, or an array of {"type":"text","text":...}
 * parts (joined); *out points into the body or into b->parts. */
static inline int body_content(body_req *b, const json_value *v, int i, const char **out, char *err, size_t cap,
                               const char **param) {
    *param = "messages";
    if (!v || v->type == JSON_NULL) { *out = ""; return 0; }
    if (v->type == JSON_STRING) {
        if (body_has_nul(v->u.str.s, v->u.str.len)) return body_fail(err, cap, *param, "messages[%d].content holds a NUL character", i);
        *out = v->u.str.s;
        return 0;
    }
    if (v->type != JSON_ARRAY)
        return body_fail(err, cap, *param, "messages[%d].content is %s, not a string or an array of text parts", i, json_type_name(v));
    size_t len = 0;
    for (size_t k = 0; k < v->u.arr.n; k++) {
        const json_value *p = &v->u.arr.items[k];
        const char *type = json_get_str(p, "type");
        const json_value *t = json_get(p, "text");
        if (p->type != JSON_OBJECT || !type || strcmp(type, "text") || !t || t->type != JSON_STRING)
            return body_fail(err, cap, *param, "messages[%d].content[%zu] is not a {\"type\": \"text\", \"text\": string} part", i, k);
        if (body_has_nul(t->u.str.s, t->u.str.len)) return body_fail(err, cap, *param, "messages[%d].content[%zu] holds a NUL character", i, k);
        len += t->u.str.len;
    }
    char *s = malloc(len + 1), **np = realloc(b->parts, sizeof *np * (size_t)(b->n_parts + 1));
    if (np) b->parts = np;
    if (!s || !np) { free(s); return body_fail(err, cap, *param, "out of memory"); }
    b->parts[b->n_parts++] = s;
    len = 0;
    for (size_t k = 0; k < v->u.arr.n; k++) {
        const json_value *t = json_get(&v->u.arr.items[k], "text");
        memcpy(s + len, t->u.str.s, t->u.str.len);
        len += t->u.str.len;
    }
    s[len] = 0;
    *out = s;
    return 0;
}

/* Parses a request body of the chat (chat = 1) or completions endpoint into *b (free
 * with body_free, also after a failure). Returns 0, or -1 with err[cap] saying what is
 * wrong and *param naming the field (NULL for the body as a whole). */
static inline int body_parse(const char *text, size_t len, int chat, body_req *b, char *err, size_t cap, const char **param) {
    memset(b, 0, sizeof *b);
    b->chat = chat;
    b->max_tokens = -1;
    b->temperature = 1.0;
    b->repetition_penalty = 1.0;
    b->top_p = 1.0;
    b->thinking = -1;
    *param = NULL;
    char jerr[160];
    if (!(b->doc = json_parse(text, len, jerr, sizeof jerr))) return body_fail(err, cap, NULL, "malformed JSON body: %s", jerr);
    const json_value *root = json_root(b->doc);
    if (root->type != JSON_OBJECT) return body_fail(err, cap, NULL, "the body is %s, not a JSON object", json_type_name(root));
    const json_value *v;
    if ((v = json_get(root, "model")) && v->type != JSON_NULL) {
        if (v->type != JSON_STRING) { *param = "model"; return body_fail(err, cap, *param, "'model' is %s, not a string", json_type_name(v)); }
        b->model = v->u.str.s;
    }
    if (chat) {
        v = json_get(root, "messages");
        *param = "messages";
        if (!v) return body_fail(err, cap, *param, "'messages' is required");
        if (v->type != JSON_ARRAY) return body_fail(err, cap, *param, "'messages' is %s, not an array", json_type_name(v));
        if (v->u.arr.n == 0) return body_fail(err, cap, *param, "'messages' is empty");
        if (v->u.arr.n > 100000) return body_fail(err, cap, *param, "'messages' holds %zu messages, more than 100000", v->u.arr.n);
        if (!(b->msgs = calloc(v->u.arr.n, sizeof *b->msgs))) return body_fail(err, cap, *param, "out of memory");
        for (size_t i = 0; i < v->u.arr.n; i++) {
            const json_value *m = &v->u.arr.items[i], *rv;
            if (m->type != JSON_OBJECT) return body_fail(err, cap, *param, "messages[%zu] is %s, not an object", i, json_type_name(m));
            const char *role = json_get_str(m, "role");
            if (!role) return body_fail(err, cap, *param, "messages[%zu].role is missing or not a string", i);
            if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") && strcmp(role, "tool") &&
                strcmp(role, "developer"))
                return body_fail(err, cap, *param, "messages[%zu].role '%.40s' is not system, user, assistant, tool or developer", i, role);
            glm_chat_msg *cm = &b->msgs[b->n_msgs++];
            cm->role = strcmp(role, "developer") ? role : "system";
            if (body_content(b, json_get(m, "content"), (int)i, &cm->content, err, cap, param)) return -1;
            if ((rv = json_get(m, "reasoning_content")) && rv->type != JSON_NULL) {
                if (rv->type != JSON_STRING || body_has_nul(rv->u.str.s, rv->u.str.len))
                    return body_fail(err, cap, *param, "messages[%zu].reasoning_content is not a string", i);
                cm->reasoning = rv->u.str.s;
            }
        }
        const json_value *kw = json_get(root, "chat_template_kwargs");
        if (kw && kw->type != JSON_NULL) {
            *param = "chat_template_kwargs";
            if (kw->type != JSON_OBJECT) return body_fail(err, cap, *param, "'chat_template_kwargs' is %s, not an object", json_type_name(kw));
            if (body_bool(kw, "enable_thinking", &b->thinking, err, cap, param) < 0) return -1;
        }
    } else {
        v = json_get(root, "prompt");
        *param = "prompt";
        if (!v) return body_fail(err, cap, *param, "'prompt' is required");
        const json_value *p = v;
        if (v->type == JSON_ARRAY && v->u.arr.n == 1 && v->u.arr.items[0].type == JSON_STRING) p = &v->u.arr.items[0];
        if (p->type == JSON_STRING) {
            if (body_has_nul(p->u.str.s, p->u.str.len)) return body_fail(err, cap, *param, "'prompt' holds a NUL character");
            b->prompt = p->u.str.s;
            b->prompt_len = p->u.str.len;
        } else if (v->type == JSON_ARRAY && v->u.arr.n > 0 && v->u.arr.items[0].type == JSON_NUMBER) {
            if (v->u.arr.n > 1 << 24) return body_fail(err, cap, *param, "'prompt' holds %zu token ids, too many", v->u.arr.n);
            if (!(b->prompt_ids = malloc(sizeof *b->prompt_ids * v->u.arr.n))) return body_fail(err, cap, *param, "out of memory");
            for (size_t i = 0; i < v->u.arr.n; i++) {
                int64_t id;
                char why[96];
                if (!json_to_int(&v->u.arr.items[i], 0, INT32_MAX, &id, why, sizeof why))
                    return body_fail(err, cap, *param, "prompt[%zu] %s", i, why);
                b->prompt_ids[b->n_prompt_ids++] = (int32_t)id;
            }
        } else {
            return body_fail(err, cap, *param, "'prompt' is %s, not a string, an array of one string or an array of token ids",
                             json_type_name(v));
        }
    }
    int64_t n;
    int rc;
    /* max_completion_tokens is the chat endpoint's newer name of max_tokens */
    if ((rc = body_int(root, "max_tokens", 1, INT32_MAX, &n, err, cap, param)) < 0) return -1;
    if (rc) b->max_tokens = (int)n;
    if ((rc = body_int(root, "max_completion_tokens", 1, INT32_MAX, &n, err, cap, param)) < 0) return -1;
    if (rc) b->max_tokens = (int)n;
    if (body_num(root, "temperature", 0, 2, &b->temperature, err, cap, param) < 0) return -1;
    if (body_num(root, "top_p", 0, 1, &b->top_p, err, cap, param) < 0) return -1;
    if (b->top_p <= 0) { *param = "top_p"; return body_fail(err, cap, *param, "'top_p' must be greater than 0"); }
    if (body_num(root, "min_p", 0, 1, &b->min_p, err, cap, param) < 0) return -1;
    if (body_num(root, "presence_penalty", -2, 2, &b->presence_penalty, err, cap, param) < 0) return -1;
    if (body_num(root, "frequency_penalty", -2, 2, &b->frequency_penalty, err, cap, param) < 0) return -1;
    if ((rc = body_int(root, "top_k", -1, INT32_MAX, &n, err, cap, param)) < 0) return -1;
    if (rc) b->top_k = n < 0 ? 0 : (int)n;  /* -1: off, as vLLM takes it */
    if ((rc = body_int(root, "seed", -JSON_MAX_EXACT_INT, JSON_MAX_EXACT_INT, &n, err, cap, param)) < 0) return -1;
    if (rc) { b->has_seed = 1; b->seed = (uint64_t)n; }
    if (body_bool(root, "stream", &b->stream, err, cap, param) < 0) return -1;
    if (body_bool(root, "ignore_eos", &b->ignore_eos, err, cap, param) < 0) return -1;
    if ((v = json_get(root, "stream_options")) && v->type != JSON_NULL) {
        *param = "stream_options";
        if (v->type != JSON_OBJECT) return body_fail(err, cap, *param, "'stream_options' is %s, not an object", json_type_name(v));
        if (body_bool(v, "include_usage", &b->include_usage, err, cap, param) < 0) return -1;
    }
    if (body_int(root, "n", 1, 1, &n, err, cap, param) < 0) return -1;  /* one choice a request */
    if ((v = json_get(root, "stop")) && v->type != JSON_NULL) {
        *param = "stop";
        const json_value *items = v;
        size_t cnt = 1;
        if (v->type == JSON_ARRAY) { items = v->u.arr.items; cnt = v->u.arr.n; }
        else if (v->type != JSON_STRING) return body_fail(err, cap, *param, "'stop' is %s, not a string or an array of strings", json_type_name(v));
        if (cnt > BODY_MAX_STOP) return body_fail(err, cap, *param, "'stop' holds %zu strings, at most %d", cnt, BODY_MAX_STOP);
        for (size_t i = 0; i < cnt; i++) {
            const json_value *s = &items[i];
            if (s->type != JSON_STRING) return body_fail(err, cap, *param, "stop[%zu] is %s, not a string", i, json_type_name(s));
            if (s->u.str.len == 0) return body_fail(err, cap, *param, "stop[%zu] is empty", i);
            if (s->u.str.len > BODY_MAX_STOP_LEN || body_has_nul(s->u.str.s, s->u.str.len))
                return body_fail(err, cap, *param, "stop[%zu] is longer than %d bytes or holds a NUL character", i, BODY_MAX_STOP_LEN);
            b->stop[b->n_stop++] = s->u.str.s;
        }
    }
    if ((rc = body_num(root, "repetition_penalty", 0, 100, &b->repetition_penalty, err, cap, param)) < 0) return -1;
    if (rc && b->repetition_penalty <= 0) { *param = "repetition_penalty"; return body_fail(err, cap, *param, "'repetition_penalty' must be greater than 0"); }
    /* OpenAI fields this server does not use: a wrong type is still an error, and a
     * feature asked for that is not built is refused rather than ignored */
    enum { S_ = 1u << JSON_STRING, B_ = 1u << JSON_BOOL, N_ = 1u << JSON_NUMBER, O_ = 1u << JSON_OBJECT, A_ = 1u << JSON_ARRAY };
    static const struct { const char *key; unsigned types; int used_when_set; } other[] = {
        {"user", S_, 0}, {"metadata", O_, 0}, {"store", B_, 0}, {"service_tier", S_, 0}, {"parallel_tool_calls", B_, 0},
        {"logprobs", B_ | N_, 1}, {"top_logprobs", N_, 1}, {"echo", B_, 1}, {"logit_bias", O_, 1}, {"best_of", N_, 1},
        {"suffix", S_, 1}, {"response_format", O_, 1}, {"tools", A_, 1}, {"tool_choice", S_ | O_, 1},
    };
    for (size_t i = 0; i < sizeof other / sizeof *other; i++) {
        const char *key = other[i].key;
        if (!(v = json_get(root, key)) || v->type == JSON_NULL) continue;
        *param = key;
        if (!(other[i].types >> v->type & 1)) return body_fail(err, cap, *param, "'%s' has the wrong type (%s)", key, json_type_name(v));
        if (!other[i].used_when_set) continue;
        /* set: true, a non-zero number, a non-empty string, array or object; best_of 1,
         * a text response_format and tool_choice none or auto ask for nothing */
        int set = v->type == JSON_BOOL ? v->u.boolean : v->type == JSON_NUMBER ? v->u.number != 0
                : v->type == JSON_STRING ? v->u.str.len != 0 : v->type == JSON_ARRAY ? v->u.arr.n != 0 : v->u.obj.n != 0;
        if (!strcmp(key, "best_of")) set = v->u.number != 1;
        if (!strcmp(key, "response_format")) set = !json_get_str(v, "type") || strcmp(json_get_str(v, "type"), "text");
        if (!strcmp(key, "tool_choice") && v->type == JSON_STRING) set = strcmp(v->u.str.s, "none") && strcmp(v->u.str.s, "auto");
        if (set) return body_fail(err, cap, *param, "'%s' is not supported by this server", key);
    }
    *param = NULL;
    return 0;
}

#endif
