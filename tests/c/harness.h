/*
 * Shared by the C tests and the benchmark: an inbox that records what the
 * runtime hands over through the callbacks, configuration text for DC
 * number n on loopback with ephemeral ports and short intervals (as
 * native/core/tests/support/dc.rs), and waiting for a condition with a
 * deadline instead of sleeping a fixed time.
 */
#ifndef GD_TEST_HARNESS_H
#define GD_TEST_HARNESS_H

#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "global_distrib.h"

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n",    \
                    __FILE__, __LINE__, #cond, gd_last_error());             \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

#define CHECK_STATUS(call, expected)                                         \
    do {                                                                     \
        gd_status st_ = (call);                                              \
        if (st_ != (expected)) {                                             \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n",     \
                    __FILE__, __LINE__, #call, gd_status_name(st_),          \
                    gd_status_name(expected), gd_last_error());              \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, GD_STATUS_OK)

#define INBOX_KEEP 64
#define FIELD 256

/* One delivery or undeliverable report, copied out of the callback. */
typedef struct {
    char from[FIELD], to[FIELD], origin[FIELD], from_host[FIELD];
    char payload[FIELD];
    char reason[64];
    char unrouted[64]; /* gd_delivery.unrouted, "" when NULL */
    int has_from_host;
    gd_payload_kind kind;
    uint8_t message_id[16];
    uint8_t ttl;
} record;

typedef struct inbox {
    pthread_mutex_t lock;
    atomic_size_t delivered;
    atomic_size_t undeliverable;
    atomic_size_t logs;
    record recent[INBOX_KEEP]; /* first INBOX_KEEP deliveries */
    record bad[INBOX_KEEP];    /* first INBOX_KEEP undeliverable reports */
    /* Set by the test: runs inside the deliver callback. */
    void (*on_deliver)(struct inbox *, const gd_delivery *);
    void *ctx;
    int quiet; /* do not print log lines */
} inbox;

static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static inline void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls `*counter >= want` until `timeout_ms` passes. */
static inline int wait_count(atomic_size_t *counter, size_t want, double timeout_ms) {
    double until = now_ms() + timeout_ms;
    while (atomic_load(counter) < want) {
        if (now_ms() > until) return 0;
        nap_ms(2);
    }
    return 1;
}

static inline void copy_str(char *dst, const char *src) {
    snprintf(dst, FIELD, "%s", src ? src : "");
}

static inline void fill(record *r, const gd_delivery *d) {
    copy_str(r->from, d->from);
    copy_str(r->to, d->to);
    copy_str(r->origin, d->origin);
    copy_str(r->from_host, d->from_host);
    r->has_from_host = d->from_host != NULL;
    snprintf(r->unrouted, sizeof r->unrouted, "%s", d->unrouted ? d->unrouted : "");
    size_t n = d->payload_len < FIELD - 1 ? d->payload_len : FIELD - 1;
    if (n) memcpy(r->payload, d->payload, n);
    r->payload[n] = '\0';
    r->kind = d->kind;
    memcpy(r->message_id, d->message_id, 16);
    r->ttl = d->ttl;
}

static void inbox_deliver(void *user_data, const gd_delivery *d) {
    inbox *in = user_data;
    pthread_mutex_lock(&in->lock);
    size_t i = atomic_load(&in->delivered);
    if (i < INBOX_KEEP) fill(&in->recent[i], d);
    atomic_fetch_add(&in->delivered, 1);
    pthread_mutex_unlock(&in->lock);
    if (in->on_deliver) in->on_deliver(in, d);
}

static void inbox_undeliverable(void *user_data, const gd_delivery *d, const char *reason) {
    inbox *in = user_data;
    pthread_mutex_lock(&in->lock);
    size_t i = atomic_load(&in->undeliverable);
    if (i < INBOX_KEEP) {
        fill(&in->bad[i], d);
        snprintf(in->bad[i].reason, sizeof in->bad[i].reason, "%s", reason);
    }
    atomic_fetch_add(&in->undeliverable, 1);
    pthread_mutex_unlock(&in->lock);
}

static void inbox_log(void *user_data, gd_log_level level, const char *msg) {
    inbox *in = user_data;
    atomic_fetch_add(&in->logs, 1);
    if (!in->quiet) fprintf(stderr, "  [log %d] %s\n", (int)level, msg);
}

static inline void inbox_init(inbox *in) {
    memset(in, 0, sizeof *in);
    pthread_mutex_init(&in->lock, NULL);
}

static inline void inbox_destroy(inbox *in) { pthread_mutex_destroy(&in->lock); }

static inline gd_callbacks inbox_callbacks(inbox *in) {
    gd_callbacks cb = {in, inbox_deliver, inbox_undeliverable, inbox_log, GD_LOG_LEVEL_INFO};
    return cb;
}

/* TOML for DC number n: loopback, port 0, short intervals; `extra` is
 * appended (e.g. a TLS section). */
static inline void dc_config(char *buf, size_t len, int n, const char *extra) {
    snprintf(buf, len,
             "global_host = \"example.com\"\n"
             "local_host = \"dc%d.example.com\"\n"
             "node_name = \"node%d@localhost\"\n"
             "hosts_refresh_interval = 200\n"
             "connections.endpoints = [{host = \"127.0.0.1\", port = 0}]\n"
             "connections.endpoint_refresh_interval = 1\n"
             "connections.endpoint_refresh_interval_when_empty = 1\n"
             "connections.disabled_gc_interval = 1\n"
             "bounce.resend_after_ms = 100\n"
             "bounce.max_retries = 4\n"
             "cache.jid_lifetime_seconds = 1\n"
             "%s",
             n, n, extra ? extra : "");
}

#endif
