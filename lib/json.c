/* json.c - strict recursive-descent JSON reader with an arena per document.
 * Fast enough for a 10 MB tokenizer.json (one pass, no per-node malloc). */
#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 256

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    char data[];
} arena_block;

struct json_doc {
    arena_block *blocks;
    json_value root;
};

typedef struct {
    const char *s, *end, *start;
    json_doc *doc;
    char *err;
    size_t err_len;
    int failed;
} parser;

/* Returns n bytes of 16-byte aligned arena memory, or NULL when out of memory. */
static void *arena_alloc(json_doc *d, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = d->blocks;
    if (!b || b->used + n > b->cap) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        arena_block *nb = malloc(sizeof(arena_block) + cap + 16);
        if (!nb) return NULL;
        nb->next = d->blocks;
        nb->used = 0;
        nb->cap = cap;
        /* align data start */
        nb->used = (16 - ((uintptr_t)nb->data & 15)) & 15;
        d->blocks = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static void fail(parser *p, const char *fmt, ...) {
    if (p->failed) return;
    p->failed = 1;
    int line = 1, col = 1;
    for (const char *c = p->start; c < p->s && c < p->end; c++) {
        if (*c == '\n') { line++; col = 1; } else col++;
    }
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->err && p->err_len)
        snprintf(p->err, p->err_len, "line %d col %d (byte %zu): %s", line, col,
                 (size_t)(p->s - p->start), msg);
}

static void skip_ws(parser *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(parser *p, unsigned *out) {
    if (p->end - p->s < 4) { fail(p, "truncated \\u escape"); return 0; }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[i]);
        if (h < 0) { fail(p, "bad \\u escape"); return 0; }
        v = v * 16 + (unsigned)h;
    }
    p->s += 4;
    *out = v;
    return 1;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 63));
        o[2] = (char)(0x80 | (cp & 63)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63)); return 4;
}

/* Parses a string literal at p->s (which points at the opening quote). */
static int parse_string(parser *p, char **out, size_t *out_len) {
    p->s++; /* opening quote */
    const char *q = p->s;
    int has_escape = 0;
    while (q < p->end && *q != '"') {
        if (*q == '\\') { has_escape = 1; q++; }
        else if ((unsigned char)*q < 0x20) { p->s = q; fail(p, "control character in string"); return 0; }
        q++;
    }
    if (q >= p->end) { fail(p, "unterminated string"); return 0; }
    size_t raw = (size_t)(q - p->s);
    char *o = arena_alloc(p->doc, raw + 1);
    if (!o) { fail(p, "out of memory"); return 0; }
    if (!has_escape) {
        memcpy(o, p->s, raw);
        o[raw] = 0;
        *out = o;
        *out_len = raw;
        p->s = q + 1;
        return 1;
    }
    size_t n = 0;
    while (p->s < q) {
        char c = *p->s++;
        if (c != '\\') { o[n++] = c; continue; }
        char e = *p->s++;
        switch (e) {
        case '"': o[n++] = '"'; break;
        case '\\': o[n++] = '\\'; break;
        case '/': o[n++] = '/'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'n': o[n++] = '\n'; break;
        case 'r': o[n++] = '\r'; break;
        case 't': o[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!read_hex4(p, &cp)) return 0;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->s + 1 < q && p->s[0] == '\\' && p->s[1] == 'u') {
                    p->s += 2;
                    if (!read_hex4(p, &lo)) return 0;
                    if (lo < 0xDC00 || lo > 0xDFFF) { fail(p, "unpaired surrogate"); return 0; }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    fail(p, "unpaired surrogate");
                    return 0;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                fail(p, "unpaired surrogate");
                return 0;
            }
            n += put_utf8(o + n, cp); /* \uXXXX (6 bytes) never expands past 4 */
            break;
        }
        default: p->s--; fail(p, "bad escape '\\%c'", e); return 0;
        }
    }
    o[n] = 0;
    *out = o;
    *out_len = n;
    p->s = q + 1;
    return 1;
}

static int parse_value(parser *p, json_value *v, int depth);

static int parse_number(parser *p, json_value *v) {
    const char *b = p->s;
    const char *q = p->s;
    if (q < p->end && *q == '-') q++;
    if (q >= p->end || !(*q >= '0' && *q <= '9')) { fail(p, "bad number"); return 0; }
    if (*q == '0') q++;
    else while (q < p->end && *q >= '0' && *q <= '9') q++;
    if (q < p->end && *q == '.') {
        q++;
        if (q >= p->end || !(*q >= '0' && *q <= '9')) { p->s = q; fail(p, "bad number"); return 0; }
        while (q < p->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < p->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < p->end && (*q == '+' || *q == '-')) q++;
        if (q >= p->end || !(*q >= '0' && *q <= '9')) { p->s = q; fail(p, "bad number"); return 0; }
        while (q < p->end && *q >= '0' && *q <= '9') q++;
    }
    char tmp[64];
    size_t n = (size_t)(q - b);
    if (n >= sizeof tmp) { fail(p, "number too long"); return 0; }
    memcpy(tmp, b, n);
    tmp[n] = 0;
    v->type = JSON_NUMBER;
    v->u.number = strtod(tmp, NULL);
    p->s = q;
    return 1;
}

