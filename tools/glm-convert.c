/* glm-convert - writes GLM-4 MoE checkpoints: random-weight synthetic ones in the
 * real GLM-4.7-FP8 layout (for benchmarks and tests without downloaded weights), and
 * BF16 -> FP8 (per-channel or block-128) conversion of a Hugging Face directory. */
#include "common.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-convert --synthetic --preset tiny|glm-4.7 [--layers L] [--format F] [--seed S] --out DIR\n"
        "       glm-convert -m BF16_DIR --format fp8-channel|fp8-block --out DIR\n"
        "\n"
        "Writes a Glm4MoeForCausalLM checkpoint (config.json, sharded safetensors, index).\n"
        "\n"
        "  --synthetic        random weights in the real layout (nothing to download)\n"
        "  --preset NAME      tiny (1.3M params) or glm-4.7 (full width: hidden 5120, 160 experts)\n"
        "  --layers L         number of layers (glm-4.7: the first 3 are dense)\n"
        "  --format F         fp8-channel (GLM-4.7-FP8, default), fp8-block (128x128), bf16\n"
        "  --seed S           random seed (default 1)\n"
        "  -m DIR             convert a BF16 checkpoint: every attention/MLP/expert Linear becomes FP8\n"
        "  --out DIR          output directory (created)\n"
        "  -h, --help         this text\n");
}

static int parse_format(const char *v, glm_weight_format *f) {
    if (strcmp(v, "fp8-channel") == 0 || strcmp(v, "fp8") == 0) *f = GLM_FMT_FP8_CHANNEL;
    else if (strcmp(v, "fp8-block") == 0) *f = GLM_FMT_FP8_BLOCK;
    else if (strcmp(v, "bf16") == 0) *f = GLM_FMT_BF16;
    else return -1;
    return 0;
}

/* Quantises one [rows, cols] weight to FP8 with per-row or 128x128 block scales. */
static int quantize(const glm_weight *w, glm_weight_format fmt, uint8_t *q, float *scale) {
    float *row = malloc((size_t)w->cols * sizeof *row);
    if (!row) return -1;
    if (fmt == GLM_FMT_FP8_CHANNEL) {
        for (int64_t r = 0; r < w->rows; r++) {
            glm_weight_row(w, r, row);
            float amax = 0;
            for (int64_t k = 0; k < w->cols; k++) amax = fmaxf(amax, fabsf(row[k]));
            /* the scale is stored in BF16: round it first so q * s is exact on reload */
            float s = glm_bf16_to_f32(glm_f32_to_bf16(amax > 0 ? amax / 448.0f : 1.0f));
            scale[r] = s;
            for (int64_t k = 0; k < w->cols; k++) q[r * w->cols + k] = glm_f32_to_fp8e4m3(row[k] / s);
        }
    } else {
        int64_t br = (w->rows + GLM_BLOCK - 1) / GLM_BLOCK, bc = (w->cols + GLM_BLOCK - 1) / GLM_BLOCK;
        float *deq = malloc((size_t)(w->rows * w->cols) * sizeof *deq);
        if (!deq) { free(row); return -1; }
        for (int64_t r = 0; r < w->rows; r++) glm_weight_row(w, r, deq + r * w->cols);
        for (int64_t i = 0; i < br; i++)
            for (int64_t j = 0; j < bc; j++) {
                float amax = 0;
                for (int64_t r = i * GLM_BLOCK; r < w->rows && r < (i + 1) * GLM_BLOCK; r++)
                    for (int64_t k = j * GLM_BLOCK; k < w->cols && k < (j + 1) * GLM_BLOCK; k++)
                        amax = fmaxf(amax, fabsf(deq[r * w->cols + k]));
                float s = amax > 0 ? amax / 448.0f : 1.0f;
                scale[i * bc + j] = s;
                for (int64_t r = i * GLM_BLOCK; r < w->rows && r < (i + 1) * GLM_BLOCK; r++)
                    for (int64_t k = j * GLM_BLOCK; k < w->cols && k < (j + 1) * GLM_BLOCK; k++)
                        q[r * w->cols + k] = glm_f32_to_fp8e4m3(deq[r * w->cols + k] / s);
            }
        free(deq);
    }
    free(row);
    return 0;
}

