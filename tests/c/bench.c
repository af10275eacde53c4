/*
 * C-to-C throughput: two runtimes in one process (shared embedded store)
 * over loopback, one host thread routing alice@dc1 -> bob@dc2 and the
 * deliver callback at dc2 counting. Prints one table row per transport.
 *
 *   make -C tests/c bench                      # TCP and TLS, defaults
 *   make -C tests/c bench BENCH_ARGS="500000 512"
 *   ./bench [stanzas [payload_bytes [cert_dir]]]   # TLS row needs cert_dir
 *
 * The sender keeps at most WINDOW stanzas in flight so the outgoing queue
 * (connections.outgoing_queue_size) never refuses one: the figure is what
 * the pipe sustains, not how fast a queue fills. gd_route_try is used
 * first (cache hit, no blocking) and gd_route when it would block.
 */
#include "harness.h"

#define WINDOW 20000

static void no_log(void *user_data, gd_log_level level, const char *msg) {
    (void)user_data;
    if (level <= GD_LOG_LEVEL_WARN) fprintf(stderr, "  [log] %s\n", msg);
}

static gd_runtime *start(int n, gd_store *store, inbox *in, const char *cert_dir) {
    char tls[1024] = "", cfg[4096];
    if (cert_dir)
        snprintf(tls, sizeof tls,
                 "connections.tls.certfile = \"%s/dc%d.crt\"\n"
                 "connections.tls.keyfile = \"%s/dc%d.key\"\n"
                 "connections.tls.cacertfile = \"%s/ca.crt\"\n",
                 cert_dir, n, cert_dir, n, cert_dir);
    dc_config(cfg, sizeof cfg, n, tls);
    gd_callbacks cb = inbox_callbacks(in);
    cb.log = no_log;
    gd_runtime *rt = NULL;
    CHECK_OK(gd_runtime_new_with_store(cfg, GD_CONFIG_FORMAT_TOML, &cb, store, &rt));
    return rt;
}

static void run(const char *label, size_t count, size_t payload_len, const char *cert_dir) {
    gd_store *store = NULL;
    CHECK_OK(gd_store_new_embedded(&store));
    inbox in1, in2;
    inbox_init(&in1);
    inbox_init(&in2);
    gd_runtime *dc1 = start(1, store, &in1, cert_dir);
    gd_runtime *dc2 = start(2, store, &in2, cert_dir);
    CHECK_OK(gd_store_free(store));
    CHECK_OK(gd_session_opened(dc1, "alice@example.com/a"));
    CHECK_OK(gd_session_opened(dc2, "bob@example.com/b"));

    uint8_t *payload = malloc(payload_len);
    CHECK(payload != NULL);
    memset(payload, 'x', payload_len);
    gd_route_result r;
    /* Warm-up: the connection is opened and the mapping cached. */
    CHECK_OK(gd_route(dc1, "alice@example.com/a", "bob@example.com/b", GD_PAYLOAD_KIND_MESSAGE,
                      payload, payload_len, &r));
    CHECK(r.kind == GD_ROUTE_KIND_FORWARDED);
    CHECK(wait_count(&in2.delivered, 1, 10000));

    size_t tried = 0, blocking = 0;
    double t0 = now_ms();
    for (size_t sent = 0; sent < count; sent++) {
        while (sent + 1 - atomic_load(&in2.delivered) > WINDOW) nap_ms(1);
        gd_status st = gd_route_try(dc1, "alice@example.com/a", "bob@example.com/b",
                                    GD_PAYLOAD_KIND_MESSAGE, payload, payload_len, &r);
        tried++;
        if (st == GD_STATUS_WOULD_BLOCK) {
            blocking++;
            st = gd_route(dc1, "alice@example.com/a", "bob@example.com/b", GD_PAYLOAD_KIND_MESSAGE,
                          payload, payload_len, &r);
        }
        CHECK_OK(st);
        CHECK(r.kind == GD_ROUTE_KIND_FORWARDED);
    }
    CHECK(wait_count(&in2.delivered, count + 1, 120000));
    double secs = (now_ms() - t0) / 1e3;
    printf("| %-4s | %9zu | %7zu | %7.3f | %11.0f | %7.1f | %8zu |\n", label, count, payload_len, secs,
           count / secs, count * (double)payload_len / secs / 1e6, blocking);
    fflush(stdout);
    CHECK(atomic_load(&in1.undeliverable) + atomic_load(&in2.undeliverable) == 0);
    (void)tried;

    free(payload);
    CHECK_OK(gd_runtime_free(dc1));
    CHECK_OK(gd_runtime_free(dc2));
    inbox_destroy(&in1);
    inbox_destroy(&in2);
}

int main(int argc, char **argv) {
    size_t count = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000;
    size_t payload_len = argc > 2 ? strtoul(argv[2], NULL, 10) : 200;
    const char *cert_dir = argc > 3 ? argv[3] : NULL;
    printf("global_distrib %s: one sender thread, dc1 -> dc2 over loopback, window %d\n\n",
           gd_version(), WINDOW);
    printf("| mode | stanzas   | payload | seconds | stanzas/s   | MB/s    | blocking |\n");
    printf("|------|-----------|---------|---------|-------------|---------|----------|\n");
    run("tcp", count, payload_len, NULL);
    if (cert_dir) run("tls", count, payload_len, cert_dir);
    return 0;
}
