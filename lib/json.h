/* json.h - a small, strict JSON reader shared by config.json, the safetensors
 * header, model.safetensors.index.json and tokenizer.json. Internal to libglm.
 * One parse allocates one arena; json_free releases everything at once. */
#ifndef GLM_JSON_H
#define GLM_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT
} json_type;

typedef struct json_value json_value;
typedef struct json_member json_member;

struct json_value {
    json_type type;
    union {
        int boolean;
        double number;
        struct { char *s; size_t len; } str;          /* NUL-terminated, may hold NULs */
        struct { json_value *items; size_t n; } arr;
        struct { json_member *members; size_t n; } obj; /* in document order */
    } u;
};

struct json_member {
    char *key;
    size_t key_len;
    json_value value;
};

typedef struct json_doc json_doc;

/* Parses text[0..len). Returns NULL on error and writes "line L col C (byte B): why" to err. */
json_doc *json_parse(const char *text, size_t len, char *err, size_t err_len);
/* The document's root value. */
const json_value *json_root(const json_doc *doc);
void json_free(json_doc *doc);

/* The member value of an object named key, or NULL (also when v is not an object). */
const json_value *json_get(const json_value *v, const char *key);
/* Walks a dotted path of object keys ("quantization_config.weight_block_size"); NULL if absent. */
const json_value *json_path(const json_value *v, const char *dotted);
/* Typed accessors: return 1 and set *out when present with the right type, else 0. */
int json_get_num(const json_value *obj, const char *key, double *out);
int json_get_bool(const json_value *obj, const char *key, int *out);
/* The string member, or NULL when absent or not a string. */
const char *json_get_str(const json_value *obj, const char *key);

/* The largest integer a JSON number (an IEEE double) holds exactly: 2^53 - 1. */
#define JSON_MAX_EXACT_INT 9007199254740991LL

/* Checked conversions of a number value, the only way a JSON number should become an
 * integer or a narrower type: each returns 1 and sets *out when v is a number within
 * [lo, hi] (and, for json_to_int, integral; bounds are clamped to +-JSON_MAX_EXACT_INT),
 * else 0 with why[cap] saying what is wrong ("1e+20 is outside [0, 1073741824]",
 * "1.5 is not an integer", "is a string, not a number") for a message naming the field. */
int json_to_int(const json_value *v, int64_t lo, int64_t hi, int64_t *out, char *why, size_t cap);
int json_to_num(const json_value *v, double lo, double hi, double *out, char *why, size_t cap);
/* The name of a value's type for messages: "a string", "an array", ... */
const char *json_type_name(const json_value *v);

/* Appends s as a JSON string literal (quoted, escaped) to buf; returns bytes that
 * would be written (like snprintf). Used by writers of JSON output. */
size_t json_escape(char *buf, size_t cap, const char *s, size_t len);

#endif