static int expect_word(parser *p, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(p->end - p->s) < n || memcmp(p->s, w, n) != 0) { fail(p, "unexpected token"); return 0; }
    p->s += n;
    return 1;
}

static int parse_array(parser *p, json_value *v, int depth) {
    p->s++;
    size_t n = 0, cap = 0;
    json_value *tmp = NULL;
    skip_ws(p);
    if (p->s < p->end && *p->s == ']') { p->s++; goto done; }
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            json_value *t = realloc(tmp, cap * sizeof *tmp);
            if (!t) { fail(p, "out of memory"); goto fail; }
            tmp = t;
        }
        skip_ws(p);
        if (!parse_value(p, &tmp[n], depth + 1)) goto fail;
        n++;
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') { p->s++; continue; }
        if (p->s < p->end && *p->s == ']') { p->s++; break; }
        fail(p, "expected ',' or ']'");
        goto fail;
    }
done:
    v->type = JSON_ARRAY;
    v->u.arr.n = n;
    v->u.arr.items = NULL;
    if (n) {
        v->u.arr.items = arena_alloc(p->doc, n * sizeof *tmp);
        if (!v->u.arr.items) { fail(p, "out of memory"); goto fail; }
        memcpy(v->u.arr.items, tmp, n * sizeof *tmp);
    }
    free(tmp);
    return 1;
fail:
    free(tmp);
    return 0;
}

static int parse_object(parser *p, json_value *v, int depth) {
    p->s++;
    size_t n = 0, cap = 0;
    json_member *tmp = NULL;
    skip_ws(p);
    if (p->s < p->end && *p->s == '}') { p->s++; goto done; }
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            json_member *t = realloc(tmp, cap * sizeof *tmp);
            if (!t) { fail(p, "out of memory"); goto fail; }
            tmp = t;
        }
        skip_ws(p);
        if (p->s >= p->end || *p->s != '"') { fail(p, "expected a string key"); goto fail; }
        if (!parse_string(p, &tmp[n].key, &tmp[n].key_len)) goto fail;
        skip_ws(p);
        if (p->s >= p->end || *p->s != ':') { fail(p, "expected ':'"); goto fail; }
        p->s++;
        skip_ws(p);
        if (!parse_value(p, &tmp[n].value, depth + 1)) goto fail;
        n++;
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') { p->s++; continue; }
        if (p->s < p->end && *p->s == '}') { p->s++; break; }
        fail(p, "expected ',' or '}'");
        goto fail;
    }
done:
    v->type = JSON_OBJECT;
    v->u.obj.n = n;
    v->u.obj.members = NULL;
    if (n) {
        v->u.obj.members = arena_alloc(p->doc, n * sizeof *tmp);
        if (!v->u.obj.members) { fail(p, "out of memory"); goto fail; }
        memcpy(v->u.obj.members, tmp, n * sizeof *tmp);
    }
    free(tmp);
    return 1;
fail:
    free(tmp);
    return 0;
}

static int parse_value(parser *p, json_value *v, int depth) {
    if (depth > JSON_MAX_DEPTH) { fail(p, "nesting deeper than %d", JSON_MAX_DEPTH); return 0; }
    skip_ws(p);
    if (p->s >= p->end) { fail(p, "unexpected end of input"); return 0; }
    switch (*p->s) {
    case '{': return parse_object(p, v, depth);
    case '[': return parse_array(p, v, depth);
    case '"':
        v->type = JSON_STRING;
        return parse_string(p, &v->u.str.s, &v->u.str.len);
    case 't': v->type = JSON_BOOL; v->u.boolean = 1; return expect_word(p, "true");
    case 'f': v->type = JSON_BOOL; v->u.boolean = 0; return expect_word(p, "false");
    case 'n': v->type = JSON_NULL; return expect_word(p, "null");
    default: return parse_number(p, v);
    }
}

