/*
 * fuzz_admin - the admin API as a whole, in process: pb_admin_http_dispatch (routing,
 * path segments, query arguments, JSON body parsing) with the real adminapi handlers
 * (pb_adminapi_register) over a real delivery engine and SQLite store (fuzz_env). The
 * engine's workers are not started: the handlers only store and schedule, and tens of
 * thousands of fuzzer-made peers would keep workers busy failing calls.
 *
 * Input: "METHOD PATH[?name=value&...]\n" then the body (any bytes, may be empty).
 * The HTTP layer itself (libmicrohttpd, bearer token, body limit) is not in this path;
 * fuzz_hrpc covers the same kind of listener for the federation side. Query values are
 * passed as they are (no %-decoding). GET /v1/inbox?wait=N (a long poll that would
 * stall the fuzzer N seconds) has wait forced to 0.
 *
 * State: inputs change the store (submissions, renames); every 20000 inputs the whole
 * fixture is rebuilt from scratch so the database stays small during long runs.
 *
 * Invariants checked: every answer is a status the API documents for client input (200,
 * 202, 400, 404, 405, 409; never 5xx: the store is healthy, so a 5xx means some input
 * got past validation and failed later) with a JSON object body (but GET /v1/backup's
 * 200: the database file), and every refusal carries {"error": "..."}.
 *
 * Untrusted input: the fuzz input, as an admin API request.
 */
#include <stdlib.h>
#include <string.h>

#include "net/admin_http.h"
#include "admin/adminapi.h"
#include "wire/eventjson.h"
#include "fuzz_util.h"
#include "util/mem.h"

#define MAX_ARGS 16
#define RESET_EVERY 20000

static fuzz_env env;
static pb_admin_http *admin;
static pb_adminapi_ctx api;
static unsigned long runs;

static void fixture_open(void)
{
    fuzz_env_open(&env, false);
    pb_admin_http_opts ao = {.listen = "127.0.0.1:0"};
    admin = pb_admin_http_new(&ao);
    api = (pb_adminapi_ctx){
        .delivery = env.delivery, .store = env.store, .keys = env.self_keys, .rename_wait_ms = 0};
    pb_adminapi_register(admin, &api);
}

static void fixture_close(void)
{
    pb_admin_http_free(admin);
    admin = NULL;
    fuzz_env_close(&env);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    fixture_open();
    atexit(fixture_close);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (++runs % RESET_EVERY == 0) {
        fixture_close();
        fixture_open();
    }
    const uint8_t *nl = memchr(data, '\n', size);
    size_t head_len = nl ? (size_t)(nl - data) : size;
    const char *body = nl ? (const char *)nl + 1 : "";
    size_t body_len = nl ? size - head_len - 1 : 0;

    char *head = fuzz_cstr(data, head_len);
    if (strlen(head) != head_len) { /* a NUL in the request line: not HTTP */
        free(head);
        return 0;
    }
    char *sp = strchr(head, ' ');
    const char *method = head, *path = "";
    if (sp) {
        *sp = '\0';
        path = sp + 1;
    }
    char *q = strchr(path, '?');
    const char *args[2 * MAX_ARGS + 1];
    size_t nargs = 0;
    if (q) {
        *q++ = '\0';
        char *save = NULL;
        for (char *kv = strtok_r(q, "&", &save); kv && nargs < 2 * MAX_ARGS;
             kv = strtok_r(NULL, "&", &save)) {
            char *eq = strchr(kv, '=');
            if (eq) *eq++ = '\0';
            uint64_t w;
            if (strcmp(kv, "wait") == 0 && eq && pb_eventjson_parse_u64_str(eq, &w) == PB_OK &&
                w > 0 && w <= PB_ADMIN_MAX_WAIT_S)
                eq = "0";
            args[nargs++] = kv;
            args[nargs++] = eq ? eq : "";
        }
    }
    args[nargs] = NULL;

    int status = 0;
    char *answer = NULL;
    pb_admin_http_dispatch(admin, method, path, args, body, body_len, &status, &answer);
    FUZZ_ASSERT(status == 200 || status == 202 || status == 400 || status == 404 || status == 405 ||
                status == 409);
    FUZZ_ASSERT(answer != NULL);
    if (status == 200 && strcmp(method, "GET") == 0 && strcmp(path, "/v1/backup") == 0) {
        /* the one answer that is not JSON: a copy of the database */
        FUZZ_ASSERT(strncmp(answer, "SQLite format 3", 15) == 0); /* stops at a short one */
        free(answer);
        free(head);
        return 0;
    }
    json_t *j = json_loads(answer, 0, NULL);
    FUZZ_ASSERT(json_is_object(j));
    if (status >= 400) FUZZ_ASSERT(json_is_string(json_object_get(j, "error")));
    json_decref(j);
    free(answer);
    free(head);
    return 0;
}
