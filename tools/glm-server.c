/* glm-server - an OpenAI-compatible HTTP server: POST /v1/completions and
 * /v1/chat/completions (streaming by server-sent events), GET /v1/models, /health and
 * /metrics (Prometheus text), on libmicrohttpd with a thread a connection. One engine
 * thread runs the library's scheduler (continuous batching, prefix cache, preemption);
 * connections hand it requests through a queue and read their tokens back from a
 * channel a request. A client that goes away cancels its request. */
#include "common.h"
#include "json.h"
#include "server-body.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define PROG "glm-server"

/* Prints the --help text. */
static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-server [-m DIR] [--host H] [--port P] [options]\n"
        "\n"
        "model and backend:\n"
        "  -m, --model DIR          model directory (default: %s)\n"
        "  --alias NAME             the model's name in the API (default: the directory's name)\n"
        "  --device cpu|cuda        backend (default: cuda when a GPU is usable, else cpu)\n"
        "  -t, --threads N          CPU threads (default: all cores)\n"
        "  -c, --ctx-size N         tokens one request may hold, prompt and output (default: the\n"
        "                           model's trained context, at most 4096)\n"
        "  -np, --parallel N        requests decoding together (default 4)\n"
        "  --batch-tokens N         tokens a step feeds at most, decode first then prompt chunks\n"
        "                           (default 8192 on CUDA, 512 on the CPU)\n"
        "  --kv-pages N             KV pages of 16 tokens (default: enough for every request at\n"
        "                           its full context; CUDA: from --kv-frac)\n"
        "  --kv-type bf16|fp8       CUDA KV cache type (default bf16)\n"
        "  --kv-frac F              CUDA: fraction of free GPU memory for the KV cache (default 0.9)\n"
        "  --no-prefix-cache        do not share prompt pages between requests\n",
        tool_default_model());
    tool_tp_usage(f, 27);
    tool_spec_usage(f, 27);
    fprintf(f,
        "                           (--draft: the scheduler drafts for every decoding request and\n"
        "                           verifies all of them in its one forward a step; greedy\n"
        "                           requests give the same text as without)\n"
        "server:\n"
        "  --host H                 address to listen on (default 127.0.0.1)\n"
        "  --port P                 port (default 8080; 0 = any free port, printed on stderr)\n"
        "  --api-key KEY            require 'Authorization: Bearer KEY' (all but /health)\n"
        "  --max-queue N            requests waiting beyond the running ones before 429 (default 64)\n"
        "  --max-body N             largest request body in bytes (default 1048576; larger: 413)\n"
        "  --timeout S              seconds a client may stay silent (default 60)\n"
        "  -h, --help               this text\n"
        "\n"
        "SIGINT or SIGTERM stops the server: running requests end, connections close.\n");
}

/* ---- the server's state ---- */
typedef struct {
    const double *le;           /* upper bounds, the last +Inf */
    int n;
    uint64_t count[16];
    double sum;
    uint64_t total;
} histogram;

static const double ttft_le[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, INFINITY};
static const double itl_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, INFINITY};

static struct {
    /* configuration */
    const char *name;           /* the model's name in the API */
    const char *api_key;
    int n_parallel, max_queue, n_ctx;
    int n_room;                 /* tokens one request may hold: the context, or all KV pages if fewer */
    long max_body;
    glm_tokenizer *tok;
    glm_chat_format chat_fmt;
    glm_model *model;
    glm_ctx *ctx;
    glm_sched *sched;
    time_t started;
    /* engine hand-off */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *pending;        /* submitted by connections, not yet in the scheduler */
    int n_pending, n_inflight;  /* in the hand-off queue / submitted and not finished */
    int stopping;
    atomic_int cancels;         /* cancellations asked since the engine last looked */
    atomic_int n_streams;       /* streaming responses MHD still holds */
    /* metrics (under mmu) */
    pthread_mutex_t mmu;
    glm_sched_stats st;
    histogram ttft, itl;
    uint64_t requests_ok, requests_failed, requests_rejected;
    atomic_uint_fast64_t next_id;
    uint64_t id_prefix;         /* random at start: response ids differ across restarts */
} S = {
    .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .mmu = PTHREAD_MUTEX_INITIALIZER,
    .ttft = {ttft_le, sizeof ttft_le / sizeof *ttft_le, {0}, 0, 0},
    .itl = {itl_le, sizeof itl_le / sizeof *itl_le, {0}, 0, 0},
};

/* Counts v into the histogram (cumulative buckets). */
static void hist_add(histogram *h, double v) {
    for (int i = 0; i < h->n; i++) if (v <= h->le[i]) h->count[i]++;
    h->sum += v;
    h->total++;
}

/* One request between a connection and the engine. The connection and the engine each
 * hold a reference; the last one out frees it. */
typedef struct job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    struct job *next;           /* the hand-off queue, then the engine's active list */
    /* input */
    int32_t *prompt;
    int n_prompt;
    glm_request rq;
    char *stop_copy[BODY_MAX_STOP];
    int chat, stream, include_usage, think_open;  /* think_open: the prompt ends in "<think>" */
    char id[48];
    long created;
    /* output (under mu) */
    sbuf out;                   /* text not yet taken by the connection */
    int n_gen, n_cached;
    glm_finish_reason fin;
    int done;
    char err[256];              /* set when the engine refused it */
    atomic_int cancel;          /* the client went away */
    int64_t sched_id;
    double t_submit, t_last;
    /* connection side of a stream */
    sbuf pend;                  /* SSE bytes not yet handed to MHD */
    size_t pend_off;
    int sent_role, ended;
    think_split think;          /* reasoning / content of a chat answer */
} job;

