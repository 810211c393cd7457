/* safetensors.c - validated, mmap'd safetensors reading (one file or a sharded set
 * behind model.safetensors.index.json) with a hash map from tensor name to tensor,
 * and the writer used by glm-convert. Every malformed input is an error naming the
 * file and the tensor or byte offset. */
#include "internal.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (256u << 20)

typedef struct {
    char *path;
    void *map;
    size_t size;
} st_file;

struct glm_st_set {
    st_file *files;
    int n_files;
    glm_st_tensor *tensors;
    size_t n_tensors, cap_tensors;
    int32_t *slots;      /* hash table of tensor indices, -1 empty */
    size_t n_slots;
    uint64_t total_bytes;
};

static const struct { const char *name; glm_dtype t; size_t size; } dtypes[] = {
    {"F32", GLM_DT_F32, 4}, {"F16", GLM_DT_F16, 2}, {"BF16", GLM_DT_BF16, 2},
    {"F8_E4M3", GLM_DT_F8E4M3, 1}, {"I64", GLM_DT_I64, 8}, {"I32", GLM_DT_I32, 4},
};

/* Returns arr with room for element n of an array of *cap elements of elem bytes
 * (doubling, first when empty), or NULL when out of memory (arr is then untouched). */
static void *room_for(void *arr, size_t *cap, size_t n, size_t elem, size_t first) {
    if (n < *cap) return arr;
    size_t nc = *cap ? *cap * 2 : first;
    void *na = realloc(arr, nc * elem);
    if (na) *cap = nc;
    return na;
}

const char *glm_dtype_name(glm_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].name;
    return "?";
}

size_t glm_dtype_size(glm_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

static int dtype_parse(const char *s, glm_dtype *t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, s) == 0) { *t = dtypes[i].t; return 1; }
    return 0;
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ull; }
    return h;
}

/* Rebuilds the hash table for all tensors; returns a status (duplicate names are errors). */
static int st_index(glm_st_set *s) {
    size_t n = 16;
    while (n < s->n_tensors * 2) n <<= 1;
    free(s->slots);
    s->slots = malloc(n * sizeof *s->slots);
    if (!s->slots) return glm_err(GLM_ERR_OOM, "out of memory indexing tensors");
    memset(s->slots, 0xff, n * sizeof *s->slots);
    s->n_slots = n;
    for (size_t i = 0; i < s->n_tensors; i++) {
        size_t j = hash_str(s->tensors[i].name) & (n - 1);
        while (s->slots[j] >= 0) {
            const glm_st_tensor *o = &s->tensors[s->slots[j]];
            if (strcmp(o->name, s->tensors[i].name) == 0)
                return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' appears twice (also in %s)",
                               glm_st_file_path(s, s->tensors[i].file), o->name, glm_st_file_path(s, o->file));
            j = (j + 1) & (n - 1);
        }
        s->slots[j] = (int32_t)i;
    }
    return GLM_OK;
}

const glm_st_tensor *glm_st_find(const glm_st_set *s, const char *name) {
    if (!s->slots) return NULL;
    size_t j = hash_str(name) & (s->n_slots - 1);
    while (s->slots[j] >= 0) {
        const glm_st_tensor *t = &s->tensors[s->slots[j]];
        if (strcmp(t->name, name) == 0) return t;
        j = (j + 1) & (s->n_slots - 1);
    }
    return NULL;
}

size_t glm_st_count(const glm_st_set *s) { return s->n_tensors; }
const glm_st_tensor *glm_st_at(const glm_st_set *s, size_t i) { return &s->tensors[i]; }
const char *glm_st_file_path(const glm_st_set *s, int file) {
    return file >= 0 && file < s->n_files ? s->files[file].path : "(memory)";
}
uint64_t glm_st_total_bytes(const glm_st_set *s) { return s->total_bytes; }

/* qsort order of tensor pointers: by begin, then by end. */
static int cmp_begin(const void *a, const void *b) {
    const glm_st_tensor *x = *(glm_st_tensor *const *)a, *y = *(glm_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Checks that no two of the n tensors starting at first share a byte (tensors of zero
 * bytes hold none); returns a status naming both tensors. O(n log n). */
static int st_check_overlap(glm_st_set *s, size_t first, size_t n, const char *path) {
    if (n < 2) return GLM_OK;
    glm_st_tensor **order = malloc(n * sizeof *order);
    if (!order) return glm_err(GLM_ERR_OOM, "out of memory");
    for (size_t i = 0; i < n; i++) order[i] = &s->tensors[first + i];
    qsort(order, n, sizeof *order, cmp_begin);
    const glm_st_tensor *reach = NULL;   /* the tensor with the furthest end so far */
    int rc = GLM_OK;
    for (size_t i = 0; i < n && rc == GLM_OK; i++) {
        const glm_st_tensor *t = order[i];
        if (t->end == t->begin) continue;
        if (reach && t->begin < reach->end)
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap at byte %llu",
                         path, reach->name, t->name, (unsigned long long)t->begin);
        if (!reach || t->end > reach->end) reach = t;
    }
    free(order);
    return rc;
}

/* Sets *out = a * b; returns 0 when the product does not fit in 64 bits. */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }

