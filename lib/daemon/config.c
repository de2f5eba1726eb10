/*
 * config - the settings table and its parsers (see config.h).
 */
#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"
#include "util/mem.h"

enum kind { K_STR, K_UINT, K_BOOL };

/* live: a running postboxd applies a new value on reload (SIGHUP, pb_daemon_reload);
 * otherwise the setting needs a restart and a reload keeps the old value. S and U declare
 * restart settings, SL and UL live ones. */
struct setting {
    const char *name;
    enum kind kind;
    size_t off;
    const char *def; /* textual default; NULL = unset */
    uint64_t min, max;
    const char *help;
    bool live;
};

#define S(name, def, help)                                                                         \
    {                                                                                              \
#name, K_STR, offsetof(pb_config, name), def, 0, 0, help, false                            \
    }
#define B(name, def, help)                                                                         \
    {                                                                                              \
#name, K_BOOL, offsetof(pb_config, name), #def, 0, 1, help, false                          \
    }
#define U(name, def, min, max, help)                                                               \
    {                                                                                              \
#name, K_UINT, offsetof(pb_config, name), #def, min, max, help, false                      \
    }
#define SL(name, def, help)                                                                        \
    {                                                                                              \
#name, K_STR, offsetof(pb_config, name), def, 0, 0, help, true                             \
    }
#define UL(name, def, min, max, help)                                                              \
    {                                                                                              \
#name, K_UINT, offsetof(pb_config, name), #def, min, max, help, true                       \
    }