/* Drops a reference to j; the last one frees it. */
static void job_unref(job *j) {
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    free(j->prompt);
    for (int i = 0; i < BODY_MAX_STOP; i++) free(j->stop_copy[i]);
    sb_free(&j->out);
    sb_free(&j->pend);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* ---- waking the connections ----
 * The engine thread does not wake a job's connection itself (a wake-up is a system call,
 * and with every stream waiting for its next token a step would pay one a request): it
 * collects the jobs whose output changed (wake_push), hands them over once a step
 * (wake_flush), and the notifier thread wakes them while the engine runs the next step. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job **q;                    /* jobs to wake, each holding a reference */
    int n, cap, stop;
} W = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
static job **wake_b;            /* engine thread only: this step's jobs to wake, referenced */
static int wake_n, wake_cap;

/* Wakes whoever waits on j's output. */
static void wake_now(job *j) {
    pthread_mutex_lock(&j->mu);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* Engine thread, j->mu held: queues j for waking (a reference taken), or wakes it now
 * when the queue cannot grow. */
static void wake_push_locked(job *j) {
    if (wake_n == wake_cap) {
        const int cap = wake_cap ? 2 * wake_cap : 256;
        job **nb = realloc(wake_b, (size_t)cap * sizeof *nb);
        if (!nb) { pthread_cond_broadcast(&j->cv); return; }
        wake_b = nb;
        wake_cap = cap;
    }
    j->refs++;
    wake_b[wake_n++] = j;
}

/* Engine thread: hands this step's jobs to the notifier (woken here when its queue
 * cannot grow). */
static void wake_flush(void) {
    if (!wake_n) return;
    pthread_mutex_lock(&W.mu);
    if (W.n + wake_n > W.cap) {
        const int cap = 2 * (W.n + wake_n);
        job **nq = realloc(W.q, (size_t)cap * sizeof *nq);
        if (nq) { W.q = nq; W.cap = cap; }
    }
    int i = 0;
    if (W.n + wake_n <= W.cap)
        for (; i < wake_n; i++) W.q[W.n++] = wake_b[i];
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
    for (; i < wake_n; i++) { wake_now(wake_b[i]); job_unref(wake_b[i]); }
    wake_n = 0;
}

/* The notifier thread: wakes the queued jobs until the server stops. It copies the
 * queue out under the lock into an array of its own. Returns NULL. */
static void *notifier(void *arg) {
    (void)arg;
    job **mine = NULL;
    int cap = 0;
    for (;;) {
        pthread_mutex_lock(&W.mu);
        while (!W.n && !W.stop) pthread_cond_wait(&W.cv, &W.mu);
        const int n = W.n;
        if (!n) { pthread_mutex_unlock(&W.mu); break; }
        if (n > cap) {
            job **nm = realloc(mine, (size_t)n * sizeof *nm);
            if (nm) { mine = nm; cap = n; }
        }
        const int took = n <= cap ? n : cap;   /* no room: the rest stays queued for the next turn */
        memcpy(mine, W.q, (size_t)took * sizeof *mine);
        memmove(W.q, W.q + took, (size_t)(n - took) * sizeof *W.q);
        W.n = n - took;
        pthread_mutex_unlock(&W.mu);
        for (int i = 0; i < took; i++) { wake_now(mine[i]); job_unref(mine[i]); }
        if (!took) {  /* out of memory: wake them from the queue itself, one at a time */
            pthread_mutex_lock(&W.mu);
            job *j = W.n ? W.q[--W.n] : NULL;
            pthread_mutex_unlock(&W.mu);
            if (j) { wake_now(j); job_unref(j); }
        }
    }
    free(mine);
    return NULL;
}

/* ---- the engine thread ---- */
static job *active;             /* engine thread only: jobs in the scheduler */

/* The scheduler's callback (engine thread): text into the job's channel, metrics. */
static void on_event(void *user, const glm_sched_event *ev) {
    job *j = user;
    const double now = tool_now();
    pthread_mutex_lock(&S.mmu);
    if (ev->token >= 0) {
        if (j->n_gen == 0) hist_add(&S.ttft, now - j->t_submit);
        else hist_add(&S.itl, now - j->t_last);
    }
    if (ev->finish) {
        if (ev->finish == GLM_FINISH_STOP || ev->finish == GLM_FINISH_LENGTH) S.requests_ok++;
        else S.requests_failed++;
    }
    pthread_mutex_unlock(&S.mmu);
    pthread_mutex_lock(&j->mu);
    if (ev->len) sb_add(&j->out, ev->text, ev->len);
    j->n_gen = ev->n_gen;
    j->n_cached = ev->n_cached;
    j->t_last = now;
    if (ev->finish) { j->fin = ev->finish; j->done = 1; }
    wake_push_locked(j);
    pthread_mutex_unlock(&j->mu);
    if (ev->finish) {
        for (job **pp = &active; *pp; pp = &(*pp)->next)
            if (*pp == j) { *pp = j->next; break; }
        pthread_mutex_lock(&S.mu);
        S.n_inflight--;
        pthread_mutex_unlock(&S.mu);
        job_unref(j);
    }
}

/* Ends a job the scheduler never took, with a message (engine thread). */
static void refuse(job *j, const char *msg) {
    pthread_mutex_lock(&j->mu);
    snprintf(j->err, sizeof j->err, "%s", msg);
    j->fin = GLM_FINISH_ERROR;
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&S.mu);
    S.n_inflight--;
    pthread_mutex_unlock(&S.mu);
    job_unref(j);
}

/* Copies the scheduler's statistics for /metrics. */
static void snapshot(void) {
    glm_sched_stats st;
    glm_sched_get_stats(S.sched, &st);
    pthread_mutex_lock(&S.mu);
    st.waiting += S.n_pending;
    pthread_mutex_unlock(&S.mu);
    pthread_mutex_lock(&S.mmu);
    S.st = st;
    pthread_mutex_unlock(&S.mmu);
}

