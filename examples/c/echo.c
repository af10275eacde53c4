/*
 * The smallest complete use of the global_distrib C API: start, route,
 * receive, stop. Copy it into your server and replace the parts marked
 * "your server".
 *
 * Two datacenters run in this one process so the example needs nothing
 * else: they share an embedded store (gd_store_new_embedded) and talk over
 * loopback TCP. In a real deployment each DC is its own server process
 * with `backend = "redis"` in its configuration, created with
 * gd_runtime_new, and nothing else changes.
 *
 * Build (from the repository root, after `cargo build -p global_distrib_capi`):
 *   cc -std=c11 -Wall -Wextra -pthread -Iinclude examples/c/echo.c \
 *      -Ltarget/debug -lglobal_distrib -Wl,-rpath,$PWD/target/debug -o echo
 *   ./echo
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "global_distrib.h"

/* Your server's state, reached through user_data. */
typedef struct {
    const char *name;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int received;
} server;

/* Runs on a runtime thread: hand the stanza to your local routing and
 * return quickly. Every pointer in `d` is valid only during this call. */
static void on_deliver(void *user_data, const gd_delivery *d) {
    server *s = user_data;
    printf("[%s] from %s to %s (via %s): %.*s\n", s->name, d->from, d->to,
           d->from_host ? d->from_host : "bounce", (int)d->payload_len,
           (const char *)d->payload);
    pthread_mutex_lock(&s->lock);
    s->received++;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

/* A stanza was given up: answer its sender with an XMPP error. */
static void on_undeliverable(void *user_data, const gd_delivery *d, const char *reason) {
    server *s = user_data;
    fprintf(stderr, "[%s] undeliverable (%s): %s -> %s\n", s->name, reason, d->from, d->to);
}

static void on_log(void *user_data, gd_log_level level, const char *message) {
    server *s = user_data;
    if (level <= GD_LOG_LEVEL_WARN) fprintf(stderr, "[%s] log: %s\n", s->name, message);
}

/* Waits until `s` received `n` stanzas, at most 10 s. */
static int wait_received(server *s, int n) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    while (s->received < n && rc == 0) rc = pthread_cond_timedwait(&s->changed, &s->lock, &until);
    int ok = s->received >= n;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static const char *CONFIG =
    "global_host = \"example.com\"\n"
    "local_host = \"%s\"\n"
    "connections.endpoints = [{host = \"127.0.0.1\", port = 0}]\n";

static gd_runtime *start(server *s, gd_store *store) {
    char config[512];
    snprintf(config, sizeof config, CONFIG, s->name);
    gd_callbacks cb = {
        .user_data = s,
        .deliver = on_deliver,
        .undeliverable = on_undeliverable,
        .log = on_log,
        .log_level = GD_LOG_LEVEL_WARN,
    };
    gd_runtime *rt = NULL;
    if (gd_runtime_new_with_store(config, GD_CONFIG_FORMAT_TOML, &cb, store, &rt) != GD_STATUS_OK) {
        fprintf(stderr, "cannot start %s: %s\n", s->name, gd_last_error());
        return NULL;
    }
    return rt;
}

int main(void) {
    server dc1 = {.name = "dc1.example.com"}, dc2 = {.name = "dc2.example.com"};
    server *all[] = {&dc1, &dc2};
    for (int i = 0; i < 2; i++) {
        pthread_mutex_init(&all[i]->lock, NULL);
        pthread_cond_init(&all[i]->changed, NULL);
    }
    gd_store *store = NULL;
    gd_store_new_embedded(&store);
    gd_runtime *rt1 = start(&dc1, store);
    gd_runtime *rt2 = start(&dc2, store);
    gd_store_free(store); /* the runtimes keep their own reference */
    if (!rt1 || !rt2) return 1;

    /* Your server: users log in at their DC. */
    gd_session_opened(rt1, "alice@example.com/phone");
    gd_session_opened(rt2, "bob@example.com/laptop");

    /* Your server: every stanza whose recipient is not local goes to gd_route. */
    const char *stanza = "<message to='bob@example.com/laptop'><body>hello</body></message>";
    gd_route_result r;
    gd_status st = gd_route(rt1, "alice@example.com/phone", "bob@example.com/laptop",
                            GD_PAYLOAD_KIND_MESSAGE, (const uint8_t *)stanza, strlen(stanza), &r);
    if (st != GD_STATUS_OK) {
        fprintf(stderr, "route failed: %s\n", gd_last_error());
        return 1;
    }
    if (r.kind == GD_ROUTE_KIND_FORWARDED) printf("forwarded to %s\n", r.host);
    /* GD_ROUTE_KIND_LOCAL: deliver it yourself; UNDELIVERABLE: answer with an error. */

    int ok = wait_received(&dc2, 1);

    gd_runtime_stop(rt1, 1000, NULL); /* flush what is queued, at most 1 s */
    gd_runtime_stop(rt2, 1000, NULL);
    gd_runtime_free(rt1);
    gd_runtime_free(rt2);
    for (int i = 0; i < 2; i++) {
        pthread_mutex_destroy(&all[i]->lock);
        pthread_cond_destroy(&all[i]->changed);
    }
    printf(ok ? "ok\n" : "nothing arrived\n");
    return ok ? 0 : 1;
}