/* Maps one file and appends its validated tensors to the set. */
static int st_add_file(glm_st_set *s, const char *path) {
    int fi = s->n_files;
    st_file *nf = realloc(s->files, (size_t)(fi + 1) * sizeof *nf);
    if (!nf) return glm_err(GLM_ERR_OOM, "out of memory");
    s->files = nf;
    st_file *f = &s->files[fi];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    s->n_files++;
    if (!f->path) return glm_err(GLM_ERR_OOM, "out of memory");

    int fd = open(path, O_RDONLY);
    if (fd < 0) return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno)); }
    if (!S_ISREG(st.st_mode)) { close(fd); return glm_err(GLM_ERR_IO, "%s: not a regular file", path); }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        return glm_err(GLM_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) { f->map = NULL; return glm_err(GLM_ERR_IO, "%s: mmap: %s", path, strerror(errno)); }

    const unsigned char *base = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | base[i];
    if (hlen > f->size - 8 || hlen > ST_MAX_HEADER)
        return glm_err(GLM_ERR_FORMAT, "%s: header length %llu at byte 0 runs past the end of the file (%zu bytes)",
                       path, (unsigned long long)hlen, f->size);
    uint64_t data_start = 8 + hlen, data_size = f->size - data_start;
    char jerr[200];
    json_doc *doc = json_parse((const char *)base + 8, hlen, jerr, sizeof jerr);
    if (!doc) return glm_err(GLM_ERR_FORMAT, "%s: header JSON (starting at byte 8): %s", path, jerr);
    const json_value *root = json_root(doc);
    int rc = GLM_OK;
    size_t first = s->n_tensors;
    if (root->type != JSON_OBJECT) { rc = glm_err(GLM_ERR_FORMAT, "%s: header is not a JSON object", path); goto done; }
    for (size_t i = 0; i < root->u.obj.n; i++) {
        const json_member *m = &root->u.obj.members[i];
        if (strcmp(m->key, "__metadata__") == 0) continue;
        const json_value *v = &m->value;
        char why[160];
        if (strlen(m->key) != m->key_len) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': the name holds a NUL byte", path, m->key);
            goto done;
        }
        const char *dt = json_get_str(v, "dtype");
        const json_value *shape = json_get(v, "shape"), *offs = json_get(v, "data_offsets");
        if (!dt || !shape || shape->type != JSON_ARRAY || !offs || offs->type != JSON_ARRAY || offs->u.arr.n != 2) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': needs dtype, shape and data_offsets[2]", path, m->key);
            goto done;
        }
        glm_st_tensor t = {0};
        t.file = fi;
        if (!dtype_parse(dt, &t.dtype)) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, m->key, dt);
            goto done;
        }
        if (shape->u.arr.n > 4) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': %zu dimensions (at most 4 supported)", path, m->key, shape->u.arr.n);
            goto done;
        }
        t.n_dims = (int)shape->u.arr.n;
        uint64_t nbytes = glm_dtype_size(t.dtype);   /* numel x element size, overflow-checked */
        for (int d = 0; d < t.n_dims; d++) {
            int64_t dim;
            if (!json_to_int(&shape->u.arr.items[d], 0, JSON_MAX_EXACT_INT, &dim, why, sizeof why)) {
                rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': shape[%d] %s", path, m->key, d, why);
                goto done;
            }
            t.shape[d] = dim;
            if (!mul_u64(nbytes, (uint64_t)dim, &nbytes)) {
                rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': shape x %s is more than 2^64 bytes", path, m->key, dt);
                goto done;
            }
        }
        int64_t b, e;
        if (!json_to_int(&offs->u.arr.items[0], 0, JSON_MAX_EXACT_INT, &b, why, sizeof why) ||
            !json_to_int(&offs->u.arr.items[1], 0, JSON_MAX_EXACT_INT, &e, why, sizeof why)) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': data_offsets entry %s", path, m->key, why);
            goto done;
        }
        if (e < b) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] end before they begin",
                         path, m->key, (long long)b, (long long)e);
            goto done;
        }
        if ((uint64_t)e > data_size) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] end at byte %llu, past the end of the file (%zu bytes)",
                         path, m->key, (long long)b, (long long)e,
                         (unsigned long long)(data_start + (uint64_t)e), f->size);
            goto done;
        }
        if ((uint64_t)(e - b) != nbytes) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s': %llu bytes in data_offsets but shape x %s needs %llu",
                         path, m->key, (unsigned long long)(e - b), dt, (unsigned long long)nbytes);
            goto done;
        }
        t.begin = data_start + (uint64_t)b;
        t.end = data_start + (uint64_t)e;
        t.data = base + t.begin;
        t.name = strdup(m->key);
        if (!t.name) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
        glm_st_tensor *nt = room_for(s->tensors, &s->cap_tensors, s->n_tensors, sizeof *nt, 256);
        if (!nt) { free(t.name); rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
        s->tensors = nt;
        s->tensors[s->n_tensors++] = t;
        s->total_bytes += t.end - t.begin;
    }
    rc = st_check_overlap(s, first, s->n_tensors - first, path);