/* The engine thread: takes handed-off requests into the scheduler, applies cancellations
 * and runs steps until the server stops, then ends every request. Returns NULL. */
static void *engine(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&S.mu);
        while (!S.stopping && !S.pending && !atomic_load(&S.cancels) && glm_sched_idle(S.sched)) pthread_cond_wait(&S.cv, &S.mu);
        job *in = S.pending;
        S.pending = NULL;
        S.n_pending = 0;
        const int stop = S.stopping;
        pthread_mutex_unlock(&S.mu);
        /* oldest first: the queue is newest first */
        job *rev = NULL;
        while (in) { job *n = in->next; in->next = rev; rev = in; in = n; }
        for (job *j = rev, *n; j; j = n) {
            n = j->next;
            j->next = NULL;
            if (stop) { refuse(j, "the server is shutting down"); continue; }
            if (glm_sched_submit(S.sched, &j->rq, &j->sched_id)) { refuse(j, glm_last_error()); continue; }
            j->next = active;
            active = j;
        }
        atomic_store(&S.cancels, 0);
        for (job *j = active, *n; j; j = n) {
            n = j->next;
            if (stop || atomic_load(&j->cancel)) glm_sched_cancel(S.sched, j->sched_id);
        }
        wake_flush();
        snapshot();
        if (stop) break;
        if (!glm_sched_idle(S.sched)) {
            int rc = glm_sched_step(S.sched);
            wake_flush();
            if (rc < 0) fprintf(stderr, PROG ": error: a step failed, its requests ended: %s\n", glm_last_error());
            snapshot();
        }
    }
    return NULL;
}

/* ---- HTTP ---- */
typedef struct {
    sbuf body;
    int too_big, routed;
} conn_state;

/* Queues a response of status with a JSON (or other) body. */
static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type, const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* An OpenAI-style error object: {"error": {"message", "type", "param", "code"}}. */
static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *type, const char *param,
                                   const char *code, const char *msg) {
    sbuf b = {0};
    sb_printf(&b, "{\"error\":{\"message\":");
    sb_json(&b, msg, strlen(msg));
    sb_printf(&b, ",\"type\":\"%s\",\"param\":", type);
    if (param) sb_json(&b, param, strlen(param)); else sb_printf(&b, "null");
    sb_printf(&b, ",\"code\":");
    if (code) sb_json(&b, code, strlen(code)); else sb_printf(&b, "null");
    sb_printf(&b, "}}");
    enum MHD_Result r = b.s ? reply(c, status, "application/json", b.s, b.n) : MHD_NO;
    sb_free(&b);
    pthread_mutex_lock(&S.mmu);
    S.requests_rejected++;
    pthread_mutex_unlock(&S.mmu);
    return r;
}

static const char *finish_str(glm_finish_reason f) { return f == GLM_FINISH_LENGTH ? "length" : "stop"; }

/* The usage object. */
static void add_usage(sbuf *b, const job *j) {
    sb_printf(b, "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
              "\"prompt_tokens_details\":{\"cached_tokens\":%d}}", j->n_prompt, j->n_gen, j->n_prompt + j->n_gen, j->n_cached);
}

/* The head of a response object or chunk, up to "choices":. */
static void add_head(sbuf *b, const job *j, const char *object) {
    sb_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", j->id, object, j->created);
    sb_json(b, S.name, strlen(S.name));
    sb_printf(b, ",\"choices\":");
}

/* Appends one SSE event of generated text (and the finish reason when fin). */
static void sse_text(job *j, const char *reason, size_t nr, const char *content, size_t nc, const char *fin) {
    sbuf *b = &j->pend;
    if (j->chat) {
        if (!j->sent_role || nr || nc || fin) {
            sb_printf(b, "data: ");
            add_head(b, j, "chat.completion.chunk");
            sb_printf(b, "[{\"index\":0,\"delta\":{");
            int comma = 0;
            if (!j->sent_role) { sb_printf(b, "\"role\":\"assistant\""); comma = 1; j->sent_role = 1; }
            if (nr) { sb_printf(b, "%s\"reasoning_content\":", comma ? "," : ""); sb_json(b, reason, nr); comma = 1; }
            if (nc || (!nr && comma && !fin)) { sb_printf(b, "%s\"content\":", comma ? "," : ""); sb_json(b, content, nc); }
            sb_printf(b, "},\"logprobs\":null,\"finish_reason\":");
            if (fin) sb_printf(b, "\"%s\"", fin); else sb_printf(b, "null");
            sb_printf(b, "}]}\n\n");
        }
    } else if (nc || fin) {
        sb_printf(b, "data: ");
        add_head(b, j, "text_completion");
        sb_printf(b, "[{\"index\":0,\"text\":");
        sb_json(b, content, nc);
        sb_printf(b, ",\"logprobs\":null,\"finish_reason\":");
        if (fin) sb_printf(b, "\"%s\"", fin); else sb_printf(b, "null");
        sb_printf(b, "}]}\n\n");
    }
}