static const struct setting settings[] = {
    S(server_id, NULL,
      "this server's ID, domain:port (default: the listen address); \"required\" (as in "
      "the packaged postbox.conf) refuses to start until it is set"),
    S(rename_from, NULL,
      "at start-up, the server ID the store belongs to: re-label the store from it to "
      "server_id and tell every peer (NotifyNewId with proof), as postboxctl rename does; "
      "nothing once done"),
    S(listen, "127.0.0.1:2289", "federation listener, IP:PORT or [IPv6]:PORT"),
    S(admin_listen, "127.0.0.1:2290", "admin API listener, loopback IP:PORT or unix:/path"),
    SL(admin_token_file, NULL,
       "file holding the admin API bearer token (optional; owned by the postbox user, mode "
       "0600; postboxctl reads it too, so run postboxctl as root or postbox)"),
    S(data_dir, "/var/lib/postbox", "directory for the key and the SQLite store"),
    S(store, NULL,
      "store: sqlite:/path (default sqlite:DATA_DIR/postbox.db), or "
      "postgresql://user:password@host/db shared by several nodes"),
    S(sync, "full",
      "SQLite synchronous level: full, normal or off (PostgreSQL: synchronous_commit on, "
      "local, off); with full, postbox.db-wal is written out to 40 MiB at each start so "
      "that commits write over blocks already written"),
    S(key_file, NULL, "Ed25519 key file (default DATA_DIR/key)"),
    SL(tls_cert, NULL, "TLS certificate (PEM) for the federation listener"),
    SL(tls_key, NULL, "TLS private key (PEM) for the federation listener"),
    S(ca_file, NULL,
      "CA bundle to verify peers: only its CAs are trusted (default: the system bundle)"),
    S(peer_scheme, "https", "scheme used to reach peers: https, or http (loopback, TLS proxy)"),
    SL(allow, NULL, "only these server IDs may call (comma-separated; empty: everyone)"),
    SL(deny, NULL, "these server IDs may not call (comma-separated)"),
    SL(log_level, "info", "debug, info, warn or error"),
    B(allow_private_peers, no,
      "connect to peers at loopback, private, link-local or other non-public addresses "
      "(loopback setups, tests, a private federation; off on the open internet); with "
      "peer_proxy set, only the proxy decides which addresses it reaches"),
    S(peer_proxy, NULL,
      "reach peers through this proxy, a URL as libcurl takes it (http://host:port, "
      "socks5h://host:port, ...); default none: peers are reached directly, whatever "
      "http_proxy or ALL_PROXY the environment holds; with it, every connection goes to "
      "the proxy, which resolves peers' names: the private-address check cannot see the "
      "peers' addresses and is not applied, so the proxy itself must refuse loopback and "
      "private destinations (allow_private_peers is the proxy's policy)"),
    S(log_format, "text", "log lines: text, or json (one object per line)"),
    SL(log_deliveries, "info",
       "level of the one line per delivery outcome (a Push sent or received, a Pull "
       "answered): info, or debug to keep them out of an info log (busy servers with "
       "thousands of peers)"),
    S(node_id, NULL,
      "this node's unique name when several nodes share a PostgreSQL store "
      "(default: host name and listen port)"),
    S(metrics_listen, NULL,
      "also serve GET /metrics, without the admin token, on this loopback IP:PORT (for a "
      "scraper)"),
    S(dns_servers, NULL,
      "DNS servers for peers' host names, IP[:PORT] separated by commas (default: those of "
      "/etc/resolv.conf); names are resolved without threads (c-ares)"),
    UL(auth_window, 60, 1, 86400, "seconds a token's time may differ from ours"),
    U(key_refetch_interval, 30, 1, 86400, "least seconds between key fetches for one peer"),
    UL(max_body, 65536, 1024, 16777216, "largest request body accepted, bytes"),
    UL(max_connections, 16384, 4, 1000000,
       "most open federation connections (more are closed at once)"),
    UL(max_connections_per_ip, 256, 0, 1000000,
       "most open federation connections from one client address (an IPv4 address, or an "
       "IPv6 /64; one IPv6 /48 holds 65,536 /64s); more from it are closed at once. 0: no "
       "limit (behind a TLS proxy, whose connections all come from one address), and then "
       "the other per-address shares (max_inflight_per_ip, max_suspended_per_ip, "
       "body_memory_per_ip, key_fetches_per_ip, dns_lookups_per_ip, key re-fetches per "
       "address) are off too"),
    UL(conn_timeout, 15, 1, 3600,
       "seconds an idle connection is kept, and the longest a request may take to arrive"),
    U(threads, 16, 1, 256, "federation listener threads"),
    U(admin_timeout, 30, 1, 3600,
      "seconds an admin request may take to arrive (slower clients are cut)"),
    UL(max_inflight, 256, 1, 1000000,
       "complete requests handled at once before 503 (requests still arriving hold no slot; "
       "suspended ones count under max_suspended instead)"),
    UL(max_inflight_per_ip, 64, 1, 1000000,
       "of max_inflight, most from one client address (as max_connections_per_ip counts "
       "them) before 503; off when max_connections_per_ip is 0"),
    UL(max_suspended, 256, 1, 1000000,
       "requests suspended at once (waiting for the sender's key, for our Pull from the "
       "sender, a long poll), a pool apart from max_inflight, before 503"),
    UL(max_suspended_per_ip, 32, 1, 1000000,
       "of max_suspended, most from one client address before 503; off when "
       "max_connections_per_ip is 0"),
    UL(body_memory, 33554432, 65536, 4294967295,
       "bytes of request bodies held at once across all federation connections, as they "
       "arrive, before 503 (at least max_body)"),
    UL(body_memory_per_ip, 2097152, 65536, 4294967295,
       "of body_memory, most bytes held for one client address before 503 (at least "
       "max_body); off when max_connections_per_ip is 0"),
    U(peer_connect_timeout_ms, 5000, 10, 600000, "connect timeout towards peers, ms"),
    U(peer_timeout_ms, 30000, 10, 3600000, "whole-call timeout towards peers, ms"),
    U(workers, 4, 1, 256,
      "threads doing the delivery engine's store work (reads and commits; the network is "
      "driven by one I/O thread)"),
    U(peer_connections, 4096, 16, 1000000,
      "transfers to peers at once (pushes, pulls, notices); at most 3/4 of them pulls; "
      "connections to peers are kept for reuse up to twice this, and over TLS a kept connection "
      "costs about 55 KiB (libcurl with OpenSSL 3): lower it to bound that with many peers"),
    U(push_batch, 512, 1, 10000, "most events in one Push to a postbox of this project"),
    U(push_window, 24, 1, 64,
      "batches in flight at once to a postbox of this project that announces a window (it "
      "grows from 1 while answers come back and halves on a failure); also the window we "
      "announce as a receiver, at most what max_suspended_per_ip and body_memory_per_ip / "
      "max_body allow one client address, and shared by the senders of one address; 1: one "
      "Push in flight"),
    U(push_max_events, 1000, 1, 100000, "most events accepted in one incoming Push (413 beyond)"),
    UL(key_fetches, 256, 1, 4096,
       "peer key fetches running at once (64 more wait for a place, then 503 at once)"),
    UL(key_fetches_per_ip, 16, 0, 4096,
       "peer key fetches (running and waiting) on behalf of one client address (an IPv4 "
       "address, or an IPv6 /64), i.e. asked for by tokens that arrived from it; more from "
       "it: 503 at once. 0: no share; off too when max_connections_per_ip is 0"),
    U(key_fetch_timeout_ms, 5000, 100, 600000, "longest a peer key fetch may take, ms"),
    U(dns_lookups, 1024, 4, 65536,
      "peers' host names being resolved at once (more: retried later)"),
    UL(dns_lookups_for_clients, 512, 1, 65536,
       "of dns_lookups, those for key fetches that clients' tokens asked for (the rest stays "
       "for our own deliveries)"),
    UL(dns_lookups_per_ip, 16, 0, 65536,
       "names being resolved for key fetches asked for from one client address (IPv4 "
       "address, or IPv6 /64). 0: no share; off too when max_connections_per_ip is 0"),
    UL(dns_lookups_per_domain, 64, 0, 65536,
       "names under one domain (its last two labels, three for co.uk-like ones) being "
       "resolved at once, ours and clients' alike. 0: no share"),
    U(recv_budget_events, 100000, 1, 100000000,
      "events one sender may make us store per recv_budget_interval (429 beyond)"),
    U(recv_budget_bytes, 33554432, 1024, 100000000000,
      "bytes one sender may make us store per recv_budget_interval (429 beyond)"),
    U(recv_budget_interval, 60, 1, 86400, "seconds of the per-sender receive budget"),
    UL(recv_budget_key_factor, 1, 1, 1000,
       "receive budget of one verified public key, in senders' budgets: every server ID "
       "whose tokens the key signs shares it (one key and wildcard DNS give any number of "
       "IDs)"),
    UL(recv_budget_address_factor, 4, 0, 1000,
       "receive budget of one client address (an IPv4 address or an IPv6 /64), in senders' "
       "budgets, so that a hosting address with several servers still works; 0: off (also "
       "off with max_connections_per_ip = 0)"),
    UL(new_peers_per_key, 16, 0, 1000000,
       "new peers (server IDs first seen) one verified public key may add per hour (429 "
       "beyond); 0: no limit"),
    UL(new_peers_per_address, 64, 0, 1000000,
       "new peers one client address may add per hour (429 beyond); 0: no limit (also off "
       "with max_connections_per_ip = 0)"),
    UL(peer_idle_forget, 604800, 0, 315360000,
       "seconds after which a peer with no contact, nothing queued and nothing in progress "
       "is forgotten: freed from memory and not pulled at start-up (its store row stays); "
       "0: never"),
    U(pull_read_max_bytes, 2097152, 1024, 67108864,
      "largest Pull answer read from a peer, bytes (larger answers are refused)"),
    U(pull_read_max_events, 10000, 1, 1000000, "most events in one Pull answer read"),
    U(pull_rounds, 16, 1, 10000, "most Pull answers taken from a peer per contact"),
    U(push_retries, 5, 0, 100, "Push retries before a peer's events are queued"),
    U(retry_base_ms, 100, 1, 60000, "first short retry delay (doubles each retry), ms"),
    U(backoff_min, 5, 1, 86400, "first drain attempt delay for a queued peer, seconds"),
    U(backoff_max, 900, 1, 86400, "longest drain attempt delay for a queued peer, seconds"),
    U(pull_interval, 60, 1, 86400, "pull a sender this many seconds after its last Push"),
    UL(former_id_grace, 2592000, 1, 315360000,
       "after we rename ourselves, a peer that has not yet confirmed learning the new ID "
       "may still bind its tokens to the former one for this many seconds (default 30 "
       "days); from any other peer, or later, the former ID is refused "
       "(401 h.bad-token-audience)"),
    UL(max_queue_age, 0, 0, 31536000,
       "queued events older than this many seconds expire unsent (a log line, a notice in "
       "our inbox, a new sequence epoch for the peer; postbox_events_expired_total); 0: never"),
    U(pull_batch, 10000, 1, 100000, "most events in one Pull answer"),
    U(pull_max_bytes, 2097152, 1024, 16777216, "byte cap of one Pull answer"),
    U(push_wait_ms, 10000, 0, 600000, "a Push waits this long for a Pull in progress, ms"),
    U(rename_wait_ms, 10000, 0, 600000, "rename waits this long for peers' answers, ms"),
    U(lease_ttl, 10, 2, 3600,
      "several nodes: a dead node's peers are taken over after this "
      "many seconds"),
    U(metrics_top_peers, 10, 0, 10000,
      "peers with the oldest backlog that get their own queue series in /metrics"),
    U(stats_interval, 10, 1, 3600,
      "seconds between samples of the queue history on the status page (kept an hour)"),
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

static const struct setting *find_setting(const char *name, size_t n)
{
    char norm[64];
    if (n >= sizeof norm) return NULL;
    for (size_t i = 0; i < n; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    norm[n] = '\0';
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].name, norm) == 0) return &settings[i];
    return NULL;
}

