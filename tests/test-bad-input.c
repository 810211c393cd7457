/* test-bad-input.c - every kind of broken checkpoint is a clear error naming the file
 * and the tensor or field, with the right status, never a crash: truncated shards, bad
 * header lengths, numbers out of range, offsets outside the file or overlapping, unknown
 * dtypes, shapes that disagree with config.json, missing shards and tensors, bad index
 * files, every relation config.json must satisfy, missing directories. Also checks that
 * the tools exit non-zero with the message. */
#include "glm.h"
#include "internal.h"
#include "json.h"
#include "test.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define tmp test_tmp

/* Runs a shell command; each %s in fmt (at most two) stands for dir. */
static void sh(const char *fmt, const char *dir) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, dir, dir);
    if (system(cmd) != 0) fprintf(stderr, "  command failed: %s\n", cmd);
}

/* Copies tests/data/<src> to a fresh tmp/<name>; returns the path. */
static const char *fresh(const char *src, const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r 'tests/data/%s' '%s'", path, src, path);
    if (system(cmd) != 0) fprintf(stderr, "  cannot copy %s\n", src);
    return path;
}

/* Loads dir, expects the status `status`, and checks that the message contains each of
 * the NULL-terminated needles. */
static void expect_fail_v(const char *dir, int status, const char *const *needles) {
    glm_model *m = NULL;
    int rc = glm_model_load(dir, NULL, &m);
    const char *e = glm_last_error();
    fprintf(stderr, "  %s -> %s (%s)\n", dir, e, glm_status_str(rc));
    CHECK_MSG(rc == status, "status %d (%s), expected %d (%s)", rc, glm_status_str(rc), status, glm_status_str(status));
    CHECK(m == NULL);
    for (; *needles; needles++) CHECK_MSG(strstr(e, *needles) != NULL, "message lacks '%s'", *needles);
    glm_model_free(m);
}
#define expect_fail(dir, status, ...) expect_fail_v((dir), (status), (const char *const[]){__VA_ARGS__, NULL})

/* Writes a single-file safetensors with the given header JSON and n data bytes. */
static void write_st(const char *dir, const char *header, size_t n_data) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    uint64_t hl = strlen(header);
    fwrite(&hl, 8, 1, f);
    fwrite(header, 1, hl, f);
    for (size_t i = 0; i < n_data; i++) fputc(0x11, f);
    fclose(f);
}

/* Copies tests/data/<src> to tmp/<name>, edits the copy with the shell command edit
 * (as sh runs it); returns the copy's path. */
static const char *edited(const char *src, const char *name, const char *edit) {
    const char *d = fresh(src, name);
    sh(edit, d);
    return d;
}

/* A directory with the tiny bf16 config and a hand-made weights file. */
static const char *st_case(const char *name, const char *header, size_t n_data) {
    const char *d = fresh("tiny-bf16", name);
    write_st(d, header, n_data);
    return d;
}

/* Sets field key of dir/config.json (a top-level key, or a key of the first object that
 * holds it) to the JSON text value, replacing the old value whole (arrays and objects
 * included); value NULL removes the field. Adds the field when absent. */
static void set_field(const char *dir, const char *key, const char *value) {
    char path[512], pat[128], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(pat, sizeof pat, "\"%s\":", key);
    if (glm_read_file(path, &text, &len) != GLM_OK) { CHECK_MSG(0, "cannot read %s", path); return; }
    char *k = strstr(text, pat), *v0, *v1;
    if (!k) {  /* absent: insert after the opening brace */
        v0 = v1 = strchr(text, '{') + 1;
        char add[512];
        snprintf(add, sizeof add, "\"%s\": %s,", key, value ? value : "null");
        value = add;
        FILE *f = fopen(path, "wb");
        fprintf(f, "%.*s%s%s", (int)(v0 - text), text, value, v1);
        fclose(f);
        free(text);
        return;
    }
    v0 = k + strlen(pat);
    while (*v0 == ' ') v0++;
    int depth = 0, in_str = 0;
    for (v1 = v0; *v1; v1++) {   /* the end of the value: a ',' or '}' at depth 0 */
        if (in_str) { if (*v1 == '\\') v1++; else if (*v1 == '"') in_str = 0; continue; }
        if (*v1 == '"') in_str = 1;
        else if (*v1 == '[' || *v1 == '{') depth++;
        else if ((*v1 == ']' || *v1 == '}') && depth > 0) depth--;
        else if ((*v1 == ',' || *v1 == '}' || *v1 == '\n') && depth == 0) break;
    }
    FILE *f = fopen(path, "wb");
    if (value) fprintf(f, "%.*s%s%s", (int)(v0 - text), text, value, v1);
    else fprintf(f, "%.*snull%s", (int)(v0 - text), text, v1);   /* null reads as absent */
    fclose(f);
    free(text);
}

/* A copy of tiny-bf16 with config.json's field key set to value (the weights file a
 * symbolic link to the original, which no config case writes); returns its path. */
static const char *cfg_case(const char *name, const char *key, const char *value) {
    static char d[512];
    char cmd[4096], *cwd = getcwd(NULL, 0);
    snprintf(d, sizeof d, "%s/%s", tmp, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir '%s' && cp tests/data/tiny-bf16/config.json '%s/' && "
             "ln -s '%s/tests/data/tiny-bf16/model.safetensors' '%s/'", d, d, d, cwd, d);
    free(cwd);
    if (system(cmd) != 0) fprintf(stderr, "  cannot make %s\n", d);
    set_field(d, key, value);
    return d;
}

/* A synthetic 2-layer checkpoint (BF16) of the tiny preset as edit(hp) changes it, in
 * tmp/<name>: tensors whose shapes agree with the config, so only the config checks
 * stand between it and the engine. Returns its path. */
static const char *synth_case(const char *name, void (*edit)(glm_hparams *hp)) {
    static char d[512];
    char cmd[1100];
    glm_hparams hp;
    snprintf(d, sizeof d, "%s/%s", tmp, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) fprintf(stderr, "  cannot remove %s\n", d);
    CHECK(glm_preset("tiny", 2, &hp) == GLM_OK);
    edit(&hp);
    CHECK_MSG(glm_synthetic_write(&hp, GLM_FMT_BF16, d, 1, NULL, NULL) == GLM_OK, "%s", glm_last_error());
    return d;
}

/* Rewrites dir/file with tensor `name` replaced by a zero-filled one of dtype and shape
 * [d0] (n_dims 1), [d0, d1] (n_dims 2) or [1, d0, d1] (n_dims 3); added when absent,
 * dropped when n_dims < 0. Every other tensor keeps its bytes. */
