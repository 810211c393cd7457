/* test-bad-input.c - every kind of broken checkpoint is a clear error naming the file
 * and the tensor or field, never a crash: truncated shards, bad header lengths,
 * offsets outside the file or overlapping, unknown dtypes, shapes that disagree with
 * config.json, missing shards and tensors, broken configs, missing directories.
 * Also checks that the tools exit non-zero with the message. */
#include "glm.h"
#include "test.h"

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

/* Loads dir, expects failure, and checks that the message contains each needle. */
static void expect_fail(const char *dir, const char *n1, const char *n2) {
    glm_model *m = NULL;
    int rc = glm_model_load(dir, NULL, &m);
    CHECK_MSG(rc < 0, "%s loaded but should not", dir);
    CHECK(m == NULL);
    const char *e = glm_last_error();
    fprintf(stderr, "  %s -> %s\n", dir, e);
    if (n1) CHECK_MSG(strstr(e, n1) != NULL, "message lacks '%s'", n1);
    if (n2) CHECK_MSG(strstr(e, n2) != NULL, "message lacks '%s'", n2);
    glm_model_free(m);
}

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
 * (as sh runs it), and expects the load to fail with a message containing n1 and n2. */
static void expect_fail_edited(const char *src, const char *name, const char *edit,
                               const char *n1, const char *n2) {
    const char *d = fresh(src, name);
    sh(edit, d);
    expect_fail(d, n1, n2);
}

/* A directory with the tiny bf16 config and a hand-made weights file. */
static const char *st_case(const char *name, const char *header, size_t n_data) {
    const char *d = fresh("tiny-bf16", name);
    write_st(d, header, n_data);
    return d;
}

TEST(truncated_shard) {
    const char *d = fresh("tiny-fp8ch", "truncated");
    char path[512];
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", d);
    struct stat st;
    stat(path, &st);
    CHECK(truncate(path, st.st_size - 1000) == 0);
    expect_fail(d, "model-00002-of-00002.safetensors", "past the end of the file");
}

TEST(header_length_past_end) {
    const char *d = fresh("tiny-bf16", "hdrlen");
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    FILE *f = fopen(path, "r+b");
    uint64_t huge = 1ull << 40;
    fwrite(&huge, 8, 1, f);
    fclose(f);
    expect_fail(d, "model.safetensors", "header length");
}

TEST(offsets_outside_file) {
    expect_fail(st_case("offs", "{\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320000]}}", 320),
                "model.norm.weight", "past the end");
}

TEST(overlapping_offsets) {
    expect_fail(st_case("overlap", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[0,320]},"
                                   "\"b\":{\"dtype\":\"BF16\",\"shape\":[160],\"data_offsets\":[100,420]}}", 420),
                "overlap", "model.safetensors");
}

TEST(unknown_dtype) {
    expect_fail(st_case("dtype", "{\"model.norm.weight\":{\"dtype\":\"Q4_K\",\"shape\":[160],\"data_offsets\":[0,320]}}", 320),
                "model.norm.weight", "unknown dtype 'Q4_K'");
}

TEST(size_disagrees_with_shape) {
    expect_fail(st_case("size", "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[160],\"data_offsets\":[0,320]}}", 320),
                "model.norm.weight", "needs 640");
}

TEST(bad_header_json) {
    expect_fail(st_case("json", "{\"model.norm.weight\":{\"dtype\":\"F32\",", 16), "model.safetensors", "header JSON");
}

TEST(shape_disagrees_with_config) {
    expect_fail_edited("tiny-bf16", "shape",
                       "sed -i 's/\"intermediate_size\": 192/\"intermediate_size\": 200/' '%s/config.json'",
                       "model.layers.0.mlp.gate_proj.weight", "config.json implies [200, 160]");
}

TEST(missing_shard) {
    expect_fail_edited("tiny-fp8blk", "noshard", "rm '%s/model-00002-of-00002.safetensors'",
                       "model-00002-of-00002.safetensors", "missing");
}

TEST(missing_tensor) {
    /* ask for 5 layers: layer 3 exists (the MTP tensors), layer 4 does not */
    expect_fail_edited("tiny-bf16", "notensor",
                       "sed -i 's/\"num_hidden_layers\": 3/\"num_hidden_layers\": 5/' '%s/config.json'",
                       "model.layers.", "is missing");
}

TEST(missing_scale) {
    /* rename one scale in the index and in its shard header (same length keeps offsets valid) */
    expect_fail_edited("tiny-fp8ch", "noscale",
                       "sed -i 's/layers.0.self_attn.q_proj.weight_scale\"/layers.0.self_attn.q_proj.weight_scalX\"/' '%s/model.safetensors.index.json' && "
                       "sed -i 's/layers.0.self_attn.q_proj.weight_scale\"/layers.0.self_attn.q_proj.weight_scalX\"/' '%s'/model-0000*-of-00002.safetensors",
                       "model.layers.0.self_attn.q_proj.weight", "neither");
}

TEST(index_names_wrong_shard) {
    /* point model.norm.weight at the other shard */
    expect_fail_edited("tiny-fp8ch", "wrongshard",
                       "sed -i -e 's/\\(\"model.norm.weight\": \"model-0000\\)1/\\12/;t' -e 's/\\(\"model.norm.weight\": \"model-0000\\)2/\\11/' "
                       "'%s/model.safetensors.index.json'",
                       "model.norm.weight", "is listed in");
}

TEST(broken_config) {
    expect_fail_edited("tiny-bf16", "badcfg",
                       "printf '{\"model_type\": \"glm4_moe\", \"hidden_size\": 160,' > '%s/config.json'",
                       "config.json", "line 1");
}

TEST(incomplete_config) {
    expect_fail_edited("tiny-bf16", "nocfgfield", "sed -i '/\"hidden_size\"/d' '%s/config.json'",
                       "config.json", "\"hidden_size\"");
}

TEST(wrong_architecture) {
    expect_fail_edited("tiny-bf16", "arch",
                       "sed -i 's/Glm4MoeForCausalLM/LlamaForCausalLM/; s/\"glm4_moe\"/\"llama\"/' '%s/config.json'",
                       "config.json", "glm4_moe");
}

/* Configurations the engine does not implement: a clear "not implemented" error. */
TEST(grouped_routing_not_implemented) {
    expect_fail_edited("tiny-bf16", "ngroup", "sed -i 's/\"n_group\": 1/\"n_group\": 8/' '%s/config.json'",
                       "n_group 8", "not implemented");
}

TEST(rope_type_not_implemented) {
    expect_fail_edited("tiny-bf16", "ropetype",
                       "sed -i 's/\"rope_theta\": 10000.0/\"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000.0}/' "
                       "'%s/config.json'",
                       "rope_type \"yarn\"", "not implemented");
}

TEST(missing_config) {
    expect_fail_edited("tiny-bf16", "nocfg", "rm '%s/config.json'", "config.json", NULL);
}

TEST(missing_directory) {
    expect_fail("/nonexistent/glm-model", "/nonexistent/glm-model", NULL);
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