static char **str_field(pb_config *c, const struct setting *st)
{
    return (char **)((char *)c + st->off);
}

static uint64_t *uint_field(pb_config *c, const struct setting *st)
{
    return (uint64_t *)((char *)c + st->off);
}

static pb_err set_value(pb_config *c, const struct setting *st, const char *value, char **why)
{
    if (st->kind == K_STR) {
        char **f = str_field(c, st);
        free(*f);
        *f = *value ? pb_xstrdup(value) : NULL;
        return PB_OK;
    }
    if (st->kind == K_BOOL) {
        static const char *yes[] = {"yes", "true", "on", "1"}, *no[] = {"no", "false", "off", "0"};
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
                *uint_field(c, st) = strcasecmp(value, yes[i]) == 0;
                return PB_OK;
            }
        }
        *why = pb_xasprintf("%s: want yes or no, got \"%s\"", st->name, value);
        return PB_ERR_CONFIG;
    }
    char *end = NULL;
    errno = 0;
    if (!isdigit((unsigned char)value[0])) goto bad;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno || *end || v < st->min || v > st->max) goto bad;
    *uint_field(c, st) = v;
    return PB_OK;
bad:
    *why = pb_xasprintf("%s: want a whole number from %llu to %llu, got \"%s\"", st->name,
                        (unsigned long long)st->min, (unsigned long long)st->max, value);
    return PB_ERR_CONFIG;
}

