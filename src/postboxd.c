/*
 * postboxd - the postbox daemon: a thin shell over libpostbox. Reads the configuration
 * (file, then flags, flags winning), opens a pb_daemon and waits for signals. SIGHUP reads
 * the configuration again (the same file and flags) and applies what can change live
 * (pb_daemon_reload); a configuration that does not parse changes nothing. SIGTERM or SIGINT
 * close the daemon (stop accepting, finish in-flight requests, close the store).
 *
 * Under systemd (Type=notify) it tells the service manager READY=1 once pb_daemon_open has
 * returned (the store is open and both listeners serve), RELOADING=1 and READY=1 around a
 * reload, STOPPING=1 at shutdown and a STATUS= summary every STATUS_EVERY_S seconds, and it
 * arms the watchdog (WatchdogSec=) that the delivery engine keeps alive.
 *
 * Usage: postboxd [-c FILE] [--check-config [--changed] [--check-as USER]] [--SETTING VALUE ...]
 * Build steps use hidden flags that print what is generated from the settings table:
 * --print-example-config (postbox.conf) and --print-settings-mdoc (part of postbox.conf.5),
 * and --print-config prints the effective settings without checking anything.
 *
 * Exit status: 0 after a clean stop (or a configuration test that found nothing), 1 for a
 * runtime failure (a port in use, the data directory in use by another postboxd, the
 * PostgreSQL server unreachable, a store that fails), 2 for a configuration error (the
 * unit's RestartPreventExitStatus=2: restarting cannot fix it).
 *
 * --check-config judges file access as the service's user: --check-as USER, or, when run
 * as root without it, the account "postbox" (the packaged unit's User=) if it exists.
 *
 * Memory: glibc's mmap threshold is fixed at 128 KiB (fixed_mmap_threshold). By default it
 * rises to the size of each large block freed, after which every block up to that size
 * (an admin call's body and its parse, a Pull answer) comes from the arena of the thread
 * that asked and stays there, fragmented, once freed: each listener thread's arena grew to
 * the largest request it had served. An operator's own MALLOC_MMAP_THRESHOLD_ or
 * glibc.malloc.mmap_threshold tunable is left alone.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "postbox.h"

#define STATUS_EVERY_S 15

static void usage(FILE *f)
{
    char *help = pb_config_help();
    fprintf(f,
            "usage: postboxd [-c FILE] [--check-config [--changed] [--check-as USER]] "
            "[--SETTING VALUE ...]\n"
            "  -c, --config FILE          read settings from FILE (name = value lines)\n"
            "  --check-config             test the configuration as a start would (files,\n"
            "                             keys, TLS, listeners, the store); list every\n"
            "                             problem (exit 2) or print the configuration\n"
            "  --changed                  with --check-config: print only the settings that\n"
            "                             differ from their defaults, and where each was set\n"
            "  --check-as USER            judge file access as USER (default as root: postbox,\n"
            "                             if that account exists)\n"
            "  --version, --help\n"
            "settings (as flags, or in the file without the dashes):\n%s"
            "SIGHUP re-reads FILE and the flags and applies what can change while running.\n",
            help);
    free(help);
}

/* Prints a generated text (caller's string, freed here); 0 on success. */
static int print_text(char *text)
{
    int rc = fputs(text, stdout) < 0 || fflush(stdout) != 0 ? 1 : 0;
    free(text);
    return rc;
}

/* "unknown argument ARG" (caller frees). */
static char *unknown_argument(const char *arg)
{
    char *s = NULL;
    if (asprintf(&s, "unknown argument %s (see --help)", arg) < 0) abort();
    return s;
}

/*
 * The configuration: defaults, then config_file (may be NULL), then the settings among the
 * flags, finished. The program's own flags are skipped. Returns 0 with *out set (caller
 * frees), 2 with *why set (caller frees) and *out the unfinished configuration (caller
 * frees) for an invalid configuration or an unknown argument.
 */
static int read_config(int argc, char **argv, const char *config_file, pb_config **out, char **why)
{
    pb_config *cfg = pb_config_new();
    *out = NULL;
    *why = NULL;
    if (config_file && pb_config_load_file(cfg, config_file, why) != PB_OK) goto bad;
    for (int i = 1; i < argc;) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            i += 2;
            continue;
        }
        if (!strncmp(argv[i], "--config=", 9) || !strcmp(argv[i], "--check-config") ||
            !strcmp(argv[i], "--changed") || !strcmp(argv[i], "--print-config")) {
            i++;
            continue;
        }
        if (!strcmp(argv[i], "--check-as")) {
            i += 2;
            continue;
        }
        int used = 0;
        if (pb_config_parse_args(cfg, argc - i, argv + i, &used, why) != PB_OK) goto bad;
        if (used == 0) {
            *why = unknown_argument(argv[i]);
            goto bad;
        }
        i += used;
    }
    if (pb_config_finish(cfg, why) != PB_OK) goto bad;
    *out = cfg;
    return 0;
bad:
    *out = cfg; /* unfinished: for the refusal's log format only */
    return 2;
}

/* STATUS= for the service manager; the summary reads the store, so only when one listens. */
static void send_status(pb_daemon *d)
{
    if (!getenv("NOTIFY_SOCKET")) return;
    char *line = pb_daemon_summary(d);
    size_t n = strlen(line) + 8;
    char *msg = malloc(n);
    if (msg) {
        snprintf(msg, n, "STATUS=%s", line);
        pb_sdnotify_send(msg);
    }
    free(msg);
    free(line);
}

