/*
 * faultvfs - test-only SQLite VFS shim (see faultvfs.h).
 *
 * Design: the shim's sqlite3_file is a small header (our io methods and a pointer to the
 * real file) followed by the real VFS's file structure in the same allocation
 * (szOsFile = header + real szOsFile). Every method forwards to the real VFS or file;
 * only xWrite, xTruncate and xSync first ask fault_rc(), which looks for the flag files.
 * The first failure of an episode and the healing are logged once each.
 */
#include "store/faultvfs.h"

#ifdef PB_FAULTS
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/log.h"

#define VFS_NAME "pbfault"

struct ffile {
    sqlite3_file base;  /* pMethods = &g_io while open */
    sqlite3_file *real; /* points just past this struct */
};

static sqlite3_vfs g_vfs;
static sqlite3_vfs *g_real;
static char g_full[4096], g_ioerr[4096], g_fsync[4096];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pb_err g_result = PB_OK;
static atomic_int g_state; /* 0 healthy, 1 full, 2 ioerr: for logging transitions */

/* SQLITE_OK, or the error the flag files ask for (ioerr_code for an I/O error). */
static int fault_rc(int ioerr_code)
{
    int state = 0, rc = SQLITE_OK;
    if (access(g_full, F_OK) == 0) {
        state = 1;
        rc = SQLITE_FULL;
    } else if (access(g_ioerr, F_OK) == 0) {
        state = 2;
        rc = ioerr_code;
    } else if (access(g_fsync, F_OK) == 0) {
        state = 3;
        if (ioerr_code == SQLITE_IOERR_FSYNC) rc = ioerr_code;
    }
    int old = atomic_exchange(&g_state, state);
    if (old != state) {
        if (state)
            PB_WARN(NULL, "faultvfs: failing %s with %s", state == 3 ? "fsyncs" : "writes",
                    state == 1 ? "SQLITE_FULL" : "SQLITE_IOERR");
        else
            PB_WARN(NULL, "faultvfs: writes work again");
    }
    return rc;
}

static sqlite3_file *R(sqlite3_file *f)
{
    return ((struct ffile *)f)->real;
}

/* ---- io methods ------------------------------------------------------------------------- */

static int f_close(sqlite3_file *f)
{
    sqlite3_file *r = R(f);
    int rc = r->pMethods ? r->pMethods->xClose(r) : SQLITE_OK;
    f->pMethods = NULL;
    return rc;
}

static int f_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    return R(f)->pMethods->xRead(R(f), p, n, off);
}

static int f_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    int rc = fault_rc(SQLITE_IOERR_WRITE);
    return rc != SQLITE_OK ? rc : R(f)->pMethods->xWrite(R(f), p, n, off);
}

static int f_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    int rc = fault_rc(SQLITE_IOERR_TRUNCATE);
    return rc != SQLITE_OK ? rc : R(f)->pMethods->xTruncate(R(f), size);
}

static int f_sync(sqlite3_file *f, int flags)
{
    int rc = fault_rc(SQLITE_IOERR_FSYNC);
    return rc != SQLITE_OK ? rc : R(f)->pMethods->xSync(R(f), flags);
}

static int f_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return R(f)->pMethods->xFileSize(R(f), size);
}

static int f_lock(sqlite3_file *f, int lock)
{
    return R(f)->pMethods->xLock(R(f), lock);
}

static int f_unlock(sqlite3_file *f, int lock)
{
    return R(f)->pMethods->xUnlock(R(f), lock);
}

static int f_check_reserved(sqlite3_file *f, int *out)
{
    return R(f)->pMethods->xCheckReservedLock(R(f), out);
}

static int f_file_control(sqlite3_file *f, int op, void *arg)
{
    return R(f)->pMethods->xFileControl(R(f), op, arg);
}

static int f_sector_size(sqlite3_file *f)
{
    return R(f)->pMethods->xSectorSize(R(f));
}

static int f_device_chars(sqlite3_file *f)
{
    return R(f)->pMethods->xDeviceCharacteristics(R(f));
}

static int f_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    const sqlite3_io_methods *m = R(f)->pMethods;
    if (m->iVersion < 2 || !m->xShmMap) return SQLITE_IOERR_SHMMAP;
    return m->xShmMap(R(f), pg, pgsz, extend, pp);
}

static int f_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
    const sqlite3_io_methods *m = R(f)->pMethods;
    if (m->iVersion < 2 || !m->xShmLock) return SQLITE_IOERR_SHMLOCK;
    return m->xShmLock(R(f), off, n, flags);
}

static void f_shm_barrier(sqlite3_file *f)
{
    const sqlite3_io_methods *m = R(f)->pMethods;
    if (m->iVersion >= 2 && m->xShmBarrier) m->xShmBarrier(R(f));
}

static int f_shm_unmap(sqlite3_file *f, int del)
{
    const sqlite3_io_methods *m = R(f)->pMethods;
    if (m->iVersion < 2 || !m->xShmUnmap) return SQLITE_OK;
    return m->xShmUnmap(R(f), del);
}