pb_config *pb_config_new(void)
{
    pb_config *c = pb_xcalloc(1, sizeof *c);
    c->origins = pb_xcalloc(NSETTINGS, sizeof *c->origins);
    for (size_t i = 0; i < NSETTINGS; i++) {
        char *why = NULL;
        if (settings[i].def && set_value(c, &settings[i], settings[i].def, &why) != PB_OK)
            abort(); /* a default that does not parse is a bug */
    }
    return c;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

void pb_config_free(pb_config *c)
{
    if (!c) return;
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].kind == K_STR) free(*str_field(c, &settings[i]));
    free_list(c->allow_list, c->nallow);
    free_list(c->deny_list, c->ndeny);
    for (size_t i = 0; c->origins && i < NSETTINGS; i++)
        free(c->origins[i]);
    free(c->origins);
    free(c);
}

/* Remembers where a setting got its value ("FILE:LINE", "--flag"; for --changed). */
static void set_origin(pb_config *c, const struct setting *st, char *origin)
{
    size_t i = (size_t)(st - settings);
    free(c->origins[i]);
    c->origins[i] = origin;
}

pb_err pb_config_set(pb_config *c, const char *name, const char *value, char **why)
{
    *why = NULL;
    const struct setting *st = find_setting(name, strlen(name));
    if (!st) {
        *why = pb_xasprintf("unknown setting \"%s\"", name);
        return PB_ERR_CONFIG;
    }
    c->finished = false;
    return set_value(c, st, value, why);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Adds one problem to *why ("; " between them): a file is read to its end, so that every
 * bad line is named at once. */
static void add_problem(char **why, char *msg)
{
    if (*why) {
        char *both = pb_xasprintf("%s; %s", *why, msg);
        free(*why);
        free(msg);
        *why = both;
    } else {
        *why = msg;
    }
}

pb_err pb_config_load_file(pb_config *c, const char *path, char **why)
{
    *why = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        *why = pb_xasprintf("cannot open %s: %s", path, strerror(errno));
        return PB_ERR_CONFIG;
    }
    pb_err err = PB_OK;
    char line[4096];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            add_problem(why, pb_xasprintf("%s:%d: line too long", path, lineno));
            err = PB_ERR_CONFIG;
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n') /* the rest of that line */
                ;
            continue;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *s = trim(line);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            add_problem(why, pb_xasprintf("%s:%d: expected name = value", path, lineno));
            err = PB_ERR_CONFIG;
            continue;
        }
        *eq = '\0';
        char *name = trim(s), *value = trim(eq + 1);
        char *inner = NULL;
        if (pb_config_set(c, name, value, &inner) != PB_OK) {
            add_problem(why, pb_xasprintf("%s:%d: %s", path, lineno, inner));
            free(inner);
            err = PB_ERR_CONFIG;
            continue;
        }
        set_origin(c, find_setting(name, strlen(name)), pb_xasprintf("%s:%d", path, lineno));
    }
    fclose(f);
    return err;
}

pb_err pb_config_parse_args(pb_config *c, int argc, char **argv, int *used, char **why)
{
    *why = NULL;
    int i = 0;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') break;
        const char *name = a + 2, *eq = strchr(name, '='), *value;
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct setting *st = find_setting(name, nlen);
        if (!st) break; /* not a setting: the program's own flag */
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc) {
                *why = pb_xasprintf("--%.*s needs a value", (int)nlen, name);
                return PB_ERR_CONFIG;
            }
            value = argv[++i];
        }
        char *inner = NULL;
        if (set_value(c, st, value, &inner) != PB_OK) {
            *why = pb_xasprintf("--%s", inner);
            free(inner);
            return PB_ERR_CONFIG;
        }
        set_origin(c, st, pb_xasprintf("--%.*s", (int)nlen, name));
        c->finished = false;
    }
    *used = i;
    return PB_OK;
}