json_doc *json_parse(const char *text, size_t len, char *err, size_t err_len) {
    json_doc *d = calloc(1, sizeof *d);
    if (!d) {
        if (err && err_len) snprintf(err, err_len, "out of memory");
        return NULL;
    }
    parser p = { text, text + len, text, d, err, err_len, 0 };
    if (parse_value(&p, &d->root, 0)) {
        skip_ws(&p);
        if (p.s != p.end) fail(&p, "trailing characters after the JSON value");
    }
    if (p.failed) { json_free(d); return NULL; }
    return d;
}

const json_value *json_root(const json_doc *doc) { return doc ? &doc->root : NULL; }

void json_free(json_doc *doc) {
    if (!doc) return;
    arena_block *b = doc->blocks;
    while (b) { arena_block *n = b->next; free(b); b = n; }
    free(doc);
}

const json_value *json_get(const json_value *v, const char *key) {
    if (!v || v->type != JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < v->u.obj.n; i++) {
        const json_member *m = &v->u.obj.members[i];
        if (m->key_len == kl && memcmp(m->key, key, kl) == 0) return &m->value;
    }
    return NULL;
}

const json_value *json_path(const json_value *v, const char *dotted) {
    char key[256];
    while (v && *dotted) {
        const char *dot = strchr(dotted, '.');
        size_t n = dot ? (size_t)(dot - dotted) : strlen(dotted);
        if (n >= sizeof key) return NULL;
        memcpy(key, dotted, n);
        key[n] = 0;
        v = json_get(v, key);
        dotted += n + (dot ? 1 : 0);
    }
    return v;
}

int json_get_num(const json_value *obj, const char *key, double *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type != JSON_NUMBER) return 0;
    *out = v->u.number;
    return 1;
}

const char *json_type_name(const json_value *v) {
    if (!v) return "missing";
    switch (v->type) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

/* Writes d to buf in the shortest %g form that reads back as d; returns buf. */
static char *fmt_num(char *buf, size_t cap, double d) {
    if (isnan(d)) snprintf(buf, cap, "nan");
    else if (isinf(d)) snprintf(buf, cap, "%s", d < 0 ? "a negative number too large for a double" : "a number too large for a double");
    else {
        snprintf(buf, cap, "%.15g", d);
        if (strtod(buf, NULL) != d) snprintf(buf, cap, "%.17g", d);
    }
    return buf;
}

int json_to_num(const json_value *v, double lo, double hi, double *out, char *why, size_t cap) {
    char a[64], b[32], c[32];
    if (!v || v->type != JSON_NUMBER) {
        snprintf(why, cap, "is %s, not a number", json_type_name(v));
        return 0;
    }
    double d = v->u.number;
    if (!(d >= lo && d <= hi)) { /* also NaN and +-inf */
        snprintf(why, cap, "%s is outside [%s, %s]", fmt_num(a, sizeof a, d), fmt_num(b, sizeof b, lo),
                 fmt_num(c, sizeof c, hi));
        return 0;
    }
    *out = d;
    return 1;
}

int json_to_int(const json_value *v, int64_t lo, int64_t hi, int64_t *out, char *why, size_t cap) {
    if (lo < -JSON_MAX_EXACT_INT) lo = -JSON_MAX_EXACT_INT;
    if (hi > JSON_MAX_EXACT_INT) hi = JSON_MAX_EXACT_INT;
    double d;
    if (!json_to_num(v, (double)lo, (double)hi, &d, why, cap)) return 0;  /* exact: |lo|, |hi| < 2^53 */
    if (d != floor(d)) {
        char a[64];
        snprintf(why, cap, "%s is not an integer", fmt_num(a, sizeof a, d));
        return 0;
    }
    *out = (int64_t)d;  /* in range: checked above */
    return 1;
}

int json_get_bool(const json_value *obj, const char *key, int *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type != JSON_BOOL) return 0;
    *out = v->u.boolean;
    return 1;
}

const char *json_get_str(const json_value *obj, const char *key) {
    const json_value *v = json_get(obj, key);
    return v && v->type == JSON_STRING ? v->u.str.s : NULL;
}

size_t json_escape(char *buf, size_t cap, const char *s, size_t len) {
    size_t n = 0;
#define PUT(c) do { if (n < cap) buf[n] = (c); n++; } while (0)
    PUT('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': PUT('\\'); PUT('"'); break;
        case '\\': PUT('\\'); PUT('\\'); break;
        case '\n': PUT('\\'); PUT('n'); break;
        case '\r': PUT('\\'); PUT('r'); break;
        case '\t': PUT('\\'); PUT('t'); break;
        default:
            if (c < 0x20) {
                char tmp[8];
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                for (int k = 0; tmp[k]; k++) PUT(tmp[k]);
            } else {
                PUT((char)c);
            }
        }
    }
    PUT('"');
    if (n < cap) buf[n] = 0; else if (cap) buf[cap - 1] = 0;
#undef PUT
    return n;
}
