/*
 * farm - starting and reading the peer farm from tests and the benchmark (see farm.h).
 */
#include "farm.h"

#include <fcntl.h>
#include <sodium.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto/keys.h"
#include "harness.h"

pb_err pbt_farm_id_key(const pb_keys *farm_key, size_t i, pb_keys **out)
{
    char msg[64];
    int len = snprintf(msg, sizeof msg, "peerfarm id %zu", i);
    uint8_t sig[PB_SIG_LEN], seed[PB_SEED_LEN];
    pb_keys_sign(farm_key, (const uint8_t *)msg, (size_t)len, sig);
    crypto_generichash(seed, sizeof seed, sig, sizeof sig, NULL, 0);
    return pb_keys_from_seed(seed, out);
}

const char *pbt_farm_program(void)
{
    const char *env = getenv("PBT_PEERFARM");
    return env && *env ? env : PB_PEERFARM;
}

void pbt_farm_dump_log(const pbt_farm *f)
{
    FILE *in = fopen(f->log_path, "r");
    if (!in) return;
    char line[2048];
    long n = 0;
    while (fgets(line, sizeof line, in))
        n++;
    rewind(in);
    fprintf(stderr, "---- %s ----\n", f->log_path);
    for (long i = 0; fgets(line, sizeof line, in); i++)
        if (i >= n - 40) fputs(line, stderr);
    fclose(in);
}

struct ready_wait {
    pbt_farm *f;
    const char *path;
    bool exited;
};

static bool ready(void *vctx)
{
    struct ready_wait *w = vctx;
    if (waitpid(w->f->pid, NULL, WNOHANG) == w->f->pid) {
        w->f->pid = 0;
        w->exited = true;
        return true;
    }
    return access(w->path, R_OK) == 0;
}

/* Reads the ready file into f; false when it is not what peerfarm writes. */
static bool read_ready(pbt_farm *f, const char *path)
{
    json_t *j = json_load_file(path, 0, NULL), *ids = json_object_get(j, "ids"), *e;
    bool ok = json_is_array(ids) && json_is_integer(json_object_get(j, "control_port"));
    if (ok) {
        f->control_port = (uint16_t)json_integer_value(json_object_get(j, "control_port"));
        f->count = json_array_size(ids);
        f->ids = calloc(f->count ? f->count : 1, sizeof *f->ids);
        f->modes = calloc(f->count ? f->count : 1, sizeof *f->modes);
        if (!f->ids || !f->modes) abort();
        size_t i;
        json_array_foreach(ids, i, e)
        {
            const char *id = json_string_value(json_object_get(e, "id"));
            const char *mode = json_string_value(json_object_get(e, "mode"));
            if (!id || !mode) {
                ok = false;
                break;
            }
            f->ids[i] = strdup(id);
            f->modes[i] = strdup(mode);
        }
    }
    json_decref(j);
    return ok;
}

pbt_farm *pbt_farm_start(const char *tag, const char *const *args)
{
    pbt_farm *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->dir = pbt_tmpdir(tag);
    char *ready_path = NULL;
    if (asprintf(&f->log_path, "%s/peerfarm.log", f->dir) < 0 ||
        asprintf(&f->key_path, "%s/key", f->dir) < 0 ||
        asprintf(&f->stats_path, "%s/stats.json", f->dir) < 0 ||
        asprintf(&ready_path, "%s/ready.json", f->dir) < 0)
        abort();
    pb_keys *k = NULL;
    if (pb_keys_generate(&k) != PB_OK || pb_keys_save(k, f->key_path) != PB_OK) {
        fprintf(stderr, "peer farm: cannot write a key to %s\n", f->key_path);
        pb_keys_free(k);
        free(ready_path);
        pbt_farm_free(f);
        return NULL;
    }
    pb_keys_free(k);
    const char *argv[64];
    int n = 0;
    argv[n++] = pbt_farm_program();
    for (int i = 0; args && args[i] && n < 56; i++)
        argv[n++] = args[i];
    argv[n++] = "--key-file";
    argv[n++] = f->key_path;
    argv[n++] = "--ready";
    argv[n++] = ready_path;
    argv[n++] = "--stats";
    argv[n++] = f->stats_path;
    argv[n] = NULL;
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        /* The farm dies with the test (or bench) that started it, however that ends: a
         * test that gives up (exit) or aborts would otherwise leave it serving. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
        int fd = open(f->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    f->pid = pid;
    struct ready_wait w = {f, ready_path, false};
    bool up = pbt_wait_for(ready, &w, 60000) && !w.exited && read_ready(f, ready_path);
    free(ready_path);
    if (!up) {
        fprintf(stderr, "peer farm (%s) did not become ready\n", argv[0]);
        pbt_farm_dump_log(f);
        pbt_farm_free(f);
        return NULL;
    }
    return f;
}

json_t *pbt_farm_get(const pbt_farm *f, const char *path)
{
    pbt_http h;
    pbt_http_do("http", f->control_port, "GET", path, NULL, NULL, 0, NULL, &h);
    json_t *j = h.status == 200 && h.body_len
                    ? json_loadb((const char *)h.body, h.body_len, 0, NULL)
                    : NULL;
    pbt_http_clear(&h);
    return j;
}

bool pbt_farm_stop(pbt_farm *f)
{
    if (!f->pid) return false;
    kill(f->pid, SIGTERM);
    int64_t deadline = pbt_now_ms() + 20000;
    int st = 0;
    while (pbt_now_ms() < deadline) {
        if (waitpid(f->pid, &st, WNOHANG) == f->pid) {
            f->pid = 0;
            return WIFEXITED(st) && WEXITSTATUS(st) == 0;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
    f->pid = 0;
    return false;
}

void pbt_farm_free(pbt_farm *f)
{
    if (!f) return;
    if (f->pid) pbt_farm_stop(f);
    if (!getenv("PBT_KEEP")) pbt_rmrf(f->dir);
    for (size_t i = 0; i < f->count; i++) {
        free(f->ids ? f->ids[i] : NULL);
        free(f->modes ? f->modes[i] : NULL);
    }
    free(f->ids);
    free(f->modes);
    free(f->dir);
    free(f->log_path);
    free(f->key_path);
    free(f->stats_path);
    free(f);
}