/* Splits a comma/space-separated list of server IDs, normalising each. */

/* A proxy URL libcurl understands, without control characters or spaces. */
static bool proxy_url_ok(const char *u)
{
    static const char *const schemes[] = {"http://",    "https://",  "socks4://",
                                          "socks4a://", "socks5://", "socks5h://"};
    for (const char *p = u; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) return false;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i]);
        if (strncasecmp(u, schemes[i], n) == 0) return u[n] != '\0';
    }
    return false;
}
static pb_err parse_id_list(const char *s, const char *what, char ***out, size_t *n, char **why)
{
    *out = NULL;
    *n = 0;
    if (!s) return PB_OK;
    char *copy = pb_xstrdup(s), *save = NULL;
    pb_err err = PB_OK;
    for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        char id[PB_SERVER_ID_MAX];
        if (pb_serverid_normalize(tok, id) != PB_OK) {
            *why = pb_xasprintf("%s: \"%s\" is not a valid server ID (domain:port)", what, tok);
            err = PB_ERR_CONFIG;
            goto out;
        }
        *out = pb_xrealloc(*out, (*n + 1) * sizeof **out);
        (*out)[(*n)++] = pb_xstrdup(id);
    }
out:
    free(copy);
    return err;
}

pb_err pb_config_finish(pb_config *c, char **why)
{
    *why = NULL;
    if (c->server_id && !strcmp(c->server_id, PB_CONFIG_ID_REQUIRED)) {
        const char *at = c->origins[find_setting("server_id", 9) - settings];
        *why = pb_xasprintf("server_id is not set (%s says \"server_id = %s\"): write this "
                            "server's ID there, the domain:port its peers reach it at, then "
                            "start again",
                            at ? at : "the configuration", PB_CONFIG_ID_REQUIRED);
        return PB_ERR_CONFIG;
    }
    if (!c->server_id) c->server_id = pb_xstrdup(c->listen);
    char id[PB_SERVER_ID_MAX];
    if (pb_serverid_normalize(c->server_id, id) != PB_OK) {
        *why =
            pb_xasprintf("server_id: \"%s\" is not a valid server ID (domain:port)", c->server_id);
        return PB_ERR_CONFIG;
    }
    free(c->server_id);
    c->server_id = pb_xstrdup(id);
    if (c->rename_from) {
        if (pb_serverid_normalize(c->rename_from, id) != PB_OK) {
            *why = pb_xasprintf("rename_from: \"%s\" is not a valid server ID (domain:port)",
                                c->rename_from);
            return PB_ERR_CONFIG;
        }
        free(c->rename_from);
        c->rename_from = pb_xstrdup(id);
    }
    if (!c->data_dir) {
        *why = pb_xstrdup("data_dir must be set");
        return PB_ERR_CONFIG;
    }
    if (!c->store) c->store = pb_xasprintf("sqlite:%s/postbox.db", c->data_dir);
    bool shared = !strncmp(c->store, "postgres://", 11) || !strncmp(c->store, "postgresql://", 13);
    if (shared && !c->node_id) {
        char host[256] = "node";
        gethostname(host, sizeof host - 1);
        c->node_id = pb_xasprintf("%s/%s", host, c->listen);
    }
    if (!shared) {
        free(c->node_id);
        c->node_id = NULL;
    } else if (c->peer_timeout_ms > c->lease_ttl * 1000 / 2) {
        /* a Push must end well within the lease, or another node could push concurrently */
        c->peer_timeout_ms = c->lease_ttl * 1000 / 2;
    }
    if (!c->key_file) c->key_file = pb_xasprintf("%s/key", c->data_dir);
    pb_store_sync sy;
    if (pb_store_sync_parse(c->sync, &sy) != PB_OK) {
        *why = pb_xasprintf("sync: want full, normal or off, got \"%s\"", c->sync);
        return PB_ERR_CONFIG;
    }
    pb_log_level lv;
    if (pb_log_level_parse(c->log_level, &lv) != PB_OK) {
        *why = pb_xasprintf("log_level: want debug, info, warn or error, got \"%s\"", c->log_level);
        return PB_ERR_CONFIG;
    }
    if (pb_log_level_parse(c->log_deliveries, &lv) != PB_OK ||
        (lv != PB_LOG_INFO && lv != PB_LOG_DEBUG)) {
        *why = pb_xasprintf("log_deliveries: want info or debug, got \"%s\"", c->log_deliveries);
        return PB_ERR_CONFIG;
    }
    pb_log_format lf;
    if (pb_log_format_parse(c->log_format, &lf) != PB_OK) {
        *why = pb_xasprintf("log_format: want text or json, got \"%s\"",
                            c->log_format ? c->log_format : "");
        return PB_ERR_CONFIG;
    }
    if (strcmp(c->peer_scheme, "https") != 0 && strcmp(c->peer_scheme, "http") != 0) {
        *why = pb_xasprintf("peer_scheme: want https or http, got \"%s\"", c->peer_scheme);
        return PB_ERR_CONFIG;
    }
    if (c->peer_proxy && *c->peer_proxy && !proxy_url_ok(c->peer_proxy)) {
        *why = pb_xasprintf("peer_proxy: want a URL http://, https://, socks4://, socks4a://, "
                            "socks5:// or socks5h:// followed by host:port, got \"%s\"",
                            c->peer_proxy);
        return PB_ERR_CONFIG;
    }
    if (!c->tls_cert != !c->tls_key) {
        *why = pb_xstrdup("tls_cert and tls_key go together");
        return PB_ERR_CONFIG;
    }
    if (c->backoff_max < c->backoff_min) {
        *why = pb_xstrdup("backoff_max must be at least backoff_min");
        return PB_ERR_CONFIG;
    }
    if (strcmp(c->listen, c->admin_listen) == 0) {
        *why = pb_xstrdup("admin_listen must differ from listen: the admin API is never "
                          "served on the federation port");
        return PB_ERR_CONFIG;
    }
    if (c->metrics_listen &&
        (!strcmp(c->metrics_listen, c->listen) || !strcmp(c->metrics_listen, c->admin_listen))) {
        *why = pb_xstrdup("metrics_listen must differ from listen and admin_listen");
        return PB_ERR_CONFIG;
    }
    free_list(c->allow_list, c->nallow);
    free_list(c->deny_list, c->ndeny);
    c->allow_list = c->deny_list = NULL;
    c->nallow = c->ndeny = 0;
    pb_err err = parse_id_list(c->allow, "allow", &c->allow_list, &c->nallow, why);
    if (err == PB_OK) err = parse_id_list(c->deny, "deny", &c->deny_list, &c->ndeny, why);
    if (err != PB_OK) return err;
    c->finished = true;
    return PB_OK;
}

