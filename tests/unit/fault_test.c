/*
 * fault_test - the test-only fault points: a name is active only when PB_FAULTS lists it
 * whole, and a crash point crashes the process once, with one log line, even when many
 * threads reach it at the same moment (a group commit wakes several Push answers at once;
 * the crash tests count that line).
 */
#include "harness.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/fault.h"
#include "util/log.h"

#define THREADS 8

static pthread_barrier_t start;

static void *crasher(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start);
    pb_fault_crash("test.crash");
    return NULL;
}

/* In a child: THREADS threads reach the crash point together. Returns the number of
 * "crashing" lines the child wrote to `path` and whether it died of SIGABRT. */
static int crash_together(const char *path, bool *aborted)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    pid_t pid = fork();
    if (pid == 0) {
        pb_log_set_fd(fd);
        pthread_barrier_init(&start, NULL, THREADS);
        pthread_t t[THREADS];
        for (int i = 0; i < THREADS; i++)
            pthread_create(&t[i], NULL, crasher, NULL);
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);
        _exit(0); /* the point did not crash */
    }
    int st = 0;
    waitpid(pid, &st, 0);
    *aborted = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
    struct stat sb;
    fstat(fd, &sb);
    char *s = calloc(1, (size_t)sb.st_size + 1);
    if (pread(fd, s, (size_t)sb.st_size, 0) != sb.st_size) s[0] = '\0';
    close(fd);
    int n = 0;
    for (const char *p = s; (p = strstr(p, "fault point test.crash: crashing")) != NULL; p++)
        n++;
    free(s);
    return n;
}

int main(void)
{
    char dir[] = "/tmp/pb-fault-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/log", dir);

    /* names match whole entries of the list only */
    setenv("PB_FAULTS", "other.point,test.crash,test.crash-later", 1);
    CHECK(pb_fault("test.crash"));
    CHECK(pb_fault("other.point"));
    CHECK(pb_fault("test.crash-later"));
    CHECK(!pb_fault("test.cras"));
    CHECK(!pb_fault("crash"));
    CHECK(!pb_fault("test.crash-"));

    /* many threads at once: one line, one abort (repeated: the race is short) */
    int lines = 1, rounds = 0;
    bool all_aborted = true;
    for (; rounds < 50 && lines == 1; rounds++) {
        bool aborted = false;
        lines = crash_together(path, &aborted);
        all_aborted = all_aborted && aborted;
    }
    CHECKF(lines == 1, "each round wrote one crashing line (round %d wrote %d)", rounds, lines);
    CHECK(all_aborted);

    unlink(path);
    rmdir(dir);
    return pbt_finish();
}
