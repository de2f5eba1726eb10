/*
 * postboxd - the postbox daemon: a thin shell over libpostbox. Reads the configuration
 * (file, then flags, flags winning), opens a pb_daemon and waits for SIGTERM or SIGINT,
 * then closes it (stop accepting, finish in-flight requests, close the store).
 *
 * Usage: postboxd [-c FILE] [--check-config] [--SETTING VALUE ...]
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "postbox.h"

static void usage(FILE *f)
{
    char *help = pb_config_help();
    fprintf(f,
            "usage: postboxd [-c FILE] [--check-config] [--SETTING VALUE ...]\n"
            "  -c, --config FILE          read settings from FILE (name = value lines)\n"
            "  --check-config             print the effective configuration and exit\n"
            "  --version, --help\n"
            "settings (as flags, or in the file without the dashes):\n%s",
            help);
    free(help);
}

int main(int argc, char **argv)
{
    const char *config_file = NULL;
    bool check = false;
    char *why = NULL;
    int rc = 1;
    pb_config *cfg = pb_config_new();
    pb_daemon *d = NULL;

    /* First pass: the program's own flags, so that the file is read before other flags. */
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            config_file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            config_file = argv[i] + 9;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            rc = 0;
            goto out;
        } else if (!strcmp(argv[i], "--version")) {
            printf("postboxd %s\n", PB_VERSION);
            rc = 0;
            goto out;
        }
    }
    if (config_file && pb_config_load_file(cfg, config_file, &why) != PB_OK) goto bad;
    for (int i = 1; i < argc;) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            i += 2;
            continue;
        }
        if (!strncmp(argv[i], "--config=", 9)) {
            i++;
            continue;
        }
        if (!strcmp(argv[i], "--check-config")) {
            check = true;
            i++;
            continue;
        }
        int used = 0;
        if (pb_config_parse_args(cfg, argc - i, argv + i, &used, &why) != PB_OK) goto bad;
        if (used == 0) {
            fprintf(stderr, "postboxd: unknown argument %s (see --help)\n", argv[i]);
            goto out;
        }
        i += used;
    }
    if (pb_config_finish(cfg, &why) != PB_OK) goto bad;
    if (check) {
        char *dump = pb_config_dump(cfg);
        fputs(dump, stdout);
        free(dump);
        rc = 0;
        goto out;
    }

    /* Block the stop signals in every thread; the main thread waits for them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    pb_err err = pb_daemon_open(cfg, &d);
    if (err != PB_OK) {
        fprintf(stderr, "postboxd: cannot start: %s\n", pb_strerror(err));
        goto out;
    }
    for (;;) {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig == SIGHUP) continue; /* no reload yet: keep running */
        break;
    }
    pb_daemon_close(d);
    d = NULL;
    rc = 0;
    goto out;
bad:
    fprintf(stderr, "postboxd: %s\n", why ? why : "invalid configuration");
    rc = 2;
out:
    free(why);
    pb_daemon_close(d);
    pb_config_free(cfg);
    return rc;
}