done:
    json_free(doc);
    return rc;
}

void glm_st_close(glm_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    for (size_t i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    free(s->files);
    free(s->tensors);
    free(s->slots);
    free(s);
}

int glm_st_open_file(const char *path, glm_st_set **out) {
    *out = NULL;
    glm_st_set *s = calloc(1, sizeof *s);
    if (!s) return glm_err(GLM_ERR_OOM, "out of memory");
    int rc = st_add_file(s, path);
    if (rc == GLM_OK) rc = st_index(s);
    if (rc != GLM_OK) { glm_st_close(s); return rc; }
    *out = s;
    return GLM_OK;
}

/* Returns 1 when name[0..len) names a file directly inside a folder: not empty, "." or
 * "..", and free of '/' and NUL bytes. */
static int plain_file_name(const char *name, size_t len) {
    return len > 0 && strlen(name) == len && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

int glm_st_open_dir(const char *dir, glm_st_set **out) {
    char path[4096], idx[4096];
    *out = NULL;
    struct stat st;
    if (stat(dir, &st) != 0) return glm_err(GLM_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return glm_err(GLM_ERR_IO, "%s: not a directory", dir);
    int rc = glm_path_join(idx, sizeof idx, dir, "model.safetensors.index.json");
    if (rc) return rc;
    if (access(idx, F_OK) != 0) {
        if ((rc = glm_path_join(path, sizeof path, dir, "model.safetensors"))) return rc;
        if (access(path, F_OK) != 0)
            return glm_err(GLM_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
        return glm_st_open_file(path, out);
    }
    char *text = NULL;
    size_t len = 0;
    rc = glm_read_file(idx, &text, &len);
    if (rc) return rc;
    char jerr[200];
    json_doc *doc = json_parse(text, len, jerr, sizeof jerr);
    free(text);
    if (!doc) return glm_err(GLM_ERR_FORMAT, "%s: %s", idx, jerr);
    const json_value *wm = json_get(json_root(doc), "weight_map");
    glm_st_set *s = NULL;
    int32_t *shard_of = NULL, *slots = NULL;   /* [n] file index of each entry; hash of shard names -> entry */
    size_t n = wm && wm->type == JSON_OBJECT ? wm->u.obj.n : 0, n_slots = 16;
    if (!wm || wm->type != JSON_OBJECT) { rc = glm_err(GLM_ERR_FORMAT, "%s: no \"weight_map\" object", idx); goto fail; }
    while (n_slots < 2 * n) n_slots <<= 1;
    s = calloc(1, sizeof *s);
    shard_of = malloc((n ? n : 1) * sizeof *shard_of);
    slots = malloc(n_slots * sizeof *slots);
    if (!s || !shard_of || !slots) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto fail; }
    memset(slots, 0xff, n_slots * sizeof *slots);
    size_t dir_len = strlen(dir);
    /* open each distinct shard once, in order of first mention */
    for (size_t i = 0; i < n; i++) {
        const json_member *m = &wm->u.obj.members[i];
        const json_value *v = &m->value;
        if (v->type != JSON_STRING) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: weight_map entry '%s' is %s, not a file name", idx, m->key, json_type_name(v));
            goto fail;
        }
        if (!plain_file_name(v->u.str.s, v->u.str.len) || dir_len + v->u.str.len + 2 > sizeof path) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: weight_map entry '%.256s': '%.256s' is not a file name in the folder",
                         idx, m->key, v->u.str.s);
            goto fail;
        }
        size_t j = hash_str(v->u.str.s) & (n_slots - 1);
        while (slots[j] >= 0 && strcmp(wm->u.obj.members[slots[j]].value.u.str.s, v->u.str.s) != 0)
            j = (j + 1) & (n_slots - 1);
        if (slots[j] >= 0) { shard_of[i] = shard_of[slots[j]]; continue; }
        slots[j] = (int32_t)i;
        if ((rc = glm_path_join(path, sizeof path, dir, v->u.str.s))) goto fail;  /* fits: checked above */
        if (access(path, F_OK) != 0) {
            rc = glm_err(GLM_ERR_IO, "%s: shard '%s' (named for tensor '%s') is missing", idx, path, m->key);
            goto fail;
        }
        if ((rc = st_add_file(s, path))) goto fail;
        shard_of[i] = s->n_files - 1;
    }
    if ((rc = st_index(s))) goto fail;
    /* every tensor the index names must be in the shard it names */
    for (size_t i = 0; i < n; i++) {
        const json_member *m = &wm->u.obj.members[i];
        const glm_st_tensor *t = glm_st_find(s, m->key);
        const char *want = s->files[shard_of[i]].path;
        if (!t) { rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' is listed but not in %s", idx, m->key, want); goto fail; }
        if (t->file != shard_of[i]) {
            rc = glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' is listed in %s but found in %s", idx, m->key, want, s->files[t->file].path);
            goto fail;
        }
    }
    free(shard_of);
    free(slots);
    json_free(doc);
    *out = s;
    return GLM_OK;
fail:
    free(shard_of);
    free(slots);
    json_free(doc);
    glm_st_close(s);
    return rc;
}

int glm_st_prefetch(glm_st_set *s, glm_progress_fn progress, void *user) {
    uint64_t total = 0, done = 0;
    const size_t step = 64u << 20;
    for (int i = 0; i < s->n_files; i++) total += s->files[i].size;
    for (int i = 0; i < s->n_files; i++) {
        st_file *f = &s->files[i];
        for (size_t off = 0; off < f->size; off += step) {
            size_t n = f->size - off < step ? f->size - off : step;
            const volatile unsigned char *p = (const unsigned char *)f->map + off;
            madvise((char *)f->map + off - (off % 4096), n, MADV_WILLNEED);
            unsigned char acc = 0;
            for (size_t k = 0; k < n; k += 4096) acc ^= p[k];
            (void)acc;
            done += n;
            if (progress && progress(done, total, user)) return glm_err(GLM_ERR_ARG, "loading cancelled");
        }
    }
    return GLM_OK;
}

/* ---- in-memory sets (synthetic models) ---- */
glm_st_set *glm_st_new_memory(void) { return calloc(1, sizeof(glm_st_set)); }

int glm_st_add_memory(glm_st_set *s, const char *name, glm_dtype dtype, int n_dims,
                      const int64_t *shape, const void *data) {
    glm_st_tensor *nt = room_for(s->tensors, &s->cap_tensors, s->n_tensors, sizeof *nt, 256);
    if (!nt) return glm_err(GLM_ERR_OOM, "out of memory");
    s->tensors = nt;
    glm_st_tensor *t = &s->tensors[s->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return glm_err(GLM_ERR_OOM, "out of memory");
    t->dtype = dtype;
    t->n_dims = n_dims;
    uint64_t numel = 1;
    for (int d = 0; d < n_dims; d++) { t->shape[d] = shape[d]; numel *= (uint64_t)shape[d]; }
    t->end = numel * glm_dtype_size(dtype);
    t->data = data;
    t->file = -1;
    s->n_tensors++;
    s->total_bytes += t->end;
    return GLM_OK;
}

int glm_st_finish_memory(glm_st_set *s) { return st_index(s); }

/* ---- writer ---- */
typedef struct {
    char *name;
    glm_dtype dtype;
    int n_dims;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} st_entry;

struct glm_st_writer {
    st_entry *e;
    size_t n, cap;
};

glm_st_writer *glm_st_writer_new(void) { return calloc(1, sizeof(glm_st_writer)); }

void glm_st_writer_free(glm_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w);
}

int glm_st_writer_add(glm_st_writer *w, const char *name, glm_dtype dtype, int n_dims,
                      const int64_t *shape, const void *data, size_t nbytes) {
    if (n_dims < 0 || n_dims > 4) return glm_err(GLM_ERR_ARG, "tensor '%s': %d dimensions", name, n_dims);
    uint64_t numel = 1;
    for (int d = 0; d < n_dims; d++) numel *= (uint64_t)shape[d];
    if (numel * glm_dtype_size(dtype) != nbytes)
        return glm_err(GLM_ERR_ARG, "tensor '%s': %zu bytes for a shape that needs %llu", name, nbytes,
                       (unsigned long long)(numel * glm_dtype_size(dtype)));
    st_entry *ne = room_for(w->e, &w->cap, w->n, sizeof *ne, 64);
    if (!ne) return glm_err(GLM_ERR_OOM, "out of memory");
    w->e = ne;
    st_entry *e = &w->e[w->n];
    e->name = strdup(name);
    if (!e->name) return glm_err(GLM_ERR_OOM, "out of memory");
    e->dtype = dtype;
    e->n_dims = n_dims;
    for (int d = 0; d < n_dims; d++) e->shape[d] = shape[d];
    e->data = data;
    e->nbytes = nbytes;
    w->n++;
    return GLM_OK;
}

/* Makes room for need more bytes in h; returns a status. */
static int header_room(glm_st_header *h, size_t need) {
    if (h->cap - h->len >= need) return GLM_OK;
    size_t nc = h->cap * 2 + need;
    char *nb = realloc(h->buf, nc);
    if (!nb) return glm_err(GLM_ERR_OOM, "out of memory");
    h->buf = nb;
    h->cap = nc;
    return GLM_OK;
}

int glm_st_header_begin(glm_st_header *h) {
    *h = (glm_st_header){ 0 };
    int rc = header_room(h, 4096);
    if (rc) return rc;
    h->len = 8;  /* the length prefix, filled by glm_st_header_end */
    h->len += (size_t)snprintf(h->buf + h->len, h->cap - h->len, "{\"__metadata__\":{\"format\":\"pt\"}");
    return GLM_OK;
}

int glm_st_header_add(glm_st_header *h, const char *name, glm_dtype dt, int nd, const int64_t *shape,
                      uint64_t off, uint64_t nbytes) {
    int rc = header_room(h, strlen(name) * 6 + 256);
    if (rc) return rc;
    char *b = h->buf;
    b[h->len++] = ',';
    h->len += json_escape(b + h->len, h->cap - h->len, name, strlen(name));
    h->len += (size_t)snprintf(b + h->len, h->cap - h->len, ":{\"dtype\":\"%s\",\"shape\":[", glm_dtype_name(dt));
    for (int d = 0; d < nd; d++)
        h->len += (size_t)snprintf(b + h->len, h->cap - h->len, "%s%lld", d ? "," : "", (long long)shape[d]);
    h->len += (size_t)snprintf(b + h->len, h->cap - h->len, "],\"data_offsets\":[%llu,%llu]}",
                               (unsigned long long)off, (unsigned long long)(off + nbytes));
    return GLM_OK;
}

int glm_st_header_end(glm_st_header *h) {
    int rc = header_room(h, 16);
    if (rc) return rc;
    h->buf[h->len++] = '}';
    while ((h->len - 8) % 8) h->buf[h->len++] = ' ';
    for (int i = 0; i < 8; i++) h->buf[i] = (char)(unsigned char)((uint64_t)(h->len - 8) >> (8 * i));
    return GLM_OK;
}

void glm_st_header_free(glm_st_header *h) {
    free(h->buf);
    *h = (glm_st_header){ 0 };
}

int glm_st_writer_write(glm_st_writer *w, const char *path) {
    glm_st_header h;
    int rc = glm_st_header_begin(&h);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n && !rc; i++) {
        st_entry *e = &w->e[i];
        rc = glm_st_header_add(&h, e->name, e->dtype, e->n_dims, e->shape, off, e->nbytes);
        off += e->nbytes;
    }
    if (!rc) rc = glm_st_header_end(&h);
    if (rc) { glm_st_header_free(&h); return rc; }
    FILE *f = fopen(path, "wb");
    if (!f) { glm_st_header_free(&h); return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno)); }
    int ok = fwrite(h.buf, 1, h.len, f) == h.len;
    for (size_t i = 0; ok && i < w->n; i++)
        ok = w->e[i].nbytes == 0 || fwrite(w->e[i].data, 1, w->e[i].nbytes, f) == w->e[i].nbytes;
    glm_st_header_free(&h);
    if (fclose(f) != 0) ok = 0;
    if (!ok) return glm_err(GLM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return GLM_OK;
}