/* MHD's reader of a streaming response: SSE events as the engine produces text. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    job *j = cls;
    while (j->pend_off >= j->pend.n) {
        if (j->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        j->pend.n = j->pend_off = 0;
        pthread_mutex_lock(&j->mu);
        if (!j->out.n && !j->done) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        }
        sbuf text = j->out;
        memset(&j->out, 0, sizeof j->out);
        const int done = j->done;
        const glm_finish_reason fin = j->fin;
        char err[256];
        snprintf(err, sizeof err, "%s", j->err);
        pthread_mutex_unlock(&j->mu);
        sbuf reason = {0}, content = {0};
        if (j->chat) think_feed(&j->think, text.s ? text.s : "", text.n, done, &reason, &content);
        else sb_add(&content, text.s ? text.s : "", text.n);
        sb_free(&text);
        if (done && (fin == GLM_FINISH_ERROR || fin == GLM_FINISH_CANCELLED)) {
            const char *msg = err[0] ? err : fin == GLM_FINISH_CANCELLED ? "the request was cancelled (the server is stopping)"
                                                                        : "generation failed on the server";
            sb_printf(&j->pend, "data: {\"error\":{\"message\":");
            sb_json(&j->pend, msg, strlen(msg));
            sb_printf(&j->pend, ",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n");
            j->ended = 1;
        } else {
            sse_text(j, reason.s, reason.n, content.s, content.n, done ? finish_str(fin) : NULL);
            if (done) {
                if (j->include_usage) {
                    sb_printf(&j->pend, "data: ");
                    add_head(&j->pend, j, j->chat ? "chat.completion.chunk" : "text_completion");
                    sb_printf(&j->pend, "[],");
                    add_usage(&j->pend, j);
                    sb_printf(&j->pend, "}\n\n");
                }
                sb_printf(&j->pend, "data: [DONE]\n\n");
                j->ended = 1;
            } else if (!j->pend.n) {
                sb_printf(&j->pend, ": keep-alive\n\n");  /* a write, so a client that left is noticed */
            }
        }
        sb_free(&reason);
        sb_free(&content);
        if (!j->pend.s) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = j->pend.n - j->pend_off;
    if (n > max) n = max;
    memcpy(buf, j->pend.s + j->pend_off, n);
    j->pend_off += n;
    return (ssize_t)n;
}

/* Asks the engine to cancel j (the client went away). */
static void cancel_job(job *j) {
    atomic_store(&j->cancel, 1);
    atomic_fetch_add(&S.cancels, 1);
    pthread_mutex_lock(&S.mu);
    pthread_cond_signal(&S.cv);
    pthread_mutex_unlock(&S.mu);
}

/* MHD is done with a streaming response: a request still running is cancelled. */
static void stream_free(void *cls) {
    job *j = cls;
    pthread_mutex_lock(&j->mu);
    int done = j->done;
    pthread_mutex_unlock(&j->mu);
    if (!done) cancel_job(j);
    job_unref(j);
    atomic_fetch_sub(&S.n_streams, 1);
}