char *pb_config_dump(const pb_config *c)
{
    pb_buf b = PB_BUF_INIT;
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        char *line;
        if (st->kind == K_STR) {
            const char *v = *str_field((pb_config *)c, st);
            /* the store URI may hold a password: never print it */
            char *shown = v && !strcmp(st->name, "store") ? pb_store_spec_redact(v) : NULL;
            line = pb_xasprintf("%s = %s\n", st->name, shown ? shown : v ? v : "");
            free(shown);
        } else if (st->kind == K_BOOL) {
            line =
                pb_xasprintf("%s = %s\n", st->name, *uint_field((pb_config *)c, st) ? "yes" : "no");
        } else {
            line = pb_xasprintf("%s = %llu\n", st->name,
                                (unsigned long long)*uint_field((pb_config *)c, st));
        }
        pb_buf_append_str(&b, line);
        free(line);
    }
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

static bool same_value(const pb_config *a, const pb_config *b, const struct setting *st);
static char *shown_value(const pb_config *c, const struct setting *st);

char *pb_config_dump_changed(const pb_config *c)
{
    pb_buf b = PB_BUF_INIT;
    pb_config *def = pb_config_new();
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        if (!c->origins[i] || same_value(c, def, st)) continue;
        char *v = shown_value(c, st);
        char *line = pb_xasprintf("%s = %s\t# %s\n", st->name, v, c->origins[i]);
        pb_buf_append_str(&b, line);
        free(line);
        free(v);
    }
    pb_config_free(def);
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