static void edit_tensor(const char *dir, const char *file, const char *name, glm_dtype dtype, int n_dims,
                        int64_t d0, int64_t d1) {
    char path[512], out[600];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(out, sizeof out, "%s.new", path);
    glm_st_set *s = NULL;
    if (glm_st_open_file(path, &s) != GLM_OK) { CHECK_MSG(0, "cannot open %s: %s", path, glm_last_error()); return; }
    glm_st_writer *w = glm_st_writer_new();
    int found = 0;
    for (size_t i = 0; i < glm_st_count(s); i++) {
        const glm_st_tensor *t = glm_st_at(s, i);
        if (strcmp(t->name, name) == 0) { found = 1; continue; }
        CHECK(glm_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data, t->end - t->begin) == GLM_OK);
    }
    (void)found;
    void *zeros = NULL;
    if (n_dims >= 0) {
        int64_t shape[3] = { d0, d1, 0 };
        if (n_dims == 3) { shape[0] = 1; shape[1] = d0; shape[2] = d1; }
        size_t nb = glm_dtype_size(dtype);
        for (int d = 0; d < n_dims; d++) nb *= (size_t)shape[d];
        zeros = calloc(1, nb + 1);
        CHECK(glm_st_writer_add(w, name, dtype, n_dims, shape, zeros, nb) == GLM_OK);
    }
    CHECK(glm_st_writer_write(w, out) == GLM_OK);
    glm_st_writer_free(w);
    glm_st_close(s);
    free(zeros);
    CHECK(rename(out, path) == 0);
}

/* A copy of tests/data/<src> with one tensor of `file` edited as edit_tensor does. */
static const char *tensor_case(const char *src, const char *name, const char *file, const char *tensor,
                               glm_dtype dtype, int n_dims, int64_t d0, int64_t d1) {
    const char *d = fresh(src, name);
    edit_tensor(d, file, tensor, dtype, n_dims, d0, d1);
    return d;
}

/* ---- safetensors files ---- */

TEST(truncated_shard) {
    const char *d = fresh("tiny-fp8ch", "truncated");
    char path[512];
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", d);
    struct stat st;
    stat(path, &st);
    CHECK(truncate(path, st.st_size - 1000) == 0);
    expect_fail(d, GLM_ERR_FORMAT, "model-00002-of-00002.safetensors", "past the end of the file");
}

TEST(file_too_short) {
    expect_fail(edited("tiny-bf16", "short", "truncate -s 5 '%s/model.safetensors'"), GLM_ERR_FORMAT,
                "model.safetensors", "too short");
}

TEST(header_length_past_end) {
    const char *d = fresh("tiny-bf16", "hdrlen");
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    FILE *f = fopen(path, "r+b");
    uint64_t huge = 1ull << 40;
    fwrite(&huge, 8, 1, f);
    fclose(f);
    expect_fail(d, GLM_ERR_FORMAT, "model.safetensors", "header length");
}

TEST(bad_header_json) {
    expect_fail(st_case("json", "{\"model.norm.weight\":{\"dtype\":\"F32\",", 16), GLM_ERR_FORMAT,
                "model.safetensors", "header JSON");
}

TEST(header_not_object) {
    expect_fail(st_case("hdrarr", "[1, 2]", 0), GLM_ERR_FORMAT, "model.safetensors", "not a JSON object");
}

TEST(tensor_entry_incomplete) {
    expect_fail(st_case("entry", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), GLM_ERR_FORMAT,
                "model.safetensors", "'a'", "needs dtype, shape and data_offsets[2]");
    expect_fail(st_case("entry3", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8),
                GLM_ERR_FORMAT, "'a'", "data_offsets[2]");
    expect_fail(st_case("entryobj", "{\"a\":[\"F32\"]}", 8), GLM_ERR_FORMAT, "'a'", "needs dtype");
}

TEST(name_with_nul) {
    expect_fail(st_case("nul", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                GLM_ERR_FORMAT, "model.safetensors", "NUL");
}

TEST(unknown_dtype) {
    expect_fail(st_case("dtype", "{\"model.norm.weight\":{\"dtype\":\"Q4_K\",\"shape\":[160],\"data_offsets\":[0,320]}}", 320),
                GLM_ERR_FORMAT, "model.safetensors", "model.norm.weight", "unknown dtype 'Q4_K'");
}

TEST(too_many_dims) {
    expect_fail(st_case("dims5", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4),
                GLM_ERR_FORMAT, "'a'", "5 dimensions");
}

/* Shape entries that are not sizes: each is named with its index and value. */
TEST(bad_shape_entries) {
    static const struct { const char *shape, *needle; } c[] = {
        {"[1e300]", "shape[0] 1e+300 is outside [0, 9007199254740991]"},
        {"[160, 1e30]", "shape[1] 1e+30 is outside"},
        {"[-160]", "shape[0] -160 is outside"},
        {"[1.5]", "shape[0] 1.5 is not an integer"},
        {"[\"160\"]", "shape[0] is a string, not a number"},
        {"[1e999]", "shape[0] a number too large for a double is outside"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char h[256];
        snprintf(h, sizeof h, "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":%s,\"data_offsets\":[0,320]}}", c[i].shape);
        expect_fail(st_case("shape-entry", h, 320), GLM_ERR_FORMAT, "model.safetensors", "model.norm.weight", c[i].needle);
    }
}

/* Offsets that are not byte positions: named with the value. */
TEST(bad_data_offsets) {
    static const struct { const char *offs, *needle; } c[] = {
        {"[0, 1e30]", "1e+30 is outside"},
        {"[1e300, 1e300]", "1e+300 is outside"},
        {"[-2, 318]", "-2 is outside"},
        {"[0.5, 320.5]", "0.5 is not an integer"},
        {"[0, null]", "null, not a number"},
        {"[320, 0]", "end before they begin"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char h[256];
        snprintf(h, sizeof h, "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":%s}}", c[i].offs);
        expect_fail(st_case("offs-entry", h, 320), GLM_ERR_FORMAT, "model.safetensors", "model.norm.weight", c[i].needle);
    }
}

TEST(offsets_outside_file) {
    expect_fail(st_case("offs", "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320000]}}", 320),
                GLM_ERR_FORMAT, "model.safetensors", "model.norm.weight", "past the end");
}

TEST(size_disagrees_with_shape) {
    expect_fail(st_case("size", "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[160],\"data_offsets\":[0,320]}}", 320),
                GLM_ERR_FORMAT, "model.safetensors", "model.norm.weight", "needs 640");
}

/* [2^32, 2^32] BF16 is 2^65 bytes: the element count must not wrap to 0 and match [0, 0]. */
TEST(shape_bytes_overflow) {
    expect_fail(st_case("numel", "{\"big\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0),
                GLM_ERR_FORMAT, "model.safetensors", "'big'", "more than 2^64 bytes");
    expect_fail(st_case("numel4", "{\"big\":{\"dtype\":\"I64\",\"shape\":[65536,65536,65536,65536],\"data_offsets\":[0,0]}}", 0),
                GLM_ERR_FORMAT, "'big'", "more than 2^64 bytes");
}

TEST(overlapping_offsets) {
    expect_fail(st_case("overlap", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320]},"
                                   "\"b\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[100,420]}}", 420),
                GLM_ERR_FORMAT, "model.safetensors", "'a' and 'b' overlap at byte");
}

/* An empty tensor between two overlapping ones must not hide the overlap, nor may a
 * short tensor sorted between them (each is compared with the furthest end so far). */
TEST(overlap_behind_empty_or_short_tensor) {
    expect_fail(st_case("overlap0", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320]},"
                                    "\"z\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[100,100]},"
                                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[200,520]}}", 520),
                GLM_ERR_FORMAT, "model.safetensors", "'a' and 'b' overlap at byte");
    expect_fail(st_case("overlap1", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320]},"
                                    "\"s\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[10,14]},"
                                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[200,520]}}", 520),
                GLM_ERR_FORMAT, "model.safetensors", "'a' and 's' overlap at byte");
}