/* POST /v1/completions and /v1/chat/completions. */
static enum MHD_Result handle_completion(struct MHD_Connection *c, int chat, const char *body, size_t len) {
    body_req b;
    char err[512];
    const char *param;
    if (body_parse(body, len, chat, &b, err, sizeof err, &param)) {
        enum MHD_Result r = reply_error(c, 400, "invalid_request_error", param, NULL, err);
        body_free(&b);
        return r;
    }
    if (b.model && strcmp(b.model, S.name)) {
        snprintf(err, sizeof err, "The model '%.200s' does not exist; this server has '%.200s'", b.model, S.name);
        body_free(&b);
        return reply_error(c, 404, "invalid_request_error", "model", "model_not_found", err);
    }
    /* the prompt's tokens */
    int32_t *ids = NULL;
    int n_ids = 0, think_open = 0, rc = GLM_OK;
    if (chat) {
        char *text = NULL;
        const int thinking = b.thinking != 0;
        rc = glm_chat_render(S.chat_fmt, b.msgs, b.n_msgs, 1, thinking, &text, NULL);
        if (!rc) {
            size_t tl = strlen(text);
            think_open = tl >= 7 && !strcmp(text + tl - 7, "<think>");
            rc = glm_tokenize(S.tok, text, tl, GLM_TOK_PARSE_SPECIAL, &ids, &n_ids);
        }
        free(text);
    } else if (b.prompt_ids) {
        ids = b.prompt_ids;
        n_ids = b.n_prompt_ids;
        b.prompt_ids = NULL;
    } else {
        rc = glm_tokenize(S.tok, b.prompt, b.prompt_len, GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL, &ids, &n_ids);
    }
    if (rc) {
        snprintf(err, sizeof err, "%s", glm_last_error());
        body_free(&b);
        free(ids);
        return reply_error(c, 400, "invalid_request_error", chat ? "messages" : "prompt", NULL, err);
    }
    if (n_ids < 1 || n_ids >= S.n_room) {
        snprintf(err, sizeof err, "the prompt is %d tokens; this server's context holds %d tokens, prompt and output", n_ids, S.n_room);
        body_free(&b);
        free(ids);
        return reply_error(c, 400, "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded", err);
    }
    int max_tokens = b.max_tokens < 0 ? S.n_room - n_ids : b.max_tokens;
    if ((int64_t)n_ids + max_tokens > S.n_room) {
        snprintf(err, sizeof err, "max_tokens %d with a prompt of %d tokens is past this server's context of %d tokens",
                 max_tokens, n_ids, S.n_room);
        body_free(&b);
        free(ids);
        return reply_error(c, 400, "invalid_request_error", "max_tokens", "context_length_exceeded", err);
    }
    job *j = calloc(1, sizeof *j);
    if (!j) { body_free(&b); free(ids); return reply_error(c, 500, "server_error", NULL, NULL, "out of memory"); }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 2;
    j->prompt = ids;
    j->n_prompt = n_ids;
    j->chat = chat;
    j->stream = b.stream;
    j->include_usage = b.include_usage;
    j->think.mode = think_open ? 1 : 0;
    const uint64_t num = atomic_fetch_add(&S.next_id, 1);
    snprintf(j->id, sizeof j->id, "%s-%016llx-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)S.id_prefix,
             (unsigned long long)num);
    j->created = (long)time(NULL);
    j->t_submit = tool_now();  /* time to first token counts from here: the queue included */
    glm_sampler_params sp = glm_sampler_default_params();
    sp.temp = (float)b.temperature;
    sp.top_p = (float)b.top_p;
    sp.top_k = b.top_k;
    sp.min_p = (float)b.min_p;
    sp.presence_penalty = (float)b.presence_penalty;
    sp.frequency_penalty = (float)b.frequency_penalty;
    sp.repeat_penalty = (float)b.repetition_penalty;
    sp.repeat_last_n = -1;
    sp.seed = b.has_seed ? b.seed : (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull + num;
    for (int i = 0; i < b.n_stop; i++) j->stop_copy[i] = strdup(b.stop[i]);
    j->rq = (glm_request){ids, n_ids, max_tokens, sp, (const char *const *)j->stop_copy, b.n_stop, b.ignore_eos, on_event, j};
    body_free(&b);
    for (int i = 0; i < j->rq.n_stop; i++)
        if (!j->stop_copy[i]) { j->refs = 1; job_unref(j); return reply_error(c, 500, "server_error", NULL, NULL, "out of memory"); }
    /* the hand-off, unless the queue is full */
    pthread_mutex_lock(&S.mu);
    int full = S.n_inflight >= S.n_parallel + S.max_queue, stopping = S.stopping;
    if (!full && !stopping) {
        j->next = S.pending;
        S.pending = j;
        S.n_pending++;
        S.n_inflight++;
        pthread_cond_signal(&S.cv);
    }
    pthread_mutex_unlock(&S.mu);
    if (full || stopping) {
        j->refs = 1;
        job_unref(j);
        if (stopping) return reply_error(c, 503, "server_error", NULL, NULL, "the server is shutting down");
        snprintf(err, sizeof err, "the queue is full: %d requests running or waiting (--parallel %d, --max-queue %d)",
                 S.n_parallel + S.max_queue, S.n_parallel, S.max_queue);
        return reply_error(c, 429, "rate_limit_error", NULL, "queue_full", err);
    }
    if (j->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, j, stream_free);
        atomic_fetch_add(&S.n_streams, 1);
        if (!r) { stream_free(j); return MHD_NO; }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ok = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ok;
    }
    /* a whole answer: wait for the end, cancelling when the client hangs up */
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    const int fd = ci ? ci->connect_fd : -1;
    double t_check = tool_now();
    pthread_mutex_lock(&j->mu);
    while (!j->done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);  /* woken by every token: look at the socket every 200 ms */
        if (j->done || fd < 0 || atomic_load(&j->cancel) || tool_now() - t_check < 0.2) continue;
        t_check = tool_now();
        struct pollfd pf = {fd, POLLRDHUP, 0};
        if (poll(&pf, 1, 0) > 0 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            pthread_mutex_unlock(&j->mu);
            cancel_job(j);
            pthread_mutex_lock(&j->mu);
        }
    }
    pthread_mutex_unlock(&j->mu);
    enum MHD_Result res;
    if (j->fin == GLM_FINISH_ERROR || j->fin == GLM_FINISH_CANCELLED) {
        const int refused = j->err[0] != 0;
        res = reply_error(c, refused ? 400 : 500, refused ? "invalid_request_error" : "server_error", NULL, NULL,
                          refused ? j->err : j->fin == GLM_FINISH_CANCELLED ? "the request was cancelled (the server is stopping)"
                                                                           : "generation failed on the server");
    } else {
        sbuf o = {0}, reason = {0}, content = {0};
        if (chat) think_feed(&j->think, j->out.s ? j->out.s : "", j->out.n, 1, &reason, &content);
        else sb_add(&content, j->out.s ? j->out.s : "", j->out.n);
        add_head(&o, j, chat ? "chat.completion" : "text_completion");
        if (chat) {
            sb_printf(&o, "[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
            sb_json(&o, content.s ? content.s : "", content.n);
            if (reason.n) { sb_printf(&o, ",\"reasoning_content\":"); sb_json(&o, reason.s, reason.n); }
            sb_printf(&o, "},\"logprobs\":null,\"finish_reason\":\"%s\"}],", finish_str(j->fin));
        } else {
            sb_printf(&o, "[{\"index\":0,\"text\":");
            sb_json(&o, content.s ? content.s : "", content.n);
            sb_printf(&o, ",\"logprobs\":null,\"finish_reason\":\"%s\"}],", finish_str(j->fin));
        }
        add_usage(&o, j);
        sb_printf(&o, "}");
        res = o.s ? reply(c, 200, "application/json", o.s, o.n) : reply_error(c, 500, "server_error", NULL, NULL, "out of memory");
        sb_free(&o);
        sb_free(&reason);
        sb_free(&content);
    }
    job_unref(j);
    return res;
}