static int f_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    const sqlite3_io_methods *m = R(f)->pMethods;
    if (m->iVersion < 3 || !m->xFetch) {
        *pp = NULL;
        return SQLITE_OK;
    }
    return m->xFetch(R(f), off, n, pp);
}

static int f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    const sqlite3_io_methods *m = R(f)->pMethods;
    if (m->iVersion < 3 || !m->xUnfetch) return SQLITE_OK;
    return m->xUnfetch(R(f), off, p);
}

static const sqlite3_io_methods g_io = {
    .iVersion = 3,
    .xClose = f_close,
    .xRead = f_read,
    .xWrite = f_write,
    .xTruncate = f_truncate,
    .xSync = f_sync,
    .xFileSize = f_file_size,
    .xLock = f_lock,
    .xUnlock = f_unlock,
    .xCheckReservedLock = f_check_reserved,
    .xFileControl = f_file_control,
    .xSectorSize = f_sector_size,
    .xDeviceCharacteristics = f_device_chars,
    .xShmMap = f_shm_map,
    .xShmLock = f_shm_lock,
    .xShmBarrier = f_shm_barrier,
    .xShmUnmap = f_shm_unmap,
    .xFetch = f_fetch,
    .xUnfetch = f_unfetch,
};

/* ---- vfs methods: all forwarded to the real VFS ----------------------------------------- */

static int v_open(sqlite3_vfs *v, const char *name, sqlite3_file *file, int flags, int *out)
{
    struct ffile *f = (struct ffile *)file;
    f->real = (sqlite3_file *)(f + 1);
    f->real->pMethods = NULL;
    int rc = g_real->xOpen(g_real, name, f->real, flags, out);
    f->base.pMethods = f->real->pMethods ? &g_io : NULL;
    return rc;
}

static int v_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
    return g_real->xDelete(g_real, name, sync_dir);
}

static int v_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    return g_real->xAccess(g_real, name, flags, out);
}

static int v_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    return g_real->xFullPathname(g_real, name, n, out);
}

static void *v_dlopen(sqlite3_vfs *v, const char *name)
{
    return g_real->xDlOpen(g_real, name);
}

static void v_dlerror(sqlite3_vfs *v, int n, char *msg)
{
    g_real->xDlError(g_real, n, msg);
}

static void (*v_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    return g_real->xDlSym(g_real, h, sym);
}

static void v_dlclose(sqlite3_vfs *v, void *h)
{
    g_real->xDlClose(g_real, h);
}

static int v_randomness(sqlite3_vfs *v, int n, char *out)
{
    return g_real->xRandomness(g_real, n, out);
}

static int v_sleep(sqlite3_vfs *v, int us)
{
    return g_real->xSleep(g_real, us);
}

static int v_current_time(sqlite3_vfs *v, double *out)
{
    return g_real->xCurrentTime(g_real, out);
}

static int v_get_last_error(sqlite3_vfs *v, int n, char *out)
{
    return g_real->xGetLastError ? g_real->xGetLastError(g_real, n, out) : 0;
}

static int v_current_time_i64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    return g_real->xCurrentTimeInt64(g_real, out);
}

static void install(void)
{
    const char *dir = getenv("PB_FAULT_VFS_DIR");
    if (!dir || !*dir) return;
    g_real = sqlite3_vfs_find(NULL);
    if (!g_real || g_real->iVersion < 2) {
        PB_ERROR(NULL, "faultvfs: no usable default SQLite VFS to wrap");
        g_result = PB_ERR_STORE;
        return;
    }
    snprintf(g_full, sizeof g_full, "%s/full", dir);
    snprintf(g_ioerr, sizeof g_ioerr, "%s/ioerr", dir);
    snprintf(g_fsync, sizeof g_fsync, "%s/fsync", dir);
    g_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(struct ffile) + g_real->szOsFile,
        .mxPathname = g_real->mxPathname,
        .zName = VFS_NAME,
        .xOpen = v_open,
        .xDelete = v_delete,
        .xAccess = v_access,
        .xFullPathname = v_full_pathname,
        .xDlOpen = v_dlopen,
        .xDlError = v_dlerror,
        .xDlSym = v_dlsym,
        .xDlClose = v_dlclose,
        .xRandomness = v_randomness,
        .xSleep = v_sleep,
        .xCurrentTime = v_current_time,
        .xGetLastError = v_get_last_error,
        .xCurrentTimeInt64 = v_current_time_i64,
    };
    int rc = sqlite3_vfs_register(&g_vfs, 1);
    if (rc != SQLITE_OK) {
        PB_ERROR(NULL, "faultvfs: cannot register: %s", sqlite3_errstr(rc));
        g_result = PB_ERR_STORE;
        return;
    }
    PB_WARN(
        NULL,
        "faultvfs: SQLite writes fail while %s/full or %s/ioerr exists, fsyncs while %s/fsync does",
        dir, dir, dir);
}

pb_err pb_faultvfs_install(void)
{
    pthread_once(&g_once, install);
    return g_result;
}
#else
typedef int pb_faultvfs_unused;
#endif