/* SIGHUP: the same file and flags again; a configuration that does not parse changes
 * nothing, and neither does one that pb_daemon_reload refuses (it logs why). */
static void reload(pb_daemon *d, int argc, char **argv, const char *config_file)
{
    pb_config *cfg = NULL;
    char *why = NULL;
    pb_sdnotify_send("RELOADING=1");
    int rc = read_config(argc, argv, config_file, &cfg, &why);
    if (rc != 0) {
        /* through the logger: a json log stays json */
        char line[1024];
        snprintf(line, sizeof line, "reload refused, nothing changed: %s",
                 why ? why : "invalid arguments");
        pb_log_line(PB_LOG_ERROR, line);
        pb_sdnotify_send("READY=1\nSTATUS=reload refused: the configuration is invalid");
    } else {
        pb_daemon_reload(d, cfg);
        pb_sdnotify_send("READY=1");
        send_status(d);
    }
    free(why);
    pb_config_free(cfg);
}

/* Thousands of peers and connections need descriptors: the soft limit goes up to the hard
 * one (systemd's LimitNOFILE sets both), capped at a million. */
static void raise_open_files(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 1048576 ? 1048576 : rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Logs a refusal as the configuration asked (text or json) as far as it was read. */
static void log_refusal(const pb_config *partial, const char *why)
{
    char *fmt = partial ? pb_config_get(partial, "log_format") : NULL;
    if (fmt) pb_log_set_format_name(fmt);
    pb_log_line(PB_LOG_ERROR, why);
    free(fmt);
}

/* The account whose file access --check-config judges (NULL: this process's). */
static const char *check_user(const char *given)
{
    if (given) return given;
    if (geteuid() == 0 && getpwnam("postbox")) return "postbox";
    return NULL;
}

/* See "Memory" above. */
static void fixed_mmap_threshold(void)
{
    const char *t = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_MMAP_THRESHOLD_") || (t && strstr(t, "mmap_threshold"))) return;
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
}

int main(int argc, char **argv)
{
    const char *config_file = NULL, *check_as = NULL;
    bool check = false, changed = false, print = false;
    char *why = NULL;
    int rc = 1;
    pb_config *cfg = NULL;
    pb_daemon *d = NULL;

    fixed_mmap_threshold();
    /* First pass: the program's own flags, so that the file is read before other flags. */
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            config_file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            config_file = argv[i] + 9;
        } else if (!strcmp(argv[i], "--check-config")) {
            check = true;
        } else if (!strcmp(argv[i], "--changed")) {
            changed = true;
        } else if (!strcmp(argv[i], "--print-config")) {
            print = true;
        } else if (!strcmp(argv[i], "--check-as") && i + 1 < argc) {
            check_as = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf("postboxd %s\n", PB_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "--print-example-config")) {
            return print_text(pb_config_example());
        } else if (!strcmp(argv[i], "--print-settings-mdoc")) {
            return print_text(pb_config_mdoc());
        }
    }
    rc = read_config(argc, argv, config_file, &cfg, &why);
    if (rc == 2) goto bad;
    if (cfg) {
        char *fmt = pb_config_get(cfg, "log_format");
        if (fmt) pb_log_set_format_name(fmt);
        free(fmt);
    }
    if (rc != 0) goto out;
    rc = 1;
    if (print || (check && !changed)) {
        /* the configuration test's problems go to stderr, the configuration to stdout */
        unsigned problems = 0;
        if (check && pb_daemon_check(cfg, check_user(check_as), &problems) != PB_OK) {
            char line[96];
            snprintf(line, sizeof line, "configuration test failed: %u problem%s", problems,
                     problems == 1 ? "" : "s");
            pb_log_line(PB_LOG_ERROR, line);
            rc = 2;
            goto out;
        }
        char *dump = pb_config_dump(cfg);
        fputs(dump, stdout);
        free(dump);
        rc = 0;
        goto out;
    }
    if (check) { /* --changed */
        unsigned problems = 0;
        rc = pb_daemon_check(cfg, check_user(check_as), &problems) == PB_OK ? 0 : 2;
        char *dump = pb_config_dump_changed(cfg);
        fputs(dump, stdout);
        free(dump);
        goto out;
    }

    /* Block the signals in every thread; the main thread waits for them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    raise_open_files();
    pb_err err = pb_daemon_open(cfg, &d);
    if (err != PB_OK) {
        /* the reasons are logged; this says which exit status follows */
        char *line = NULL;
        rc = err == PB_ERR_CONFIG ? 2 : 1;
        if (asprintf(&line, "cannot start: %s (%s)", pb_strerror(err),
                     rc == 2 ? "a configuration error: exit 2, fix it and start again" : "exit 1") <
            0)
            line = NULL;
        log_refusal(cfg, line ? line : "cannot start");
        free(line);
        goto out;
    }
    pb_sdnotify_watchdog_enable();
    send_status(d);
    pb_sdnotify_send("READY=1");
    for (;;) {
        struct timespec every = {STATUS_EVERY_S, 0};
        int sig = sigtimedwait(&set, NULL, &every);
        if (sig < 0) {
            if (errno == EAGAIN) send_status(d);
            continue;
        }
        if (sig == SIGHUP) {
            reload(d, argc, argv, config_file);
            continue;
        }
        break;
    }
    pb_sdnotify_send("STOPPING=1");
    pb_daemon_close(d);
    d = NULL;
    rc = 0;
    goto out;
bad:
    log_refusal(cfg, why ? why : "invalid configuration");
    rc = 2;
out:
    free(why);
    pb_daemon_close(d);
    pb_config_free(cfg);
    return rc;
}