/* GET /metrics: Prometheus text format. */
static enum MHD_Result handle_metrics(struct MHD_Connection *c) {
    sbuf b = {0};
    pthread_mutex_lock(&S.mmu);
    const glm_sched_stats st = S.st;
    const histogram h[2] = {S.ttft, S.itl};
    const uint64_t ok = S.requests_ok, failed = S.requests_failed, rejected = S.requests_rejected;
    pthread_mutex_unlock(&S.mmu);
    sb_printf(&b, "# HELP glm_requests_running Requests holding a sequence slot.\n# TYPE glm_requests_running gauge\n"
              "glm_requests_running %d\n", st.running);
    sb_printf(&b, "# HELP glm_requests_waiting Requests queued for a slot or KV pages (preempted ones too).\n"
              "# TYPE glm_requests_waiting gauge\nglm_requests_waiting %d\n", st.waiting);
    sb_printf(&b, "# HELP glm_kv_usage_ratio KV pages held by requests over all pages.\n# TYPE glm_kv_usage_ratio gauge\n"
              "glm_kv_usage_ratio %.6f\n", st.kv_pages_total ? (double)st.kv_pages_used / st.kv_pages_total : 0.0);
    sb_printf(&b, "# HELP glm_kv_pages_cached KV pages held only by the prefix cache.\n# TYPE glm_kv_pages_cached gauge\n"
              "glm_kv_pages_cached %d\n", st.kv_pages_cached);
    sb_printf(&b, "# HELP glm_prefix_cache_hit_ratio Prompt tokens found in the prefix cache over all prompt tokens.\n"
              "# TYPE glm_prefix_cache_hit_ratio gauge\nglm_prefix_cache_hit_ratio %.6f\n",
              st.prompt_tokens ? (double)st.cached_tokens / (double)st.prompt_tokens : 0.0);
    sb_printf(&b, "# HELP glm_prompt_tokens_total Prompt tokens of admitted requests.\n# TYPE glm_prompt_tokens_total counter\n"
              "glm_prompt_tokens_total %llu\n", (unsigned long long)st.prompt_tokens);
    sb_printf(&b, "# HELP glm_prompt_tokens_cached_total Prompt tokens taken from the prefix cache.\n"
              "# TYPE glm_prompt_tokens_cached_total counter\nglm_prompt_tokens_cached_total %llu\n",
              (unsigned long long)st.cached_tokens);
    sb_printf(&b, "# HELP glm_computed_tokens_total Tokens fed to the model (recomputation included).\n"
              "# TYPE glm_computed_tokens_total counter\nglm_computed_tokens_total %llu\n", (unsigned long long)st.computed_tokens);
    sb_printf(&b, "# HELP glm_generation_tokens_total Tokens generated.\n# TYPE glm_generation_tokens_total counter\n"
              "glm_generation_tokens_total %llu\n", (unsigned long long)st.generated_tokens);
    sb_printf(&b, "# HELP glm_preemptions_total Requests evicted for KV pages (recomputed later).\n"
              "# TYPE glm_preemptions_total counter\nglm_preemptions_total %llu\n", (unsigned long long)st.preemptions);
    sb_printf(&b, "# HELP glm_spec_draft_tokens_total Tokens the MTP layer drafted (--draft).\n"
              "# TYPE glm_spec_draft_tokens_total counter\nglm_spec_draft_tokens_total %llu\n", (unsigned long long)st.draft_tokens);
    sb_printf(&b, "# HELP glm_spec_accepted_tokens_total Drafted tokens the model accepted (--draft).\n"
              "# TYPE glm_spec_accepted_tokens_total counter\nglm_spec_accepted_tokens_total %llu\n",
              (unsigned long long)st.accepted_tokens);
    sb_printf(&b, "# HELP glm_requests_finished_total Requests ended, by outcome.\n# TYPE glm_requests_finished_total counter\n"
              "glm_requests_finished_total{outcome=\"ok\"} %llu\nglm_requests_finished_total{outcome=\"cancelled_or_failed\"} %llu\n",
              (unsigned long long)ok, (unsigned long long)failed);
    sb_printf(&b, "# HELP glm_requests_rejected_total Requests answered with an error status.\n"
              "# TYPE glm_requests_rejected_total counter\nglm_requests_rejected_total %llu\n", (unsigned long long)rejected);
    const char *names[2] = {"glm_time_to_first_token_seconds", "glm_inter_token_latency_seconds"};
    const char *help[2] = {"Seconds from submission to the first token.", "Seconds between a request's tokens."};
    for (int k = 0; k < 2; k++) {
        sb_printf(&b, "# HELP %s %s\n# TYPE %s histogram\n", names[k], help[k], names[k]);
        for (int i = 0; i < h[k].n; i++) {
            if (isinf(h[k].le[i])) sb_printf(&b, "%s_bucket{le=\"+Inf\"} %llu\n", names[k], (unsigned long long)h[k].count[i]);
            else sb_printf(&b, "%s_bucket{le=\"%g\"} %llu\n", names[k], h[k].le[i], (unsigned long long)h[k].count[i]);
        }
        sb_printf(&b, "%s_sum %.9f\n%s_count %llu\n", names[k], h[k].sum, names[k], (unsigned long long)h[k].total);
    }
    enum MHD_Result r = b.s ? reply(c, 200, "text/plain; version=0.0.4", b.s, b.n) : MHD_NO;
    sb_free(&b);
    return r;
}

