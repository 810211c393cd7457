/* comm-dist.c - the start of a world spread over several processes: the process's place
 * from RANK / WORLD_SIZE / LOCAL_RANK, and the rendezvous that hands global rank 0's
 * 128-byte communicator id (an ncclUniqueId) to every other rank, through a file on a
 * shared file system ("file:PATH") or a TCP connection to rank 0 ("tcp:HOST:PORT").
 * Every wait has the caller's timeout; every failure names the file, address or rank.
 *
 * file: rank 0 writes "GLMCOMM1", the world size and the id to PATH.tmp.<pid> and renames
 * it to PATH (refusing to start when PATH exists: a stale file would hand out an old id);
 * each other rank polls for PATH, checks the world size, and answers by creating
 * PATH.ack.<rank>; rank 0 waits for every answer and removes PATH and the answers.
 * tcp: rank 0 listens on PORT; each other rank connects (retrying until the timeout) and
 * sends "GLMCOMM1", its rank and the world size; rank 0 answers "GLMCOMM1" and the id,
 * refusing a world size that differs or a rank seen twice. */
#include "comm.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "GLMCOMM1"
#define MAGIC_LEN 8
#define FILE_LEN (MAGIC_LEN + 4 + GLM_COMM_ID_BYTES)

/* Reads the environment variable name as an integer in [lo, hi]; returns 0 (unset: *out
 * keeps def), or GLM_ERR_ARG naming the variable. */
static int env_range(const char *name, int lo, int hi, int def, int *out) {
    *out = def;
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return glm_err(GLM_ERR_ARG, "%s='%s': expected an integer in %d..%d", name, s, lo, hi);
    *out = (int)v;
    return 0;
}

int glm_comm_dist_from_env(glm_comm_dist *d) {
    if (!d) return glm_err(GLM_ERR_ARG, "glm_comm_dist_from_env: NULL argument");
    int rc = env_range("WORLD_SIZE", 1, 1 << 20, 1, &d->world_size);
    if (!rc) rc = env_range("RANK", 0, d->world_size - 1, 0, &d->rank);
    if (!rc) rc = env_range("LOCAL_RANK", 0, 1023, 0, &d->local_rank);
    if (!rc && getenv("WORLD_SIZE") && *getenv("WORLD_SIZE") && !(getenv("RANK") && *getenv("RANK")))
        rc = glm_err(GLM_ERR_ARG, "WORLD_SIZE=%d is set but RANK is not", d->world_size);
    return rc;
}


static void sleep_ms(int ms) {
    struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

/* ---- file ---- */

/* Writes all of buf[n] to fd; returns 0 or -1 (errno set). */
static int write_all(int fd, const void *buf, size_t n) {
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        done += (size_t)w;
    }
    return 0;
}

static int file_rank0(const char *path, int world, double timeout_s, const uint8_t *id) {
    struct stat st;
    if (stat(path, &st) == 0)
        return glm_err(GLM_ERR_IO, "rendezvous file:%s already exists (left by an earlier start?); remove it", path);
    char tmp[PATH_MAX], ack[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    uint8_t rec[FILE_LEN];
    memcpy(rec, MAGIC, MAGIC_LEN);
    put32(rec + MAGIC_LEN, (uint32_t)world);
    memcpy(rec + MAGIC_LEN + 4, id, GLM_COMM_ID_BYTES);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return glm_err(GLM_ERR_IO, "rendezvous: cannot create %s: %s", tmp, strerror(errno));
    int bad = write_all(fd, rec, sizeof rec) || fsync(fd);
    bad |= close(fd) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return glm_err(GLM_ERR_IO, "rendezvous: cannot write %s: %s", path, strerror(e));
    }
    /* wait for every rank's answer, then clean up */
    double t0 = glm_now_s();
    int rc = 0;
    for (int r = 1; r < world && !rc; r++) {
        snprintf(ack, sizeof ack, "%s.ack.%d", path, r);
        while (stat(ack, &st) != 0) {
            if (glm_now_s() - t0 > timeout_s) {
                rc = glm_err(GLM_ERR_IO, "rendezvous file:%s: rank %d did not answer within %g s", path, r, timeout_s);
                break;
            }
            sleep_ms(2);
        }
    }
    for (int r = 1; r < world; r++) {
        snprintf(ack, sizeof ack, "%s.ack.%d", path, r);
        unlink(ack);
    }
    unlink(path);
    return rc;
}