/* Is this tensor a Linear that the FP8 formats quantise? (attention, MLP, experts) */
static int is_quantized_linear(const char *name) {
    static const char *parts[] = { "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                   "gate_proj.weight", "up_proj.weight", "down_proj.weight" };
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t m = strlen(parts[i]);
        if (n > m && strcmp(name + n - m, parts[i]) == 0) return 1;
    }
    return 0;
}

/* Converts a BF16 checkpoint directory to FP8 in one output file; returns an exit code. */
static int convert_dir(const char *in, const char *out, glm_weight_format fmt) {
    glm_st_set *st = NULL;
    char path[4096], *cfg = NULL;
    size_t cfg_len;
    if (glm_st_open_dir(in, &st) != GLM_OK) { fprintf(stderr, "glm-convert: error: %s\n", glm_last_error()); return EXIT_FAIL; }
    glm_path_join(path, sizeof path, in, "config.json");
    if (glm_read_file(path, &cfg, &cfg_len) != GLM_OK) { fprintf(stderr, "glm-convert: error: %s\n", glm_last_error()); glm_st_close(st); return EXIT_FAIL; }
    glm_hparams hp;
    if (glm_hparams_parse(cfg, cfg_len, path, &hp) != GLM_OK) {
        fprintf(stderr, "glm-convert: error: %s\n", glm_last_error());
        free(cfg); glm_st_close(st); return EXIT_FAIL;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) { fprintf(stderr, "glm-convert: error: %s: %s\n", out, strerror(errno)); free(cfg); glm_st_close(st); return EXIT_FAIL; }
    glm_numbers_init();
    glm_st_writer *w = glm_st_writer_new();
    void **bufs = calloc(glm_st_count(st) * 2 + 1, sizeof *bufs);
    size_t nb = 0;
    int rc = EXIT_OK;
    for (size_t i = 0; i < glm_st_count(st) && rc == EXIT_OK; i++) {
        const glm_st_tensor *t = glm_st_at(st, i);
        if (t->n_dims == 2 && is_quantized_linear(t->name) && t->dtype != GLM_DT_F8E4M3) {
            glm_weight wt = { .name = t->name, .dtype = t->dtype, .rows = t->shape[0], .cols = t->shape[1], .data = t->data };
            int64_t br = (wt.rows + GLM_BLOCK - 1) / GLM_BLOCK, bc = (wt.cols + GLM_BLOCK - 1) / GLM_BLOCK;
            size_t ns = fmt == GLM_FMT_FP8_CHANNEL ? (size_t)wt.rows : (size_t)(br * bc);
            uint8_t *q = malloc((size_t)(wt.rows * wt.cols));
            float *s = malloc(ns * sizeof *s);
            bufs[nb++] = q;
            bufs[nb++] = s;
            if (!q || !s || quantize(&wt, fmt, q, s)) { fprintf(stderr, "glm-convert: error: out of memory\n"); rc = EXIT_FAIL; break; }
            char sname[512];
            int64_t shp[2] = { wt.rows, wt.cols };
            glm_st_writer_add(w, t->name, GLM_DT_F8E4M3, 2, shp, q, (size_t)(wt.rows * wt.cols));
            if (fmt == GLM_FMT_FP8_CHANNEL) {
                uint16_t *sb = (uint16_t *)s; /* in place: bf16 fits in the float buffer */
                for (size_t k = 0; k < ns; k++) sb[k] = glm_f32_to_bf16(s[k]);
                int64_t ss[2] = { wt.rows, 1 };
                snprintf(sname, sizeof sname, "%s_scale", t->name);
                glm_st_writer_add(w, sname, GLM_DT_BF16, 2, ss, sb, ns * 2);
            } else {
                int64_t ss[2] = { br, bc };
                snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
                glm_st_writer_add(w, sname, GLM_DT_F32, 2, ss, s, ns * 4);
            }
        } else {
            glm_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data, (size_t)(t->end - t->begin));
        }
    }
    if (rc == EXIT_OK) {
        glm_path_join(path, sizeof path, out, "model.safetensors");
        if (glm_st_writer_write(w, path) != GLM_OK) { fprintf(stderr, "glm-convert: error: %s\n", glm_last_error()); rc = EXIT_FAIL; }
    }
    /* config.json: the input's, with a quantization_config added before the last brace */
    if (rc == EXIT_OK) {
        glm_path_join(path, sizeof path, out, "config.json");
        FILE *f = fopen(path, "w");
        char *end = strrchr(cfg, '}');
        if (!f || !end) { fprintf(stderr, "glm-convert: error: %s: cannot write\n", path); rc = EXIT_FAIL; }
        else {
            fwrite(cfg, 1, (size_t)(end - cfg), f);
            if (fmt == GLM_FMT_FP8_CHANNEL)
                fprintf(f, ",\n  \"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", "
                           "\"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"float\", "
                           "\"strategy\": \"channel\", \"symmetric\": true, \"dynamic\": false}, \"input_activations\": {\"num_bits\": 8, "
                           "\"type\": \"float\", \"strategy\": \"token\", \"symmetric\": true, \"dynamic\": true}}}, "
                           "\"ignore\": [\"lm_head\", \"re:.*mlp.gate$\"]}\n}\n");
            else
                fprintf(f, ",\n  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"dynamic\", "
                           "\"weight_block_size\": [128, 128]}\n}\n");
            fclose(f);
        }
    }
    for (size_t i = 0; i < nb; i++) free(bufs[i]);
    free(bufs);
    glm_st_writer_free(w);
    glm_st_close(st);
    free(cfg);
    if (rc == EXIT_OK) fprintf(stderr, "glm-convert: wrote %s\n", out);
    return rc;
}

