/* fuzz-index.c - bytes as model.safetensors.index.json in a folder that holds two
 * small shards (model-00001-of-00002.safetensors: "a" BF16 [2], "b" F32 [1];
 * model-00002-of-00002.safetensors: "c" BF16 [3]), a sub-folder "sub" and a file that
 * is not a safetensors ("notes.txt"). Every shard name the index gives must stay in the
 * folder; an accepted index names only tensors found in the shard it names; a rejected
 * one gets a message naming the folder's files. A broken invariant traps. */
#include "internal.h"
#include "scratch.h"
#include "json.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64], idx[128];
static const char *const shard_names[2] = { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" };

/* Joins dir and name into a static buffer; returns it. */
static const char *in_dir(const char *name) {
    static char p[160];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* Removes the scratch folder at exit. */
static void cleanup(void) {
    unlink(idx);
    unlink(in_dir(shard_names[0]));
    unlink(in_dir(shard_names[1]));
    unlink(in_dir("notes.txt"));
    rmdir(in_dir("sub"));
    rmdir(dir);
}

/* Makes the folder with its shards once; aborts when it cannot. */
static void setup(void) {
    static const uint16_t a[2] = { 0x3f80, 0x4000 }, c[3] = { 1, 2, 3 };
    static const float b[1] = { 0.5f };
    const int64_t s2 = 2, s1 = 1, s3 = 3;
    scratch_dir(dir, sizeof dir, "index");
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    glm_st_writer *w = glm_st_writer_new();
    if (!w || glm_st_writer_add(w, "a", GLM_DT_BF16, 1, &s2, a, sizeof a) ||
        glm_st_writer_add(w, "b", GLM_DT_F32, 1, &s1, b, sizeof b) || glm_st_writer_write(w, in_dir(shard_names[0])))
        abort();
    glm_st_writer_free(w);
    w = glm_st_writer_new();
    if (!w || glm_st_writer_add(w, "c", GLM_DT_BF16, 1, &s3, c, sizeof c) || glm_st_writer_write(w, in_dir(shard_names[1])))
        abort();
    glm_st_writer_free(w);
    if (mkdir(in_dir("sub"), 0700) || put_file(in_dir("notes.txt"), "not a safetensors file\n", 23)) abort();
    atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) setup();
    if (put_file(idx, data, size)) abort();
    glm_st_set *s = NULL;
    int rc = glm_st_open_dir(dir, &s);
    if (rc != GLM_OK) {
        if (rc >= 0 || s || !strstr(glm_last_error(), dir)) __builtin_trap();
        return 0;
    }
    /* accepted: only our two shards can have been opened, and every listed tensor is in its shard */
    size_t n = glm_st_count(s);
    if (n > 3) __builtin_trap();
    for (size_t i = 0; i < n; i++) {
        const glm_st_tensor *t = glm_st_at(s, i);
        const char *f = glm_st_file_path(s, t->file);
        if (strcmp(f, in_dir(shard_names[0])) != 0 && strcmp(f, in_dir(shard_names[1])) != 0) __builtin_trap();
        if (glm_st_find(s, t->name) != t) __builtin_trap();
    }
    glm_st_close(s);
    return 0;
}