/* Empty tensors hold no bytes: they may sit anywhere, even inside another tensor. */
TEST(empty_tensors_do_not_overlap) {
    const char *d = st_case("empty-ok", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320]},"
                                        "\"z\":{\"dtype\":\"BF16\",\"shape\":[4,0],\"data_offsets\":[100,100]},"
                                        "\"y\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[320,320]}}", 320);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    glm_st_set *s = NULL;
    CHECK_MSG(glm_st_open_file(path, &s) == GLM_OK, "%s", glm_last_error());
    if (s) CHECK(glm_st_count(s) == 3 && glm_st_find(s, "z") != NULL);
    glm_st_close(s);
}

TEST(duplicate_tensor_name) {
    expect_fail(st_case("dup", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                               "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]}}", 8),
                GLM_ERR_FORMAT, "model.safetensors", "'a' appears twice");
    /* the same tensor in two shards */
    expect_fail(tensor_case("tiny-fp8ch", "dup2", "model-00001-of-00002.safetensors", "model.norm.weight", GLM_DT_BF16, 1, 160, 0),
                GLM_ERR_FORMAT, "model-0000", "'model.norm.weight' appears twice");
}

TEST(weights_file_not_regular) {
    expect_fail(edited("tiny-bf16", "notreg", "rm '%s/model.safetensors' && mkdir '%s/model.safetensors'"), GLM_ERR_IO,
                "model.safetensors", "not a regular file");
}

TEST(no_weights) {
    expect_fail(edited("tiny-bf16", "noweights", "rm '%s/model.safetensors'"), GLM_ERR_IO,
                "no model.safetensors or model.safetensors.index.json");
}

/* ---- model.safetensors.index.json ---- */

TEST(missing_shard) {
    expect_fail(edited("tiny-fp8blk", "noshard", "rm '%s/model-00002-of-00002.safetensors'"), GLM_ERR_IO,
                "model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing");
}

TEST(index_names_wrong_shard) {
    /* point model.norm.weight at the other shard */
    expect_fail(edited("tiny-fp8ch", "wrongshard",
                       "sed -i -e 's/\\(\"model.norm.weight\": \"model-0000\\)1/\\12/;t' -e 's/\\(\"model.norm.weight\": \"model-0000\\)2/\\11/' "
                       "'%s/model.safetensors.index.json'"),
                GLM_ERR_FORMAT, "model.safetensors.index.json", "model.norm.weight", "is listed in");
}

TEST(index_lists_absent_tensor) {
    expect_fail(edited("tiny-fp8ch", "ghost",
                       "sed -i 's/\"weight_map\": {/\"weight_map\": {\"ghost.weight\": \"model-00001-of-00002.safetensors\",/' "
                       "'%s/model.safetensors.index.json'"),
                GLM_ERR_FORMAT, "model.safetensors.index.json", "'ghost.weight' is listed but not in", "model-00001-of-00002");
}