static int file_rank(const char *path, int rank, int world, double timeout_s, uint8_t *id) {
    double t0 = glm_now_s();
    uint8_t rec[FILE_LEN];
    for (;;) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ssize_t got = read(fd, rec, sizeof rec);
            close(fd);
            if (got != (ssize_t)sizeof rec || memcmp(rec, MAGIC, MAGIC_LEN))
                return glm_err(GLM_ERR_FORMAT, "rendezvous file:%s: not a rendezvous file (%zd bytes)", path, got);
            break;
        }
        if (errno != ENOENT) return glm_err(GLM_ERR_IO, "rendezvous: cannot open %s: %s", path, strerror(errno));
        if (glm_now_s() - t0 > timeout_s)
            return glm_err(GLM_ERR_IO, "rendezvous file:%s: rank 0 did not write it within %g s", path, timeout_s);
        sleep_ms(2);
    }
    uint32_t w = get32(rec + MAGIC_LEN);
    if (w != (uint32_t)world)
        return glm_err(GLM_ERR_ARG, "rendezvous file:%s: rank 0 has a world of %u ranks, rank %d has %d", path, w, rank, world);
    memcpy(id, rec + MAGIC_LEN + 4, GLM_COMM_ID_BYTES);
    char ack[PATH_MAX];
    snprintf(ack, sizeof ack, "%s.ack.%d", path, rank);
    int fd = open(ack, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return glm_err(GLM_ERR_IO, "rendezvous: cannot create %s: %s", ack, strerror(errno));
    close(fd);
    return 0;
}

/* ---- tcp ---- */

/* Reads exactly n bytes from fd before the deadline; returns 0, or -1 with *why set. */
static int read_full(int fd, void *buf, size_t n, double deadline, const char **why) {
    for (size_t done = 0; done < n;) {
        int ms = (int)((deadline - glm_now_s()) * 1000);
        if (ms <= 0) { *why = "timed out"; return -1; }
        struct pollfd p = { fd, POLLIN, 0 };
        int k = poll(&p, 1, ms);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { *why = "timed out"; return -1; }
        ssize_t got = read(fd, (char *)buf + done, n - done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) { *why = got == 0 ? "connection closed" : strerror(errno); return -1; }
        done += (size_t)got;
    }
    return 0;
}

/* Splits "HOST:PORT" (HOST may be [v6]) into host and port; returns 0 or GLM_ERR_ARG. */
static int split_host_port(const char *s, char *host, size_t cap, char *port, size_t pcap) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1] || strlen(colon + 1) >= pcap)
        return glm_err(GLM_ERR_ARG, "rendezvous tcp:%s: expected tcp:HOST:PORT", s);
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') { h++; hl -= 2; }
    if (hl == 0 || hl >= cap) return glm_err(GLM_ERR_ARG, "rendezvous tcp:%s: bad host", s);
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, pcap, "%s", colon + 1);
    char *end;
    long p = strtol(port, &end, 10);
    if (*end || p < 1 || p > 65535) return glm_err(GLM_ERR_ARG, "rendezvous tcp:%s: bad port '%s'", s, port);
    return 0;
}

static int tcp_rank0(const char *addr, const char *port, int world, double timeout_s, const uint8_t *id) {
    struct addrinfo hints = { .ai_flags = AI_PASSIVE, .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    int e = getaddrinfo(NULL, port, &hints, &ai);
    if (e) return glm_err(GLM_ERR_IO, "rendezvous tcp:%s: %s", addr, gai_strerror(e));
    int ls = -1;
    for (struct addrinfo *a = ai; a && ls < 0; a = a->ai_next) {
        ls = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (ls < 0) continue;
        int one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->ai_family == AF_INET6) { int zero = 0; setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero); }
        if (bind(ls, a->ai_addr, a->ai_addrlen) != 0 || listen(ls, 128) != 0) { e = errno; close(ls); ls = -1; }
    }
    freeaddrinfo(ai);
    if (ls < 0) return glm_err(GLM_ERR_IO, "rendezvous tcp:%s: cannot listen on port %s: %s", addr, port, strerror(e));
    char *seen = calloc((size_t)world, 1);
    double deadline = glm_now_s() + timeout_s;
    int rc = seen ? 0 : glm_err(GLM_ERR_OOM, "rendezvous: out of memory");
    for (int answered = 1; answered < world && !rc;) {
        int ms = (int)((deadline - glm_now_s()) * 1000);
        struct pollfd p = { ls, POLLIN, 0 };
        int k = ms > 0 ? poll(&p, 1, ms) : 0;
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            char late[256] = "";
            size_t len = 0;
            for (int r = 1; r < world && len < sizeof late - 12; r++)
                if (!seen[r]) len += snprintf(late + len, sizeof late - len, "%s%d", len ? " " : "", r);
            rc = glm_err(GLM_ERR_IO, "rendezvous tcp:%s: %d of %d ranks did not connect within %g s (ranks: %s)",
                         addr, world - answered, world - 1, timeout_s, late);
            break;
        }
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        uint8_t hello[MAGIC_LEN + 8], reply[MAGIC_LEN + GLM_COMM_ID_BYTES];
        const char *why = NULL;
        if (read_full(fd, hello, sizeof hello, deadline, &why) || memcmp(hello, MAGIC, MAGIC_LEN)) {
            close(fd);    /* not one of ours (or too slow): keep listening */
            continue;
        }
        uint32_t r = get32(hello + MAGIC_LEN), w = get32(hello + MAGIC_LEN + 4);
        if (w != (uint32_t)world)
            rc = glm_err(GLM_ERR_ARG, "rendezvous tcp:%s: rank %u has a world of %u ranks, rank 0 has %d", addr, r, w, world);
        else if (r < 1 || r >= (uint32_t)world || seen[r])
            rc = glm_err(GLM_ERR_ARG, "rendezvous tcp:%s: rank %u connected %s", addr, r,
                         r < 1 || r >= (uint32_t)world ? "from outside the world" : "twice");
        if (!rc) {
            memcpy(reply, MAGIC, MAGIC_LEN);
            memcpy(reply + MAGIC_LEN, id, GLM_COMM_ID_BYTES);
            if (write_all(fd, reply, sizeof reply) == 0) { seen[r] = 1; answered++; }
        }
        close(fd);
    }
    free(seen);
    close(ls);
    return rc;
}