/* Non-zero when the request carries the API key (or none is required). */
static int authorized(struct MHD_Connection *c) {
    if (!S.api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return h && !strncmp(h, "Bearer ", 7) && !strcmp(h + 7, S.api_key);
}

/* MHD's handler of a request: called for the headers, each piece of the body, and once
 * more at its end, when the request is routed. Returns MHD_YES, or MHD_NO to drop the
 * connection. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls) {
    (void)cls; (void)version;
    conn_state *cs = *con_cls;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)S.max_body) {
            char m[128];
            snprintf(m, sizeof m, "the request body is %s bytes, more than the limit of %ld", cl, S.max_body);
            cs->routed = 1;
            return reply_error(c, 413, "invalid_request_error", NULL, "request_too_large", m);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (cs->body.n + *upload_size > (size_t)S.max_body) cs->too_big = 1;
        else sb_add(&cs->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->routed) return MHD_YES;
    cs->routed = 1;
    if (cs->too_big) {
        char m[96];
        snprintf(m, sizeof m, "the request body is larger than the limit of %ld bytes", S.max_body);
        return reply_error(c, 413, "invalid_request_error", NULL, "request_too_large", m);
    }
    const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        if (!get) return reply_error(c, 405, "invalid_request_error", NULL, NULL, "/health takes GET");
        static const char ok[] = "{\"status\":\"ok\"}";
        return reply(c, 200, "application/json", ok, sizeof ok - 1);
    }
    const int known = !strcmp(url, "/v1/models") || !strcmp(url, "/metrics") || !strcmp(url, "/v1/completions") ||
                      !strcmp(url, "/v1/chat/completions");
    if (!known) {
        char m[300];
        snprintf(m, sizeof m, "no such path: %s %.200s", method, url);
        return reply_error(c, 404, "not_found_error", NULL, "not_found", m);
    }
    if (!authorized(c)) return reply_error(c, 401, "invalid_request_error", NULL, "invalid_api_key", "Incorrect or missing API key: send 'Authorization: Bearer KEY'");
    if (!strcmp(url, "/v1/models")) {
        if (!get) return reply_error(c, 405, "invalid_request_error", NULL, NULL, "/v1/models takes GET");
        sbuf b = {0};
        sb_printf(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
        sb_json(&b, S.name, strlen(S.name));
        sb_printf(&b, ",\"object\":\"model\",\"created\":%ld,\"owned_by\":\"glm.c\",\"max_model_len\":%d}]}", (long)S.started, S.n_room);
        enum MHD_Result r = b.s ? reply(c, 200, "application/json", b.s, b.n) : MHD_NO;
        sb_free(&b);
        return r;
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return reply_error(c, 405, "invalid_request_error", NULL, NULL, "/metrics takes GET");
        return handle_metrics(c);
    }
    if (!post) return reply_error(c, 405, "invalid_request_error", NULL, NULL, "the completion endpoints take POST");
    return handle_completion(c, !strcmp(url, "/v1/chat/completions"), cs->body.s ? cs->body.s : "", cs->body.n);
}

/* MHD is done with a request: frees its body buffer. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)c; (void)toe;
    conn_state *cs = *con_cls;
    if (!cs) return;
    sb_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *host = "127.0.0.1", *alias = NULL;
    int port = 8080, n_threads = 0, n_ctx = 0, batch_tokens = 0, kv_pages = 0, prefix_cache = 1, timeout = 60;
    float kv_frac = 0.9f;
    glm_kv_type kv_type = GLM_KV_BF16;
    tool_init(PROG);
    glm_device dev = tool_default_device();
    tool_tp_opts tpo = tool_tp_default();
    tool_spec_opts spo = {0, 0};
    S.n_parallel = 4;
    S.max_queue = 64;
    S.max_body = 1 << 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--alias")) alias = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--device")) dev = tool_device(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) n_threads = tool_int(a, tool_arg(argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) n_ctx = tool_int(a, tool_arg(argc, argv, &i), 2, 1 << 24);
        else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) S.n_parallel = tool_int(a, tool_arg(argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--batch-tokens")) batch_tokens = tool_int(a, tool_arg(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--kv-pages")) kv_pages = tool_int(a, tool_arg(argc, argv, &i), 1, INT32_MAX);
        else if (!strcmp(a, "--kv-type")) kv_type = tool_kv_type(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--kv-frac")) kv_frac = tool_float_in(a, tool_arg(argc, argv, &i), '(', 0, 1, ']');
        else if (!strcmp(a, "--no-prefix-cache")) prefix_cache = 0;
        else if (!strcmp(a, "--host")) host = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--port")) port = tool_int(a, tool_arg(argc, argv, &i), 0, 65535);
        else if (!strcmp(a, "--api-key")) {
            S.api_key = tool_arg(argc, argv, &i);
            if (!*S.api_key) tool_usage_error("--api-key is empty");
        } else if (!strcmp(a, "--max-queue")) S.max_queue = tool_int(a, tool_arg(argc, argv, &i), 0, 1 << 20);
        else if (!strcmp(a, "--max-body")) S.max_body = tool_int(a, tool_arg(argc, argv, &i), 64, 1 << 30);
        else if (!strcmp(a, "--timeout")) timeout = tool_int(a, tool_arg(argc, argv, &i), 1, 86400);
        else if (tool_tp_flag(argc, argv, &i, &tpo)) continue;
        else if (tool_spec_flag(argc, argv, &i, &spo)) continue;
        else tool_usage_error("unknown argument '%s' (see --help)", a);
    }
    glm_ctx_params cp = glm_ctx_default_params();
    int rc = tool_spec_apply(PROG, &spo, &cp);   /* cp.mtp */
    if (!rc) rc = tool_tp_check(&tpo, dev);
    if (!rc && tpo.dist_init) {
        fprintf(stderr, PROG ": error: --dist-init: the server runs its ranks in one process (--tp N); with one process "
                "a rank the requests would reach only one of them\n");
        rc = EXIT_USAGE;
    }
    if (rc) { tool_tp_free(&tpo); return rc; }
    if (dev == GLM_DEVICE_CUDA && !glm_cuda_available()) {
        fprintf(stderr, PROG ": error: --device cuda: no usable CUDA device%s\n",
#ifdef GLM_CUDA
                ""
#else
                " (this build has no CUDA backend; use --device cpu)"
#endif
        );
        tool_tp_free(&tpo);
        return EXIT_FAIL;
    }
    /* the address before the model: a bad --host fails at once */
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai) tool_usage_error("--host %s: %s", host, gai_strerror(gai));

    /* SIGINT and SIGTERM are taken by sigwait in main; every thread inherits the mask */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *dir = model_dir ? model_dir : tool_default_model();
    S.model = tool_load_model_spec(PROG, dir, &spo);
    if (!S.model) { tool_tp_free(&tpo); freeaddrinfo(ai); return EXIT_FAIL; }
    if (glm_tokenizer_load_dir(dir, &S.tok)) {
        fprintf(stderr, PROG ": error: cannot load the tokenizer: %s\n", glm_last_error());
        tool_tp_free(&tpo);
        glm_model_free(S.model);
        freeaddrinfo(ai);
        return EXIT_FAIL;
    }
    S.chat_fmt = glm_tokenizer_chat_format(S.tok);
    const glm_hparams *hp = glm_model_hparams(S.model);
    S.n_ctx = n_ctx ? n_ctx : hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    tool_warn_ctx(PROG, S.n_ctx, S.model);
    if (alias) S.name = alias;
    else {
        static char base[256];
        size_t l = strlen(dir);
        while (l > 1 && dir[l - 1] == '/') l--;
        size_t b0 = l;
        while (b0 > 0 && dir[b0 - 1] != '/') b0--;
        snprintf(base, sizeof base, "%.*s", (int)(l - b0), dir + b0);
        S.name = base;
    }
    cp.device = dev;
    cp.n_threads = n_threads;
    cp.n_ctx = S.n_ctx;
    cp.n_seq_max = S.n_parallel;
    if (!batch_tokens) batch_tokens = tool_default_batch_tokens(dev);
    cp.n_batch = batch_tokens > S.n_parallel ? batch_tokens : S.n_parallel;
    cp.n_kv_pages = kv_pages;
    cp.kv_frac = kv_frac;
    cp.kv_type = dev == GLM_DEVICE_CPU ? GLM_KV_F32 : kv_type;
    glm_sched_params sp = glm_sched_default_params();
    sp.batch_tokens = batch_tokens;
    sp.prefix_cache = prefix_cache;
    sp.tok = S.tok;
    sp.n_draft = spo.n_draft;
    rc = tool_tp_apply(&tpo, S.model, &cp);
    if (rc) {
        tool_tp_free(&tpo);
        glm_tokenizer_free(S.tok);
        glm_model_free(S.model);
        freeaddrinfo(ai);
        return rc;
    }
    rc = glm_ctx_new(S.model, &cp, &S.ctx);
    if (!rc) rc = glm_sched_new(S.ctx, &sp, &S.sched);
    if (rc) {
        fprintf(stderr, PROG ": error: %s\n", glm_last_error());
        glm_ctx_free(S.ctx);
        tool_tp_free(&tpo);
        glm_tokenizer_free(S.tok);
        glm_model_free(S.model);
        freeaddrinfo(ai);
        return EXIT_FAIL;
    }
    snapshot();
    S.started = time(NULL);
    if (getrandom(&S.id_prefix, sizeof S.id_prefix, 0) != (ssize_t)sizeof S.id_prefix)  /* no entropy: time and pid */
        S.id_prefix = ((uint64_t)S.started << 20 ^ (uint64_t)getpid()) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(tool_now() * 1e9);
    const int64_t kv_tokens = (int64_t)glm_ctx_kv_pages_total(S.ctx) * 16;
    S.n_room = kv_tokens < S.n_ctx ? (int)kv_tokens : S.n_ctx;
    pthread_t eng, ntf;
    if (pthread_create(&ntf, NULL, notifier, NULL)) {
        fprintf(stderr, PROG ": error: cannot start the notifier thread\n");
        return EXIT_FAIL;
    }
    if (pthread_create(&eng, NULL, engine, NULL)) {
        fprintf(stderr, PROG ": error: cannot start the engine thread\n");
        return EXIT_FAIL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, NULL,
                                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)timeout,
                                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(S.n_parallel + S.max_queue + 64),
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                            MHD_OPTION_END);
    int status = EXIT_OK;
    if (!d) {
        fprintf(stderr, PROG ": error: cannot listen on %s port %d: %s\n", host, port, strerror(errno));
        status = EXIT_FAIL;
    } else {
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        fprintf(stderr, PROG ": %s on %s, %d slots of %d tokens, %d KV pages; listening on http://%s%s%s:%u\n",
                glm_model_desc(S.model), dev == GLM_DEVICE_CUDA ? "cuda" : "cpu", S.n_parallel, S.n_ctx,
                glm_ctx_kv_pages_total(S.ctx), ai->ai_family == AF_INET6 ? "[" : "", host, ai->ai_family == AF_INET6 ? "]" : "",
                info ? info->port : (unsigned)port);
        int sig = 0;
        sigwait(&sigs, &sig);
        fprintf(stderr, PROG ": %s: stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    }
    /* the engine ends every request (streams then close), then the connections go */
    pthread_mutex_lock(&S.mu);
    S.stopping = 1;
    pthread_cond_signal(&S.cv);
    pthread_mutex_unlock(&S.mu);
    pthread_join(eng, NULL);
    pthread_mutex_lock(&W.mu);   /* the notifier wakes what the engine queued last, then ends */
    W.stop = 1;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
    pthread_join(ntf, NULL);
    free(wake_b);
    free(W.q);
    /* the streams send their last events before the connections are closed (2 s at most) */
    for (double t0 = tool_now(); atomic_load(&S.n_streams) > 0 && tool_now() - t0 < 2;) usleep(5000);
    if (d) {
        MHD_quiesce_daemon(d);
        MHD_stop_daemon(d);
    }
    freeaddrinfo(ai);
    glm_sched_free(S.sched);
    glm_ctx_free(S.ctx);
    tool_tp_free(&tpo);  /* after the context, which may point to the GPU list */
    glm_tokenizer_free(S.tok);
    glm_model_free(S.model);
    return status;
}
