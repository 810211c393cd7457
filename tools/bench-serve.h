/* bench-serve.h - glm-bench --serve: a throughput run through the library's scheduler
 * (the one glm-server runs): --requests requests of --in prompt tokens and --out output
 * tokens (or lengths drawn uniformly from --in-dist / --out-dist LO:HI), all submitted at
 * once, -np decoding together. Reports requests/s, output tokens/s, time to first token
 * and inter-token latency (p50, p99), KV utilisation (pages held by requests over all
 * pages: the mean over the run's time and the peak), preemptions and the prefix-cache hit
 * ratio; with --draft N (speculative decoding in the scheduler, greedy), the fraction of
 * the drafted tokens accepted. Included by glm-bench.c after its helpers (rand_token,
 * run_bytes, check_memory). */
#ifndef GLM_BENCH_SERVE_H
#define GLM_BENCH_SERVE_H

typedef struct {
    int on;                     /* --serve */
    int np, n_req;              /* -np, --requests (0: -np) */
    int in_lo, in_hi, out_lo, out_hi;
    int batch_tokens, kv_pages, shared_prefix, prefix_cache;
    int n_draft;                /* --draft (set by glm-bench.c from its speculative-decoding flags) */
} serve_opts;

/* The serve-mode defaults: -np 8, 512 prompt and 128 output tokens, the device's step
 * budget (batch_tokens 0: tool_default_batch_tokens). */
static serve_opts serve_default(void) {
    serve_opts o = {0};
    o.np = 8;
    o.in_lo = o.in_hi = 512;
    o.out_lo = o.out_hi = 128;
    o.prefix_cache = 1;
    return o;
}

/* Parses "LO:HI" (or one number) into [lo, hi]; exits with a usage error when bad. */
static void serve_range(const char *flag, const char *v, int min, int *lo, int *hi) {
    const char *colon = strchr(v, ':');
    if (!colon) { *lo = *hi = tool_int(flag, v, min, 1 << 24); return; }
    char a[32];
    if ((size_t)(colon - v) >= sizeof a) tool_usage_error("%s expects LO:HI, got '%s'", flag, v);
    memcpy(a, v, (size_t)(colon - v));
    a[colon - v] = 0;
    *lo = tool_int(flag, a, min, 1 << 24);
    *hi = tool_int(flag, colon + 1, min, 1 << 24);
    if (*lo > *hi) tool_usage_error("%s expects LO:HI with LO <= HI, got '%s'", flag, v);
}

/* Takes the serve-mode flag at argv[*i] (and its value); returns 1 when it was one. */
static int serve_flag(int argc, char **argv, int *i, serve_opts *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "--serve")) o->on = 1;
    else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) o->np = tool_int(a, tool_arg(argc, argv, i), 1, 65536);
    else if (!strcmp(a, "--requests")) o->n_req = tool_int(a, tool_arg(argc, argv, i), 1, 1 << 24);
    else if (!strcmp(a, "--in")) o->in_lo = o->in_hi = tool_int(a, tool_arg(argc, argv, i), 1, 1 << 24);
    else if (!strcmp(a, "--out")) o->out_lo = o->out_hi = tool_int(a, tool_arg(argc, argv, i), 1, 1 << 24);
    else if (!strcmp(a, "--in-dist")) serve_range(a, tool_arg(argc, argv, i), 1, &o->in_lo, &o->in_hi);
    else if (!strcmp(a, "--out-dist")) serve_range(a, tool_arg(argc, argv, i), 1, &o->out_lo, &o->out_hi);
    else if (!strcmp(a, "--batch-tokens")) o->batch_tokens = tool_int(a, tool_arg(argc, argv, i), 1, 1 << 20);
    else if (!strcmp(a, "--kv-pages")) o->kv_pages = tool_int(a, tool_arg(argc, argv, i), 1, INT32_MAX);
    else if (!strcmp(a, "--shared-prefix")) o->shared_prefix = tool_int(a, tool_arg(argc, argv, i), 0, 1 << 24);
    else if (!strcmp(a, "--no-prefix-cache")) o->prefix_cache = 0;
    else return 0;
    return 1;
}

/* One request's timing, filled by the scheduler's callback. */
typedef struct {
    double t_submit, t_first, t_last;
    int n_gen, done;
} serve_req;

static double *serve_itl;       /* every inter-token gap of the run, seconds */
static size_t serve_n_itl, serve_cap_itl;

