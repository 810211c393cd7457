/* fuzz-json.c - the JSON reader on arbitrary bytes: parses them, then walks the whole
 * tree through every accessor (json_get, json_path, the typed getters, the checked
 * number conversions) and checks that each string survives json_escape and a second
 * parse byte for byte. A broken invariant traps. */
#include "json.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Escapes s[0..len), parses the literal back and traps unless the bytes come back. */
static void round_trip(const char *s, size_t len) {
    size_t need = json_escape(NULL, 0, s, len);
    char *buf = malloc(need + 1);
    if (!buf) return;
    if (json_escape(buf, need + 1, s, len) != need) __builtin_trap();
    json_doc *d = json_parse(buf, need, NULL, 0);
    const json_value *v = json_root(d);
    if (!d || v->type != JSON_STRING || v->u.str.len != len || memcmp(v->u.str.s, s, len) != 0 || v->u.str.s[len])
        __builtin_trap();
    json_free(d);
    free(buf);
}

/* Checks the number conversions of v against their contracts. */
static void numbers(const json_value *v) {
    char why[160];
    int64_t i;
    double d;
    if (json_to_int(v, INT64_MIN, INT64_MAX, &i, why, sizeof why)) {
        if (i < -JSON_MAX_EXACT_INT || i > JSON_MAX_EXACT_INT || (double)i != v->u.number) __builtin_trap();
    } else if (!why[0]) {
        __builtin_trap();
    }
    if (json_to_int(v, 0, 1 << 30, &i, why, sizeof why) && (i < 0 || i > (1 << 30))) __builtin_trap();
    if (json_to_int(v, -5, -5, &i, why, sizeof why) && i != -5) __builtin_trap();
    if (json_to_num(v, -FLT_MAX, FLT_MAX, &d, why, sizeof why) && !(d >= -FLT_MAX && d <= FLT_MAX)) __builtin_trap();
}

/* Visits v and everything under it; root is the document's root for json_path. */
static void walk(const json_value *v, const json_value *root) {
    switch (v->type) {
    case JSON_NUMBER: numbers(v); break;
    case JSON_STRING:
        if (v->u.str.s[v->u.str.len]) __builtin_trap();   /* NUL-terminated */
        if (v->u.str.len < 4096) round_trip(v->u.str.s, v->u.str.len);
        break;
    case JSON_ARRAY:
        for (size_t i = 0; i < v->u.arr.n; i++) walk(&v->u.arr.items[i], root);
        break;
    case JSON_OBJECT:
        for (size_t i = 0; i < v->u.obj.n; i++) {
            const json_member *m = &v->u.obj.members[i];
            if (m->key[m->key_len]) __builtin_trap();
            if (strlen(m->key) == m->key_len) {
                const json_value *g = json_get(v, m->key);   /* the first member of that name */
                if (!g || (g != &m->value && g > &m->value)) __builtin_trap();
                double d;
                int b;
                const char *s = json_get_str(v, m->key);
                if (json_get_num(v, m->key, &d) != (g->type == JSON_NUMBER)) __builtin_trap();
                if (json_get_bool(v, m->key, &b) != (g->type == JSON_BOOL)) __builtin_trap();
                if ((s != NULL) != (g->type == JSON_STRING)) __builtin_trap();
                (void)json_path(root, m->key);
            }
            walk(&m->value, root);
        }
        break;
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[200] = "";
    json_doc *d = json_parse((const char *)data, size, err, sizeof err);
    if (!d) {
        if (!strstr(err, "byte ") && !strstr(err, "out of memory")) __builtin_trap();   /* errors give the place */
        return 0;
    }
    const json_value *root = json_root(d);
    walk(root, root);
    json_free(d);
    return 0;
}