/* Shard names must be plain file names in the model folder, given as strings. */
TEST(index_bad_shard_names) {
    static const struct { const char *value, *needle; } c[] = {
        {"5", "is a number, not a file name"},
        {"null", "is null, not a file name"},
        {"[\"model-00001-of-00002.safetensors\"]", "is an array, not a file name"},
        {"\"..\"", "'..' is not a file name in the folder"},
        {"\".\"", "'.' is not a file name in the folder"},
        {"\"\"", "'' is not a file name in the folder"},
        {"\"../tiny-fp8ch/model-00002-of-00002.safetensors\"", "is not a file name in the folder"},
        {"\"/etc/passwd\"", "is not a file name in the folder"},
        {"\"model-00002-of-00002.safetensors\\u0000x\"", "is not a file name in the folder"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char edit[512];
        snprintf(edit, sizeof edit, "sed -i 's|\"model.norm.weight\": \"model-00002-of-00002.safetensors\"|"
                                    "\"model.norm.weight\": %s|' '%%s/model.safetensors.index.json'", c[i].value);
        for (char *q = edit; (q = strstr(q, "\\u")); q += 2) memmove(q + 1, q, strlen(q) + 1);  /* sed eats one backslash */
        expect_fail(edited("tiny-fp8ch", "shardname", edit), GLM_ERR_FORMAT,
                    "model.safetensors.index.json", "'model.norm.weight'", c[i].needle);
    }
}

/* A shard name longer than any path: an error, not a truncated path naming another file. */
TEST(index_shard_name_too_long) {
    const char *d = fresh("tiny-fp8ch", "longshard");
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", d);
    FILE *f = fopen(path, "wb");
    fprintf(f, "{\"weight_map\": {\"model.norm.weight\": \"");
    for (int i = 0; i < 5000; i++) fputc('x', f);
    fprintf(f, "\"}}");
    fclose(f);
    expect_fail(d, GLM_ERR_FORMAT, "model.safetensors.index.json", "'model.norm.weight': 'xxxx", "is not a file name in the folder");
}

TEST(index_shard_is_directory) {
    expect_fail(edited("tiny-fp8ch", "sharddir",
                       "rm '%s/model-00002-of-00002.safetensors' && mkdir '%s/model-00002-of-00002.safetensors'"),
                GLM_ERR_IO, "model-00002-of-00002.safetensors", "not a regular file");
}

TEST(index_without_weight_map) {
    expect_fail(edited("tiny-fp8ch", "nomap", "sed -i 's/\"weight_map\"/\"weight_mop\"/' '%s/model.safetensors.index.json'"),
                GLM_ERR_FORMAT, "model.safetensors.index.json", "no \"weight_map\" object");
    expect_fail(edited("tiny-fp8ch", "maparr", "echo '{\"weight_map\": []}' > '%s/model.safetensors.index.json'"),
                GLM_ERR_FORMAT, "model.safetensors.index.json", "no \"weight_map\" object");
    expect_fail(edited("tiny-fp8ch", "idxarr", "echo '[]' > '%s/model.safetensors.index.json'"),
                GLM_ERR_FORMAT, "model.safetensors.index.json", "no \"weight_map\" object");
}

TEST(index_bad_json) {
    expect_fail(edited("tiny-fp8ch", "idxjson", "echo '{\"weight_map\": {' > '%s/model.safetensors.index.json'"),
                GLM_ERR_FORMAT, "model.safetensors.index.json", "line 2");
}

/* ---- the checked number conversions every parser uses ---- */

/* Parses text (one JSON value) and converts it with json_to_int(lo, hi); returns the
 * result (1 converted) and writes the value or the reason. */
static int to_int(const char *text, int64_t lo, int64_t hi, int64_t *out, char *why, size_t cap) {
    char err[200];
    json_doc *d = json_parse(text, strlen(text), err, sizeof err);
    CHECK_MSG(d != NULL, "%s: %s", text, err);
    if (!d) return 0;
    why[0] = 0;
    int ok = json_to_int(json_root(d), lo, hi, out, why, cap);
    json_free(d);
    return ok;
}

TEST(json_number_conversions) {
    static const struct { const char *text; int64_t lo, hi; int ok; int64_t want; const char *why; } c[] = {
        {"0", 0, 10, 1, 0, ""},
        {"-0", 0, 10, 1, 0, ""},
        {"10", 0, 10, 1, 10, ""},
        {"11", 0, 10, 0, 0, "11 is outside [0, 10]"},
        {"-1", 0, 10, 0, 0, "-1 is outside [0, 10]"},
        {"2.0", 0, 10, 1, 2, ""},
        {"2e0", 0, 10, 1, 2, ""},
        {"2.5", 0, 10, 0, 0, "2.5 is not an integer"},
        {"1e-300", 0, 10, 0, 0, "1e-300 is not an integer"},
        {"9007199254740991", 0, INT64_MAX, 1, 9007199254740991LL, ""},
        {"-9007199254740991", INT64_MIN, 0, 1, -9007199254740991LL, ""},
        {"9007199254740992", 0, INT64_MAX, 0, 0, "9007199254740992 is outside [0, 9007199254740991]"},
        {"9007199254740993", 0, INT64_MAX, 0, 0, "is outside"},   /* reads as 2^53: not exact */
        {"9223372036854775807", INT64_MIN, INT64_MAX, 0, 0, "is outside"},
        {"1e20", 0, INT64_MAX, 0, 0, "1e+20 is outside"},
        {"1e999", 0, INT64_MAX, 0, 0, "a number too large for a double is outside"},
        {"-1e999", INT64_MIN, INT64_MAX, 0, 0, "a negative number too large for a double is outside"},
        {"\"5\"", 0, 10, 0, 0, "is a string, not a number"},
        {"null", 0, 10, 0, 0, "is null, not a number"},
        {"[5]", 0, 10, 0, 0, "is an array, not a number"},
        {"{}", 0, 10, 0, 0, "is an object, not a number"},
        {"true", 0, 10, 0, 0, "is a boolean, not a number"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int64_t v = -7;
        char why[160];
        int ok = to_int(c[i].text, c[i].lo, c[i].hi, &v, why, sizeof why);
        CHECK_MSG(ok == c[i].ok, "%s: converted %d (%s)", c[i].text, ok, why);
        if (ok) CHECK_MSG(v == c[i].want, "%s: %lld", c[i].text, (long long)v);
        else CHECK_MSG(v == -7 && strstr(why, c[i].why), "%s: '%s' lacks '%s'", c[i].text, why, c[i].why);
    }
    /* json_to_num: within the bounds, NaN-free, a wrong type named */
    char err[200], why[160];
    double d = 0;
    const char *text = "[0.5, 1e39, \"x\"]";
    json_doc *doc = json_parse(text, strlen(text), err, sizeof err);
    CHECK(doc != NULL);
    if (doc) {
        const json_value *a = json_root(doc);
        CHECK(json_to_num(&a->u.arr.items[0], 0, 1, &d, why, sizeof why) && d == 0.5);
        CHECK(!json_to_num(&a->u.arr.items[1], -3.4e38, 3.4e38, &d, why, sizeof why) && strstr(why, "1e+39 is outside"));
        CHECK(!json_to_num(&a->u.arr.items[2], 0, 1, &d, why, sizeof why) && strstr(why, "is a string, not a number"));
    }
    json_free(doc);
}

/* ---- config.json: syntax, types and numbers ---- */

TEST(broken_config) {
    expect_fail(edited("tiny-bf16", "badcfg", "printf '{\"model_type\": \"glm4_moe\", \"hidden_size\": 160,' > '%s/config.json'"),
                GLM_ERR_FORMAT, "config.json", "line 1");
}

TEST(config_not_object) {
    expect_fail(edited("tiny-bf16", "cfgarr", "echo '[1]' > '%s/config.json'"), GLM_ERR_FORMAT, "config.json", "not a JSON object");
}

TEST(incomplete_config) {
    expect_fail(edited("tiny-bf16", "nocfgfield", "sed -i '/\"hidden_size\"/d' '%s/config.json'"), GLM_ERR_FORMAT,
                "config.json", "missing field \"hidden_size\"");
}

TEST(wrong_architecture) {
    expect_fail(edited("tiny-bf16", "arch", "sed -i 's/Glm4MoeForCausalLM/LlamaForCausalLM/; s/\"glm4_moe\"/\"llama\"/' '%s/config.json'"),
                GLM_ERR_UNSUPPORTED, "config.json", "glm4_moe");
}

/* Numbers past the integer range, fractions, negatives, overflowing literals and wrong
 * types: each an error naming the file, the field and the value, never a cast of an
 * unchecked double. */
TEST(config_numbers_out_of_range) {
    static const struct { const char *key, *value, *needle; } c[] = {
        {"eos_token_id", "1e20", "1e+20 is outside [0, 511]"},
        {"eos_token_id", "[1, 1e20]", "\"eos_token_id\"[1] must be a token id (vocab_size 512): 1e+20 is outside"},
        {"vocab_size", "1e300", "\"vocab_size\" must be a non-negative integer: 1e+300 is outside [0, 1073741824]"},
        {"n_routed_experts", "1e605", "\"n_routed_experts\" must be a non-negative integer: a number too large for a double"},
        {"hidden_size", "-1e605", "\"hidden_size\" must be a non-negative integer: a negative number too large"},
        {"partial_rotary_factor", "1e300", "\"partial_rotary_factor\" 1e+300 is outside"},
        {"rope_theta", "1e39", "\"rope_theta\" 1e+39 is outside"},
        {"rms_norm_eps", "-1e300", "\"rms_norm_eps\" -1e+300 is outside"},
        {"routed_scaling_factor", "1e309", "\"routed_scaling_factor\" a number too large for a double"},
        {"num_hidden_layers", "1073741825", "\"num_hidden_layers\" must be a non-negative integer: 1073741825 is outside"},
        {"hidden_size", "160.5", "\"hidden_size\" must be a non-negative integer: 160.5 is not an integer"},
        {"num_attention_heads", "-6", "\"num_attention_heads\" must be a non-negative integer: -6 is outside"},
        {"num_attention_heads", "\"6\"", "\"num_attention_heads\" must be a non-negative integer: is a string, not a number"},
        {"head_dim", "true", "\"head_dim\" must be a non-negative integer: is a boolean"},
        {"max_position_embeddings", "[512]", "\"max_position_embeddings\" must be a non-negative integer: is an array"},
        {"rope_theta", "\"1e4\"", "\"rope_theta\" is a string, not a number"},
        {"norm_topk_prob", "1", "\"norm_topk_prob\" must be true or false"},
        {"use_qk_norm", "\"yes\"", "\"use_qk_norm\" must be true or false"},
        {"attention_bias", "0", "\"attention_bias\" must be true or false"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        expect_fail(cfg_case("cfgnum", c[i].key, c[i].value), GLM_ERR_FORMAT, "config.json", c[i].needle);
}

/* ---- config.json: every relation the engine relies on ---- */

static void kv4(glm_hparams *hp) { hp->n_head_kv = 4; }
static void hd_odd(glm_hparams *hp) { hp->head_dim = 31; }
static void topk_past_experts(glm_hparams *hp) { hp->n_expert_used = 9; }

/* Without the divisibility check, grouped-query attention maps heads past the KV cache:
 * a checkpoint whose k/v shapes agree with 4 KV heads of 6 must not load. */
TEST(config_kv_heads_must_divide_heads) {
    expect_fail(synth_case("kv4synth", kv4), GLM_ERR_FORMAT, "config.json",
                "num_key_value_heads 4 must divide num_attention_heads 6");
    expect_fail(cfg_case("kvdiv", "num_key_value_heads", "4"), GLM_ERR_FORMAT, "config.json",
                "num_key_value_heads 4 must divide num_attention_heads 6");
    expect_fail(cfg_case("kv0", "num_key_value_heads", "0"), GLM_ERR_FORMAT, "config.json", "num_key_value_heads 0 must divide");
    expect_fail(cfg_case("kv12", "num_key_value_heads", "12"), GLM_ERR_FORMAT, "config.json", "num_key_value_heads 12 must divide");
}

TEST(config_sizes_must_be_positive) {
    static const struct { const char *key, *needle; } c[] = {
        {"vocab_size", "vocab_size must be at least 1"},
        {"hidden_size", "hidden_size must be at least 1"},
        {"num_hidden_layers", "num_hidden_layers must be at least 1"},
        {"num_attention_heads", "num_attention_heads must be at least 1"},
        {"intermediate_size", "intermediate_size must be at least 1"},
        {"moe_intermediate_size", "moe_intermediate_size must be at least 1"},
        {"n_routed_experts", "n_routed_experts must be at least 1"},
        {"max_position_embeddings", "max_position_embeddings must be at least 1"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        expect_fail(cfg_case("cfgzero", c[i].key, "0"), GLM_ERR_FORMAT, "config.json", c[i].needle);
}

TEST(config_head_dim) {
    expect_fail(cfg_case("hd31", "head_dim", "31"), GLM_ERR_FORMAT, "config.json", "head_dim 31 must be even");
    expect_fail(synth_case("hdsynth", hd_odd), GLM_ERR_FORMAT, "config.json", "head_dim 31 must be even");
    expect_fail(cfg_case("hd0", "head_dim", "0"), GLM_ERR_FORMAT, "config.json", "head_dim 0 must be even and at least 2");
    /* absent: hidden_size / num_attention_heads = 26, whose half is odd */
    expect_fail(cfg_case("hdnone", "head_dim", NULL), GLM_ERR_FORMAT, "config.json",
                "partial_rotary_factor 0.5 gives 13 rotary dims of head_dim 26");
    const char *d = cfg_case("hdbig", "head_dim", "32768");
    set_field(d, "num_attention_heads", "65536");
    set_field(d, "num_key_value_heads", "65536");
    expect_fail(d, GLM_ERR_FORMAT, "config.json", "num_attention_heads x head_dim = 2147483648 is too large");
}

TEST(config_rotary_dims) {
    expect_fail(cfg_case("prf0", "partial_rotary_factor", "0"), GLM_ERR_FORMAT, "config.json",
                "partial_rotary_factor 0 must be in (0, 1]");
    expect_fail(cfg_case("prf15", "partial_rotary_factor", "1.5"), GLM_ERR_FORMAT, "config.json",
                "partial_rotary_factor 1.5 must be in (0, 1]");
    expect_fail(cfg_case("prfneg", "partial_rotary_factor", "-0.5"), GLM_ERR_FORMAT, "config.json", "partial_rotary_factor -0.5");
    expect_fail(cfg_case("prf003", "partial_rotary_factor", "0.03"), GLM_ERR_FORMAT, "config.json",
                "partial_rotary_factor 0.03 gives 0 rotary dims of head_dim 32");
    expect_fail(cfg_case("prfodd", "partial_rotary_factor", "0.1"), GLM_ERR_FORMAT, "config.json",
                "partial_rotary_factor 0.1 gives 3 rotary dims");
    const char *d = cfg_case("prfrp", "rope_theta", "{\"rope_type\": \"default\", \"partial_rotary_factor\": 2}");
    set_field(d, "partial_rotary_factor", NULL);
    sh("sed -i 's/\"rope_theta\": {/\"rope_parameters\": {/' '%s/config.json'", d);
    expect_fail(d, GLM_ERR_FORMAT, "config.json", "partial_rotary_factor 2 must be in (0, 1]");
    d = cfg_case("prfrp2", "rope_theta", "{\"rope_type\": \"default\", \"partial_rotary_factor\": \"half\"}");
    sh("sed -i 's/\"rope_theta\": {/\"rope_parameters\": {/' '%s/config.json'", d);
    expect_fail(d, GLM_ERR_FORMAT, "config.json", "\"rope_parameters.partial_rotary_factor\" is a string");
}

TEST(config_dense_layers) {
    expect_fail(cfg_case("kdense", "first_k_dense_replace", "4"), GLM_ERR_FORMAT, "config.json",
                "first_k_dense_replace 4 is more than num_hidden_layers 3");
}

TEST(config_experts) {
    expect_fail(cfg_case("topk9", "num_experts_per_tok", "9"), GLM_ERR_FORMAT, "config.json",
                "num_experts_per_tok 9 must be 1 to n_routed_experts 8");
    expect_fail(synth_case("topksynth", topk_past_experts), GLM_ERR_FORMAT, "config.json",
                "num_experts_per_tok 9 must be 1 to n_routed_experts 8");
    expect_fail(cfg_case("topk0", "num_experts_per_tok", "0"), GLM_ERR_FORMAT, "config.json",
                "num_experts_per_tok 0 must be 1 to n_routed_experts 8");
    const char *d = cfg_case("shbig", "n_shared_experts", "1073741824");
    expect_fail(d, GLM_ERR_FORMAT, "config.json", "moe_intermediate_size x n_shared_experts = 51539607552 is too large");
    /* all layers dense: the expert fields are not used and may be anything */
    d = cfg_case("alldense", "first_k_dense_replace", "3");
    set_field(d, "num_experts_per_tok", "0");
    expect_fail(d, GLM_ERR_FORMAT, "model.layers.1.mlp.gate_proj.weight", "is missing");
}

TEST(config_float_fields_positive) {
    expect_fail(cfg_case("eps0", "rms_norm_eps", "0"), GLM_ERR_FORMAT, "config.json", "rms_norm_eps 0 must be positive");
    expect_fail(cfg_case("epstiny", "rms_norm_eps", "1e-50"), GLM_ERR_FORMAT, "config.json", "rms_norm_eps 0 must be positive");
    expect_fail(cfg_case("theta0", "rope_theta", "-1"), GLM_ERR_FORMAT, "config.json", "rope_theta -1 must be positive");
    expect_fail(cfg_case("rs0", "routed_scaling_factor", "0"), GLM_ERR_FORMAT, "config.json",
                "routed_scaling_factor 0 must be positive");
}

TEST(config_eos_ids) {
    expect_fail(cfg_case("eos512", "eos_token_id", "512"), GLM_ERR_FORMAT, "config.json",
                "\"eos_token_id\" must be a token id (vocab_size 512): 512 is outside [0, 511]");
    expect_fail(cfg_case("eosneg", "eos_token_id", "[1, -1]"), GLM_ERR_FORMAT, "config.json",
                "\"eos_token_id\"[1] must be a token id (vocab_size 512): -1 is outside");
    expect_fail(cfg_case("eosstr", "eos_token_id", "[1, \"2\"]"), GLM_ERR_FORMAT, "config.json",
                "\"eos_token_id\"[1] must be a token id (vocab_size 512): is a string");
    expect_fail(cfg_case("eosobj", "eos_token_id", "{\"id\": 1}"), GLM_ERR_FORMAT, "config.json",
                "\"eos_token_id\" is an object, not a token id");
    expect_fail(cfg_case("eos9", "eos_token_id", "[1, 2, 3, 4, 5, 6, 7, 8, 9]"), GLM_ERR_UNSUPPORTED, "config.json",
                "\"eos_token_id\" lists 9 ids (at most 8 supported)");
    /* the accepted forms */
    static const struct { const char *value; int n, first; } ok[] = { {"7", 1, 7}, {"[3, 4]", 2, 3}, {"null", 0, 0}, {"[]", 0, 0} };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        glm_model *m = NULL;
        int rc = glm_model_load(cfg_case("eosok", "eos_token_id", ok[i].value), NULL, &m);
        CHECK_MSG(rc == GLM_OK, "eos_token_id %s: %s", ok[i].value, glm_last_error());
        if (m) {
            const glm_hparams *hp = glm_model_hparams(m);
            CHECK(hp->n_eos == ok[i].n && (ok[i].n == 0 || hp->eos[0] == ok[i].first));
        }
        glm_model_free(m);
    }
}

/* Configurations the engine does not implement: a clear "not implemented" error. */
TEST(grouped_routing_not_implemented) {
    expect_fail(cfg_case("ngroup", "n_group", "8"), GLM_ERR_UNSUPPORTED, "config.json", "n_group 8", "not implemented");
    expect_fail(cfg_case("topkgroup", "topk_group", "2"), GLM_ERR_UNSUPPORTED, "config.json", "topk_group 2", "not implemented");
}

TEST(rope_type_not_implemented) {
    expect_fail(edited("tiny-bf16", "ropetype",
                       "sed -i 's/\"rope_theta\": 10000.0/\"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000.0}/' "
                       "'%s/config.json'"),
                GLM_ERR_UNSUPPORTED, "config.json", "rope_type \"yarn\"", "not implemented");
}

/* ---- tensors against config.json ---- */

TEST(shape_disagrees_with_config) {
    expect_fail(cfg_case("shape", "intermediate_size", "200"), GLM_ERR_FORMAT, "model.safetensors",
                "model.layers.0.mlp.gate_proj.weight", "config.json implies [200, 160]");
    expect_fail(cfg_case("shapevocab", "vocab_size", "511"), GLM_ERR_FORMAT, "model.safetensors",
                "model.embed_tokens.weight", "has shape [512, 160], config.json implies [511, 160]");
    expect_fail(tensor_case("tiny-bf16", "shape1d", "model.safetensors", "model.norm.weight", GLM_DT_BF16, 1, 128, 0),
                GLM_ERR_FORMAT, "model.safetensors", "'model.norm.weight' has shape [128], config.json implies [160]");
    expect_fail(tensor_case("tiny-bf16", "shape3d", "model.safetensors", "model.layers.0.self_attn.q_proj.weight", GLM_DT_BF16, 3, 192, 160),
                GLM_ERR_FORMAT, "'model.layers.0.self_attn.q_proj.weight' has shape [1, 192, 160], config.json implies [192, 160]");
    expect_fail(tensor_case("tiny-bf16", "shape2for1", "model.safetensors", "model.layers.1.mlp.gate.e_score_correction_bias", GLM_DT_F32, 2, 1, 8),
                GLM_ERR_FORMAT, "'model.layers.1.mlp.gate.e_score_correction_bias' has shape [1, 8], config.json implies [8]");
}

TEST(dtype_not_a_weight_type) {
    expect_fail(tensor_case("tiny-bf16", "i32", "model.safetensors", "model.norm.weight", GLM_DT_I32, 1, 160, 0),
                GLM_ERR_FORMAT, "model.safetensors", "'model.norm.weight' has dtype I32; expected F32, BF16, F16 or F8_E4M3");
    expect_fail(tensor_case("tiny-bf16", "fp8norm", "model.safetensors", "model.norm.weight", GLM_DT_F8E4M3, 1, 160, 0),
                GLM_ERR_FORMAT, "model.safetensors", "1-D tensor 'model.norm.weight' is F8_E4M3");
}

TEST(missing_tensor) {
    /* ask for 5 layers: layer 3 exists (the MTP tensors), layer 4 does not */
    expect_fail(cfg_case("notensor", "num_hidden_layers", "5"), GLM_ERR_FORMAT,
                "'model.layers.4.input_layernorm.weight' is missing (config.json: num_hidden_layers 5)");
    /* a billion layers: an error, not an attempt to allocate them */
    expect_fail(cfg_case("hugelayers", "num_hidden_layers", "1073741824"), GLM_ERR_FORMAT,
                "'model.layers.1073741823.input_layernorm.weight' is missing (config.json: num_hidden_layers 1073741824)");
    expect_fail(cfg_case("moreexperts", "n_routed_experts", "9"), GLM_ERR_FORMAT,
                "'model.layers.1.mlp.experts.8.gate_proj.weight' is missing (config.json: n_routed_experts 9)");
    expect_fail(tensor_case("tiny-bf16", "nolmhead", "model.safetensors", "lm_head.weight", GLM_DT_BF16, -1, 0, 0),
                GLM_ERR_FORMAT, "nolmhead: tensor 'lm_head.weight' is missing");
    expect_fail(tensor_case("tiny-bf16", "noexpert", "model.safetensors", "model.layers.2.mlp.experts.5.down_proj.weight", GLM_DT_BF16, -1, 0, 0),
                GLM_ERR_FORMAT, "tensor 'model.layers.2.mlp.experts.5.down_proj.weight' is missing");
    expect_fail(tensor_case("tiny-bf16", "noshared", "model.safetensors", "model.layers.1.mlp.shared_experts.up_proj.weight", GLM_DT_BF16, -1, 0, 0),
                GLM_ERR_FORMAT, "tensor 'model.layers.1.mlp.shared_experts.up_proj.weight' is missing");
}

/* Tensors that config.json's flags ask for: biases (attention_bias) and q/k norms (use_qk_norm). */
TEST(missing_flagged_tensor) {
    expect_fail(tensor_case("tiny-bf16", "nobias", "model.safetensors", "model.layers.1.self_attn.k_proj.bias", GLM_DT_BF16, -1, 0, 0),
                GLM_ERR_FORMAT, "tensor 'model.layers.1.self_attn.k_proj.bias' is missing");
    expect_fail(tensor_case("tiny-bf16", "noqnorm", "model.safetensors", "model.layers.0.self_attn.q_norm.weight", GLM_DT_BF16, -1, 0, 0),
                GLM_ERR_FORMAT, "tensor 'model.layers.0.self_attn.q_norm.weight' is missing");
    /* with the flags off the same checkpoint loads */
    const char *d = tensor_case("tiny-bf16", "flagsoff", "model.safetensors", "model.layers.0.self_attn.q_norm.weight", GLM_DT_BF16, -1, 0, 0);
    set_field(d, "use_qk_norm", "false");
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(d, NULL, &m) == GLM_OK, "%s", glm_last_error());
    glm_model_free(m);
}

TEST(missing_scale) {
    /* rename one scale in the index and in its shard header (same length keeps offsets valid) */
    expect_fail(edited("tiny-fp8ch", "noscale",
                       "sed -i 's/layers.0.self_attn.q_proj.weight_scale\"/layers.0.self_attn.q_proj.weight_scalX\"/' '%s/model.safetensors.index.json' && "
                       "sed -i 's/layers.0.self_attn.q_proj.weight_scale\"/layers.0.self_attn.q_proj.weight_scalX\"/' '%s'/model-0000*-of-00002.safetensors"),
                GLM_ERR_FORMAT, "model-00001-of-00002.safetensors", "FP8 tensor 'model.layers.0.self_attn.q_proj.weight' has neither");
}

/* Scales of the wrong shape or dtype, for each FP8 format. */
TEST(fp8_scale_shapes) {
    const char *sh2 = "model-00002-of-00002.safetensors";
    expect_fail(tensor_case("tiny-fp8ch", "chshape", sh2, "model.layers.0.self_attn.q_proj.weight_scale", GLM_DT_F32, 2, 7, 1),
                GLM_ERR_FORMAT, sh2, "'model.layers.0.self_attn.q_proj.weight_scale' should have shape [192, 1] (one scale per output channel)");
    expect_fail(tensor_case("tiny-fp8ch", "chshape2", sh2, "model.layers.0.self_attn.q_proj.weight_scale", GLM_DT_F32, 2, 192, 2),
                GLM_ERR_FORMAT, sh2, "should have shape [192, 1]");
    expect_fail(tensor_case("tiny-fp8blk", "blkshape", sh2, "model.layers.0.self_attn.q_proj.weight_scale_inv", GLM_DT_F32, 2, 2, 1),
                GLM_ERR_FORMAT, sh2, "'model.layers.0.self_attn.q_proj.weight_scale_inv' should have shape [2, 2] (128x128 blocks)");
    expect_fail(tensor_case("tiny-fp8blk", "blkshape1", sh2, "model.layers.0.self_attn.q_proj.weight_scale_inv", GLM_DT_F32, 1, 4, 0),
                GLM_ERR_FORMAT, sh2, "should have shape [2, 2]");
    expect_fail(tensor_case("tiny-fp8ch", "chdtype", sh2, "model.layers.0.self_attn.q_proj.weight_scale", GLM_DT_I32, 2, 192, 1),
                GLM_ERR_FORMAT, sh2, "scale tensor 'model.layers.0.self_attn.q_proj.weight_scale' has dtype I32; expected F32, BF16 or F16");
    expect_fail(tensor_case("tiny-fp8blk", "blkdtype", sh2, "model.layers.0.self_attn.q_proj.weight_scale_inv", GLM_DT_F8E4M3, 2, 2, 2),
                GLM_ERR_FORMAT, sh2, "scale tensor 'model.layers.0.self_attn.q_proj.weight_scale_inv' has dtype F8_E4M3");
    /* a 1-D channel scale [rows] is accepted */
    const char *d = tensor_case("tiny-fp8ch", "ch1d", sh2, "model.layers.0.self_attn.q_proj.weight_scale", GLM_DT_F32, 1, 192, 0);
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(d, NULL, &m) == GLM_OK, "%s", glm_last_error());
    glm_model_free(m);
}

/* ---- files and folders ---- */

TEST(missing_config) {
    expect_fail(edited("tiny-bf16", "nocfg", "rm '%s/config.json'"), GLM_ERR_IO, "config.json");
}

/* Makes the folder tmp/long/dddd.../ddd whose path is exactly len bytes (components of
 * at most 200 bytes) into path[cap]; returns 0 or -1. */
static int make_long_dir(char *path, size_t cap, size_t len) {
    int n = snprintf(path, cap, "%s/long", tmp);
    if (n < 0 || (size_t)n >= len || len >= cap) return -1;
    mkdir(path, 0755);
    size_t at = (size_t)n;
    while (at < len) {
        size_t part = len - at - 1 > 200 ? 200 : len - at - 1;
        if (len - at - 1 - part == 1) part--;  /* leave room for a last "/d" */
        path[at++] = '/';
        memset(path + at, 'd', part);
        at += part;
        path[at] = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    }
    return 0;
}

/* Copies tests/data/<src>/<name> into dir; returns 0 or -1. */
static int copy_into(const char *src, const char *name, const char *dir) {
    char from[512], to[4200], *data = NULL;
    size_t len = 0;
    snprintf(from, sizeof from, "tests/data/%s/%s", src, name);
    snprintf(to, sizeof to, "%s/%s", dir, name);
    if (glm_read_file(from, &data, &len)) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f && fclose(f) != 0) ok = 0;
    free(data);
    return ok ? 0 : -1;
}

TEST(model_folder_path_too_long) {
    /* 4075 bytes: dir/config.json fits in a path of 4095 bytes, dir/model.safetensors.index.json
     * does not (it was cut, and the single file beside it loaded in its stead) */
    char dir[4200], msg[1024];
    CHECK(make_long_dir(dir, sizeof dir, 4075) == 0 && strlen(dir) == 4075);
    CHECK(copy_into("tiny-bf16", "config.json", dir) == 0 && copy_into("tiny-bf16", "model.safetensors", dir) == 0);
    char start[300];
    snprintf(start, sizeof start, "%s/long/ddd", tmp);
    expect_fail(dir, GLM_ERR_ARG, start, "model.safetensors.index.json", "path too long (4104 bytes, at most 4095)");
    /* 4085 bytes: dir/tokenizer.json does not fit */
    CHECK(make_long_dir(dir, sizeof dir, 4085) == 0 && strlen(dir) == 4085);
    glm_tokenizer *tok = NULL;
    int rc = glm_tokenizer_load_dir(dir, &tok);
    snprintf(msg, sizeof msg, "%s", glm_last_error());
    fprintf(stderr, "  -> %s (%s)\n", msg, glm_status_str(rc));
    CHECK(rc == GLM_ERR_ARG && tok == NULL);
    CHECK(strstr(msg, start) && strstr(msg, "tokenizer.json: path too long (4100 bytes, at most 4095)"));
    glm_tokenizer_free(tok);
}

TEST(missing_directory) {
    expect_fail("/nonexistent/glm-model", GLM_ERR_IO, "/nonexistent/glm-model");
}

TEST(model_path_is_a_file) {
    expect_fail("tests/data/tiny-bf16/config.json", GLM_ERR_IO, "tests/data/tiny-bf16/config.json", "not a directory");
}

/* Runs a tool; returns its exit status and puts stderr in err. */
static int run_tool(const char *args, char *err, size_t cap) {
    const char *bin = getenv("GLM_BIN") ? getenv("GLM_BIN") : "build/bin";
    char cmd[2048], path[300];
    snprintf(path, sizeof path, "%s/stderr.txt", tmp);
    snprintf(cmd, sizeof cmd, "%s/%s >/dev/null 2>'%s' </dev/null", bin, args, path);
    int st = system(cmd);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(err, 1, cap - 1, f) : 0;
    err[n] = 0;
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

TEST(tools_exit_nonzero_with_message) {
    char err[4096], args[1024];
    const char *d = fresh("tiny-fp8ch", "tooltrunc");
    sh("truncate -s 5000 '%s/model-00001-of-00002.safetensors'", d);
    snprintf(args, sizeof args, "glm-run -m '%s' --prompt-ids 1,2,3 --print-ids -n 2 --device cpu", d);
    int rc = run_tool(args, err, sizeof err);
    CHECK(rc != 0 && rc < 128);
    CHECK(strstr(err, "model-00001-of-00002.safetensors") != NULL);
    snprintf(args, sizeof args, "glm-perplexity -m '%s' --ids 1,2,3 --device cpu", d);
    rc = run_tool(args, err, sizeof err);
    CHECK(rc != 0 && rc < 128);
    CHECK(strstr(err, "model-00001-of-00002.safetensors") != NULL);
    rc = run_tool("glm-run -m /nonexistent/dir --prompt-ids 1 --print-ids", err, sizeof err);
    CHECK(rc != 0 && rc < 128 && strstr(err, "/nonexistent/dir") != NULL);
    rc = run_tool("glm-run -m tests/data/tiny-bf16 --prompt-ids 1,x --print-ids", err, sizeof err);
    CHECK(rc == 2 && strstr(err, "byte 2") != NULL);
    rc = run_tool("glm-run -m tests/data/tiny-bf16 --prompt-ids 1,9999 --print-ids --device cpu", err, sizeof err);
    CHECK(rc == 2 && strstr(err, "9999") != NULL);
    rc = run_tool("glm-run --bogus-flag", err, sizeof err);
    CHECK(rc == 2 && strstr(err, "--bogus-flag") != NULL);
    rc = run_tool("glm-run -n", err, sizeof err);
    CHECK(rc == 2 && strstr(err, "-n") != NULL);
}

RUN_TESTS_IN_TMP("glm-bad-input")