/* The scheduler's callback: a request's first-token time and every inter-token gap. */
static void serve_event(void *user, const glm_sched_event *ev) {
    serve_req *r = user;
    const double t = tool_now();
    if (ev->token >= 0) {
        if (!r->n_gen) r->t_first = t;
        else {
            if (serve_n_itl == serve_cap_itl) {
                size_t cap = serve_cap_itl ? serve_cap_itl * 2 : 4096;
                double *n = realloc(serve_itl, cap * sizeof *n);
                if (n) { serve_itl = n; serve_cap_itl = cap; }
            }
            if (serve_n_itl < serve_cap_itl) serve_itl[serve_n_itl++] = t - r->t_last;
        }
        r->t_last = t;
        r->n_gen = ev->n_gen;
    }
    if (ev->finish) r->done = 1;
}

/* qsort order of doubles: ascending. */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of v[n] (sorted in place), nearest rank; 0 for none. */
static double quantile(double *v, size_t n, double q) {
    if (!n) return 0;
    qsort(v, n, sizeof *v, cmp_double);
    size_t k = (size_t)ceil(q * (double)n);
    return v[k ? k - 1 : 0];
}

/* A length drawn uniformly from [lo, hi]. */
static int serve_draw(int lo, int hi) {
    return lo == hi ? lo : lo + (int)((uint32_t)rand_token(1 << 30) % (uint32_t)(hi - lo + 1));
}