char *pb_config_help(void)
{
    pb_buf b = PB_BUF_INIT;
    for (size_t i = 0; i < NSETTINGS; i++) {
        char *line = pb_xasprintf(
            "  --%-24s %s%s%s%s\n", settings[i].name, settings[i].help, settings[i].def ? " [" : "",
            settings[i].def ? settings[i].def : "", settings[i].def ? "]" : "");
        for (char *p = line + 4; *p && *p != ' '; p++)
            if (*p == '_') *p = '-';
        pb_buf_append_str(&b, line);
        free(line);
    }
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

const char *pb_config_get_server_id(const pb_config *c)
{
    return c->server_id;
}

char *pb_config_get(const pb_config *c, const char *name)
{
    const struct setting *st = find_setting(name, strlen(name));
    if (!st) return NULL;
    if (st->kind == K_STR) {
        const char *v = *str_field((pb_config *)c, st);
        return v ? pb_xstrdup(v) : NULL;
    }
    if (st->kind == K_BOOL) return pb_xstrdup(*uint_field((pb_config *)c, st) ? "yes" : "no");
    return pb_xasprintf("%llu", (unsigned long long)*uint_field((pb_config *)c, st));
}

/* ---- reload: comparing configurations ------------------------------------------------- */

pb_config *pb_config_copy(const pb_config *c)
{
    pb_config *n = pb_xcalloc(1, sizeof *n);
    n->origins = pb_xcalloc(NSETTINGS, sizeof *n->origins);
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        if (c->origins && c->origins[i]) n->origins[i] = pb_xstrdup(c->origins[i]);
        if (st->kind == K_STR) {
            const char *v = *str_field((pb_config *)c, st);
            *str_field(n, st) = v ? pb_xstrdup(v) : NULL;
        } else {
            *uint_field(n, st) = *uint_field((pb_config *)c, st);
        }
    }
    n->allow_list = pb_xcalloc(c->nallow + 1, sizeof *n->allow_list);
    for (size_t i = 0; i < c->nallow; i++)
        n->allow_list[i] = pb_xstrdup(c->allow_list[i]);
    n->nallow = c->nallow;
    n->deny_list = pb_xcalloc(c->ndeny + 1, sizeof *n->deny_list);
    for (size_t i = 0; i < c->ndeny; i++)
        n->deny_list[i] = pb_xstrdup(c->deny_list[i]);
    n->ndeny = c->ndeny;
    n->finished = c->finished;
    return n;
}

static bool same_value(const pb_config *a, const pb_config *b, const struct setting *st)
{
    if (st->kind != K_STR)
        return *uint_field((pb_config *)a, st) == *uint_field((pb_config *)b, st);
    const char *x = *str_field((pb_config *)a, st), *y = *str_field((pb_config *)b, st);
    if (!x || !y) return x == y;
    return strcmp(x, y) == 0;
}

/* The value as shown in a log line (store URIs without their password); caller frees. */
static char *shown_value(const pb_config *c, const struct setting *st)
{
    if (st->kind == K_BOOL) return pb_xstrdup(*uint_field((pb_config *)c, st) ? "yes" : "no");
    if (st->kind == K_UINT)
        return pb_xasprintf("%llu", (unsigned long long)*uint_field((pb_config *)c, st));
    const char *v = *str_field((pb_config *)c, st);
    if (!v) return pb_xstrdup("(unset)");
    return !strcmp(st->name, "store") ? pb_store_spec_redact(v) : pb_xstrdup(v);
}

/* Switching TLS on or off changes the listener itself: tls_cert and tls_key are live only
 * while both configurations serve TLS. */
static bool needs_restart(const pb_config *cur, const pb_config *next, const struct setting *st)
{
    if (!st->live) return true;
    bool tls = !strcmp(st->name, "tls_cert") || !strcmp(st->name, "tls_key");
    return tls && (!cur->tls_cert != !next->tls_cert);
}

size_t pb_config_keep_restart(pb_config *next, const pb_config *cur)
{
    size_t kept = 0;
    bool tls_switch = !cur->tls_cert != !next->tls_cert;
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        if (same_value(cur, next, st) || !needs_restart(cur, next, st)) continue;
        char *was = shown_value(cur, st), *now = shown_value(next, st);
        PB_WARN(NULL, "%s changed: needs a restart%s; keeping the old value (running: %s, new: %s)",
                st->name, st->live && tls_switch ? " (TLS switched on or off)" : "", was, now);
        free(was);
        free(now);
        if (st->kind != K_STR) {
            *uint_field(next, st) = *uint_field((pb_config *)cur, st);
        } else {
            const char *v = *str_field((pb_config *)cur, st);
            free(*str_field(next, st));
            *str_field(next, st) = v ? pb_xstrdup(v) : NULL;
        }
        kept++;
    }
    return kept;
}

char *pb_config_changes(const pb_config *a, const pb_config *b)
{
    pb_buf out = PB_BUF_INIT;
    for (size_t i = 0; i < NSETTINGS; i++) {
        if (same_value(a, b, &settings[i])) continue;
        if (out.len) pb_buf_append_str(&out, ", ");
        pb_buf_append_str(&out, settings[i].name);
    }
    if (!out.len) return NULL;
    pb_buf_append(&out, "", 1);
    return (char *)pb_buf_steal(&out, NULL);
}

bool pb_config_is_live(const char *name)
{
    const struct setting *st = find_setting(name, strlen(name));
    return st && st->live;
}

/* ---- generated documentation: the example file and postbox.conf(5) --------------------- */