int main(int argc, char **argv) {
    const char *preset = NULL, *out = NULL, *in = NULL;
    int synthetic = 0, layers = 0;
    uint64_t seed = 1;
    glm_weight_format fmt = GLM_FMT_FP8_CHANNEL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "--synthetic")) synthetic = 1;
        else if (!strcmp(a, "--preset")) preset = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--layers")) layers = tool_int(a, tool_arg(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "--seed")) seed = (uint64_t)tool_int(a, tool_arg(argc, argv, &i), 0, 2147483647);
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) out = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) in = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--format")) {
            const char *v = tool_arg(argc, argv, &i);
            if (parse_format(v, &fmt)) { fprintf(stderr, "glm-convert: error: --format expects fp8-channel, fp8-block or bf16, got '%s'\n", v); return EXIT_USAGE; }
        } else { fprintf(stderr, "glm-convert: error: unknown argument '%s' (see --help)\n", a); return EXIT_USAGE; }
    }
    if (!out) { fprintf(stderr, "glm-convert: error: --out DIR is required (see --help)\n"); return EXIT_USAGE; }
    if (synthetic == !!in) { fprintf(stderr, "glm-convert: error: give either --synthetic or -m DIR\n"); return EXIT_USAGE; }
    if (in) {
        if (fmt == GLM_FMT_BF16) { fprintf(stderr, "glm-convert: error: -m converts to fp8-channel or fp8-block\n"); return EXIT_USAGE; }
        return convert_dir(in, out, fmt);
    }
    glm_hparams hp;
    if (!preset) { fprintf(stderr, "glm-convert: error: --synthetic needs --preset tiny|glm-4.7\n"); return EXIT_USAGE; }
    if (glm_preset(preset, layers, &hp) != GLM_OK) { fprintf(stderr, "glm-convert: error: %s\n", glm_last_error()); return EXIT_USAGE; }
    double t0 = tool_now();
    if (glm_synthetic_write(&hp, fmt, out, seed, tool_progress, NULL) != GLM_OK) {
        fprintf(stderr, "glm-convert: error: %s\n", glm_last_error());
        return EXIT_FAIL;
    }
    fprintf(stderr, "glm-convert: wrote %s (%s, %d layers) in %.1f s\n", out, preset, hp.n_layer, tool_now() - t0);
    return EXIT_OK;
}