/* Runs the serve-mode test on model m and prints its report; returns the exit status. */
static int bench_serve(glm_model *m, glm_device dev, int n_threads, glm_kv_type kv_run, const char *out_fmt, const serve_opts *opts,
                       const tool_tp_opts *tpo) {
    serve_opts oo = *opts;
    const serve_opts *o = &oo;
    if (!oo.batch_tokens) oo.batch_tokens = tool_default_batch_tokens(dev);
    const glm_hparams *hp = glm_model_hparams(m);
    const int n_req = o->n_req ? o->n_req : o->np;
    const int64_t n_ctx64 = (int64_t)o->in_hi + o->out_hi + o->shared_prefix;
    if (n_ctx64 > INT32_MAX / 2) tool_usage_error("--in %d + --out %d is too long", o->in_hi, o->out_hi);
    const int n_ctx = (int)n_ctx64;
    /* the KV cache and activations this run asks for, before allocating */
    double kv_bytes, act_bytes;
    const int64_t pages = o->kv_pages ? o->kv_pages : (int64_t)o->np * ((n_ctx + 15) / 16);
    run_bytes(hp, dev, kv_run, (double)pages * 16, o->batch_tokens, o->np, &kv_bytes, &act_bytes);
    check_memory(dev, dev == GLM_DEVICE_CUDA ? (double)glm_model_n_bytes(m) : 0, kv_bytes, act_bytes);
    tool_warn_ctx(PROG, n_ctx, m);
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = dev;
    cp.n_threads = n_threads;
    cp.n_ctx = n_ctx;
    cp.n_seq_max = o->np;
    cp.n_batch = o->batch_tokens > o->np ? o->batch_tokens : o->np;
    cp.n_kv_pages = o->kv_pages;
    cp.kv_type = kv_run;
    cp.mtp = o->n_draft > 0;
    int tp_rc = tool_tp_apply(tpo, m, &cp);
    if (tp_rc) return tp_rc;
    glm_ctx *ctx = NULL;
    glm_sched *s = NULL;
    glm_sched_params sp = glm_sched_default_params();
    sp.batch_tokens = o->batch_tokens;
    sp.prefix_cache = o->prefix_cache;
    sp.n_draft = o->n_draft;
    serve_req *rs = calloc((size_t)n_req, sizeof *rs);
    int32_t *prefix = malloc(sizeof(int32_t) * (size_t)(o->shared_prefix + 1)), *prompt = malloc(sizeof(int32_t) * (size_t)n_ctx);
    if (!rs || !prefix || !prompt) {
        fprintf(stderr, PROG ": error: out of memory\n");
        free(rs); free(prefix); free(prompt);
        return EXIT_FAIL;
    }
    int rc = glm_ctx_new(m, &cp, &ctx);
    if (!rc) rc = glm_sched_new(ctx, &sp, &s);
    if (rc) goto done;
    for (int i = 0; i < o->shared_prefix; i++) prefix[i] = rand_token(hp->n_vocab);
    glm_sampler_params greedy = glm_sampler_default_params();
    greedy.temp = 0;
    /* warm-up: one short request (16 + 4 tokens, fewer when the context or the KV pages
     * hold less: n_ctx >= 2) */
    {
        serve_req w = {0};
        int64_t room = n_ctx < 20 ? n_ctx : 20;
        if (o->kv_pages && (int64_t)o->kv_pages * 16 < room) room = (int64_t)o->kv_pages * 16;
        const int w_out = room > 4 ? 4 : (int)room - 1, w_in = (int)room - w_out;
        for (int i = 0; i < w_in; i++) prompt[i] = rand_token(hp->n_vocab);
        glm_request r = {prompt, w_in, w_out, greedy, NULL, 0, 1, serve_event, &w};
        if ((rc = glm_sched_submit(s, &r, NULL))) goto done;
        while ((rc = glm_sched_step(s)) > 0) {}
        if (rc < 0) goto done;
        glm_sched_cache_clear(s);
        serve_n_itl = 0;
    }
    glm_sched_stats st0;
    glm_sched_get_stats(s, &st0);
    long long out_tokens = 0;
    const double t0 = tool_now();
    for (int i = 0; i < n_req; i++) {
        const int n_in = serve_draw(o->in_lo, o->in_hi), n_out = serve_draw(o->out_lo, o->out_hi);
        memcpy(prompt, prefix, sizeof(int32_t) * (size_t)o->shared_prefix);
        for (int k = 0; k < n_in; k++) prompt[o->shared_prefix + k] = rand_token(hp->n_vocab);
        glm_request r = {prompt, o->shared_prefix + n_in, n_out, greedy, NULL, 0, 1, serve_event, &rs[i]};
        rs[i].t_submit = t0;
        if ((rc = glm_sched_submit(s, &r, NULL))) goto done;
        out_tokens += n_out;
    }
    /* KV utilisation: time-weighted over the steps, and its peak */
    double kv_area = 0, kv_peak = 0, t_prev = t0;
    glm_sched_stats st;
    for (;;) {
        glm_sched_get_stats(s, &st);
        const double u = st.kv_pages_total ? (double)st.kv_pages_used / st.kv_pages_total : 0;
        if (u > kv_peak) kv_peak = u;
        rc = glm_sched_step(s);
        const double t = tool_now();
        glm_sched_get_stats(s, &st);
        const double u2 = st.kv_pages_total ? (double)st.kv_pages_used / st.kv_pages_total : 0;
        if (u2 > kv_peak) kv_peak = u2;
        kv_area += (t - t_prev) * (u > u2 ? u : u2);
        t_prev = t;
        if (rc <= 0) break;
    }
    if (rc < 0) goto done;
    const double wall = tool_now() - t0;
    double *ttft = malloc(sizeof(double) * (size_t)n_req);
    if (!ttft) { rc = GLM_ERR_OOM; fprintf(stderr, PROG ": error: out of memory\n"); goto done; }
    long long gen = 0;
    for (int i = 0; i < n_req; i++) { ttft[i] = rs[i].t_first - rs[i].t_submit; gen += rs[i].n_gen; }
    const double req_s = n_req / wall, tok_s = (double)gen / wall;
    const double ttft50 = 1e3 * quantile(ttft, (size_t)n_req, 0.5), ttft99 = 1e3 * quantile(ttft, (size_t)n_req, 0.99);
    const double itl50 = 1e3 * quantile(serve_itl, serve_n_itl, 0.5), itl99 = 1e3 * quantile(serve_itl, serve_n_itl, 0.99);
    const double kv_mean = wall > 0 ? kv_area / wall : 0;
    const unsigned long long preempt = (unsigned long long)(st.preemptions - st0.preemptions);
    const double prompt_tok = (double)(st.prompt_tokens - st0.prompt_tokens);
    const double hit = prompt_tok > 0 ? (double)(st.cached_tokens - st0.cached_tokens) / prompt_tok : 0;
    const unsigned long long drafted = (unsigned long long)(st.draft_tokens - st0.draft_tokens);
    const unsigned long long accepted = (unsigned long long)(st.accepted_tokens - st0.accepted_tokens);
    const double acc = drafted ? (double)accepted / (double)drafted : 0;
    /* where a step's time goes: the forward, the picking after it, the scheduler's own rest */
    const double n_steps = (double)(st.steps - st0.steps);
    const double step_ms = n_steps ? 1e3 * (st.t_step - st0.t_step) / n_steps : 0;
    const double fwd_ms = n_steps ? 1e3 * (st.t_forward - st0.t_forward) / n_steps : 0;
    const double pick_ms = n_steps ? 1e3 * (st.t_sample - st0.t_sample) / n_steps : 0;
    const double n_pre = (double)(st.prefill_steps - st0.prefill_steps), t_pre = st.t_prefill_step - st0.t_prefill_step;
    const double dec_ms = n_steps > n_pre ? 1e3 * (st.t_step - st0.t_step - t_pre) / (n_steps - n_pre) : 0;
    free(ttft);
    if (gen != out_tokens) fprintf(stderr, PROG ": warning: %lld tokens generated, %lld asked\n", gen, out_tokens);
    char test[96], in_s[24], out_s[24];
    if (o->in_lo == o->in_hi) snprintf(in_s, sizeof in_s, "%d", o->in_lo); else snprintf(in_s, sizeof in_s, "%d:%d", o->in_lo, o->in_hi);
    if (o->out_lo == o->out_hi) snprintf(out_s, sizeof out_s, "%d", o->out_lo); else snprintf(out_s, sizeof out_s, "%d:%d", o->out_lo, o->out_hi);
    snprintf(test, sizeof test, "serve np%d in%s out%s", o->np, in_s, out_s);
    const char *desc = glm_model_desc(m), *dname = dev == GLM_DEVICE_CUDA ? "cuda" : "cpu";
    if (!strcmp(out_fmt, "md")) {
        printf("| model | device | test | requests | req/s | output t/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
               "| KV mean | KV peak | preemptions | prefix hits |%s\n", o->n_draft ? " draft | acceptance |" : "");
        printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |%s\n",
               o->n_draft ? " ---: | ---: |" : "");
        printf("| %s | %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f%% | %.1f%% | %llu | %.1f%% |", desc, dname,
               test, n_req, req_s, tok_s, ttft50, ttft99, itl50, itl99, 100 * kv_mean, 100 * kv_peak, preempt, 100 * hit);
        if (o->n_draft) printf(" %d | %.3f (%llu of %llu) |", o->n_draft, acc, accepted, drafted);
        printf("\n\n%.0f steps, %.3f ms a step: forward %.3f ms, picking the tokens %.3f ms, the scheduler's own work %.3f ms; "
               "%.0f steps with prompt chunks took %.1f%% of the wall time, %.3f ms a step; the decode-only steps %.3f ms a step\n",
               n_steps, step_ms, fwd_ms, pick_ms, step_ms - fwd_ms - pick_ms, n_pre, wall > 0 ? 100.0 * t_pre / wall : 0,
               n_pre ? 1e3 * t_pre / n_pre : 0, dec_ms);
    } else if (!strcmp(out_fmt, "csv")) {
        printf("model,device,test,requests,req_per_s,output_tok_per_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,kv_util_mean,"
               "kv_util_peak,preemptions,prefix_hit_ratio,steps,step_ms,forward_ms,sample_ms,prefill_steps,decode_step_ms%s\n",
               o->n_draft ? ",draft,acceptance,draft_tokens,accepted_tokens" : "");
        printf("\"%s\",%s,%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%llu,%.4f,%.0f,%.4f,%.4f,%.4f,%.0f,%.4f", desc, dname, test, n_req,
               req_s, tok_s, ttft50, ttft99, itl50, itl99, kv_mean, kv_peak, preempt, hit, n_steps, step_ms, fwd_ms, pick_ms, n_pre, dec_ms);
        if (o->n_draft) printf(",%d,%.4f,%llu,%llu", o->n_draft, acc, drafted, accepted);
        printf("\n");
    } else {
        printf("{\n  \"model\": \"%s\",\n  \"device\": \"%s\",\n  \"test\": \"%s\",\n  \"requests\": %d,\n  \"np\": %d,\n"
               "  \"batch_tokens\": %d,\n  \"kv_pages\": %d,\n  \"req_per_s\": %.4f,\n  \"output_tok_per_s\": %.4f,\n"
               "  \"ttft_p50_ms\": %.4f,\n  \"ttft_p99_ms\": %.4f,\n  \"itl_p50_ms\": %.4f,\n  \"itl_p99_ms\": %.4f,\n"
               "  \"kv_util_mean\": %.4f,\n  \"kv_util_peak\": %.4f,\n  \"preemptions\": %llu,\n  \"prefix_hit_ratio\": %.4f,\n"
               "  \"steps\": %.0f,\n  \"step_ms\": %.4f,\n  \"forward_ms\": %.4f,\n  \"sample_ms\": %.4f,\n"
               "  \"prefill_steps\": %.0f,\n  \"decode_step_ms\": %.4f,\n"
               "  \"draft\": %d,\n  \"draft_tokens\": %llu,\n  \"accepted_tokens\": %llu,\n  \"acceptance\": %.4f\n}\n",
               desc, dname, test, n_req, o->np, o->batch_tokens, st.kv_pages_total, req_s, tok_s, ttft50, ttft99, itl50, itl99,
               kv_mean, kv_peak, preempt, hit, n_steps, step_ms, fwd_ms, pick_ms, n_pre, dec_ms, o->n_draft, drafted, accepted, acc);
    }
done:
    if (rc && rc != GLM_ERR_OOM) fprintf(stderr, PROG ": error: %s\n", glm_last_error());
    glm_sched_free(s);
    glm_ctx_free(ctx);
    free(rs);
    free(prefix);
    free(prompt);
    free(serve_itl);
    serve_itl = NULL;
    serve_n_itl = serve_cap_itl = 0;
    return rc ? EXIT_FAIL : EXIT_OK;
}

#endif