static int tcp_rank(const char *addr, const char *host, const char *port, int rank, int world, double timeout_s,
                    uint8_t *id) {
    double deadline = glm_now_s() + timeout_s;
    const char *why = "no address";
    for (;;) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
        int e = getaddrinfo(host, port, &hints, &ai);
        if (e) why = gai_strerror(e);
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
            if (fd < 0) { why = strerror(errno); continue; }
            if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) { why = strerror(errno); close(fd); continue; }
            uint8_t hello[MAGIC_LEN + 8], reply[MAGIC_LEN + GLM_COMM_ID_BYTES];
            memcpy(hello, MAGIC, MAGIC_LEN);
            put32(hello + MAGIC_LEN, (uint32_t)rank);
            put32(hello + MAGIC_LEN + 4, (uint32_t)world);
            if (write_all(fd, hello, sizeof hello) != 0) why = strerror(errno);
            else if (read_full(fd, reply, sizeof reply, deadline, &why) == 0) {
                if (!memcmp(reply, MAGIC, MAGIC_LEN)) {
                    close(fd);
                    memcpy(id, reply + MAGIC_LEN, GLM_COMM_ID_BYTES);
                    freeaddrinfo(ai);
                    return 0;
                }
                why = "not a rendezvous answer";
            }
            close(fd);
        }
        if (ai) freeaddrinfo(ai);
        if (glm_now_s() > deadline)
            return glm_err(GLM_ERR_IO, "rendezvous tcp:%s: rank %d could not get the id from rank 0 within %g s (%s)",
                           addr, rank, timeout_s, why);
        sleep_ms(20);
    }
}

int glm_comm_spec_check(const char *spec) {
    if (!spec) return glm_err(GLM_ERR_ARG, "rendezvous: NULL spec");
    if (!strncmp(spec, "file:", 5) && spec[5]) {
        /* PATH.tmp.PID and PATH.ack.RANK must fit (cut, every rank's answer had one name) */
        const size_t len = strlen(spec + 5), longest = sizeof ".tmp.4294967295";
        if (len + longest > PATH_MAX)
            return glm_err(GLM_ERR_ARG, "rendezvous file:%.64s...: a path of %zu bytes, at most %zu (its answer files add up to %zu)",
                           spec + 5, len, (size_t)PATH_MAX - longest, longest - 1);
        return GLM_OK;
    }
    if (!strncmp(spec, "tcp:", 4)) {
        char host[256], port[16];
        return split_host_port(spec + 4, host, sizeof host, port, sizeof port);
    }
    return glm_err(GLM_ERR_ARG, "rendezvous '%.200s': expected file:PATH or tcp:HOST:PORT", spec);
}

int glm_comm_rendezvous(const char *spec, int rank, int world_size, double timeout_s, uint8_t id[GLM_COMM_ID_BYTES]) {
    if (!spec || !id) return glm_err(GLM_ERR_ARG, "rendezvous: NULL argument");
    if (world_size < 1 || rank < 0 || rank >= world_size)
        return glm_err(GLM_ERR_ARG, "rendezvous: rank %d outside a world of %d", rank, world_size);
    if (!(timeout_s > 0)) return glm_err(GLM_ERR_ARG, "rendezvous: timeout must be positive");
    int rc = glm_comm_spec_check(spec);   /* checked in a world of one too */
    if (rc || world_size == 1) return rc;
    if (!strncmp(spec, "file:", 5))
        return rank == 0 ? file_rank0(spec + 5, world_size, timeout_s, id)
                         : file_rank(spec + 5, rank, world_size, timeout_s, id);
    char host[256], port[16];
    split_host_port(spec + 4, host, sizeof host, port, sizeof port);
    return rank == 0 ? tcp_rank0(spec + 4, port, world_size, timeout_s, id)
                     : tcp_rank(spec + 4, host, port, rank, world_size, timeout_s, id);
}

int glm_dist_env(int *rank, int *world_size, int *local_rank) {
    glm_comm_dist d;
    int rc = glm_comm_dist_from_env(&d);
    if (rc) return rc;
    if (rank) *rank = d.rank;
    if (world_size) *world_size = d.world_size;
    if (local_rank) *local_rank = d.local_rank;
    return GLM_OK;
}

int glm_dist_spec_check(const char *spec) { return glm_comm_spec_check(spec); }