char *pb_config_example(void)
{
    pb_buf b = PB_BUF_INIT;
    pb_buf_append_str(
        &b, "# postbox.conf - the configuration of postboxd (see postbox.conf(5)).\n"
            "#\n"
            "# One setting per line, \"name = value\"; \"#\" starts a comment. Every setting is\n"
            "# listed below, commented out, with its default: uncomment a line to change it.\n"
            "# server_id is the exception: set it before the first start.\n"
            "# Flags given to postboxd (--name value) win over this file.\n"
            "# A reload (SIGHUP, systemctl reload postboxd) applies the settings marked so;\n"
            "# the others need a restart (a reload logs that and keeps the running value).\n"
            "#\n"
            "# Generated from postboxd's settings table (postboxd --print-example-config).\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        char *line;
        if (!strcmp(st->name, "server_id"))
            /* the one line that is not commented out: a service started before the operator
             * edited this file must not bind its store to a placeholder ID */
            line = pb_xasprintf("\n# %s\n# Set it before the first start: postboxd refuses to "
                                "start while it says %s.\n# %s\n%s = %s\n",
                                st->help, PB_CONFIG_ID_REQUIRED, "needs a restart", st->name,
                                PB_CONFIG_ID_REQUIRED);
        else if (st->kind == K_BOOL)
            line =
                pb_xasprintf("\n# %s\n# yes or no; %s\n#%s = %s\n", st->help,
                             st->live ? "applied on reload" : "needs a restart", st->name, st->def);
        else if (st->kind == K_UINT)
            line =
                pb_xasprintf("\n# %s\n# %llu to %llu; %s\n#%s = %s\n", st->help,
                             (unsigned long long)st->min, (unsigned long long)st->max,
                             st->live ? "applied on reload" : "needs a restart", st->name, st->def);
        else
            line = pb_xasprintf("\n# %s\n# %s\n#%s =%s%s\n", st->help,
                                st->live ? "applied on reload" : "needs a restart", st->name,
                                st->def ? " " : "", st->def ? st->def : "");
        pb_buf_append_str(&b, line);
        free(line);
    }
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}

/* Appends `s` and then `end` as mdoc text lines: backslashes escaped, lines wrapped at
 * MDOC_WIDTH bytes between words, a line's leading dot or quote guarded, the first letter
 * capitalised. */
#define MDOC_WIDTH 78
static void mdoc_text(pb_buf *b, const char *s, const char *end)
{
    char *text = pb_xasprintf("%s%s", s, end);
    if (text[0]) text[0] = (char)toupper((unsigned char)text[0]);
    size_t col = 0;
    char *save = NULL;
    for (char *w = strtok_r(text, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        size_t len = strlen(w);
        if (col > 0 && col + 1 + len > MDOC_WIDTH) {
            pb_buf_append_str(b, "\n");
            col = 0;
        } else if (col > 0) {
            pb_buf_append_str(b, " ");
            col++;
        }
        if (col == 0 && (*w == '.' || *w == '\'')) {
            pb_buf_append_str(b, "\\&");
            col += 2;
        }
        for (const char *p = w; *p; p++) {
            if (*p == '\\') {
                pb_buf_append_str(b, "\\e");
                col += 2;
            } else {
                pb_buf_append(b, p, 1);
                col++;
            }
        }
    }
    pb_buf_append_str(b, "\n");
    free(text);
}

char *pb_config_mdoc(void)
{
    pb_buf b = PB_BUF_INIT;
    pb_buf_append_str(&b, ".Bl -tag -width Ds\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *st = &settings[i];
        char *line = pb_xasprintf(".It Cm %s\n", st->name);
        pb_buf_append_str(&b, line);
        free(line);
        mdoc_text(&b, st->help, ".");
        if (st->kind == K_BOOL) {
            line = pb_xasprintf("Default\n.Ql %s ;\n.Ql yes\nor\n.Ql no .\n", st->def);
        } else if (st->kind == K_UINT) {
            line = pb_xasprintf("Default %s; from %llu to %llu.\n", st->def,
                                (unsigned long long)st->min, (unsigned long long)st->max);
        } else if (st->def) {
            line = pb_xasprintf("Default\n.Ql %s .\n", st->def);
        } else {
            /* the help says what an unset value means when it is derived */
            line = pb_xstrdup(strstr(st->help, "default") ? "" : "Unset by default.\n");
        }
        pb_buf_append_str(&b, line);
        free(line);
        pb_buf_append_str(&b, st->live ? "A reload applies a new value.\n"
                                       : "A new value needs a restart.\n");
    }
    pb_buf_append_str(&b, ".El\n");
    pb_buf_append(&b, "", 1);
    return (char *)pb_buf_steal(&b, NULL);
}
