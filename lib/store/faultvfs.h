/*
 * faultvfs - test-only SQLite VFS shim that makes the store's disk fail on demand.
 *
 * In builds with PB_FAULTS, when the environment variable PB_FAULT_VFS_DIR names a
 * directory, pb_faultvfs_install() registers a VFS wrapping the platform's default one as
 * the new default. Every write, truncate and fsync of every SQLite file (database, WAL,
 * journals) then first looks in that directory:
 *   - while the file `full` exists it fails with SQLITE_FULL (disk full);
 *   - while the file `ioerr` exists it fails with SQLITE_IOERR_WRITE (SQLITE_IOERR_FSYNC
 *     for fsync, SQLITE_IOERR_TRUNCATE for truncate);
 *   - while the file `fsync` exists only fsyncs fail, with SQLITE_IOERR_FSYNC (the data
 *     was written, its durability is unknown).
 * Removing the file heals the disk. Reads are never failed. A test creates and removes the
 * flag files from outside the daemon process; checking for them on every write is slow but
 * fine for tests. Without PB_FAULTS, or without the variable, nothing changes.
 *
 * Untrusted input: none (the directory comes from the test's environment).
 */
#ifndef PB_FAULTVFS_H
#define PB_FAULTVFS_H

#include "postbox.h"

#ifdef PB_FAULTS
/* Installs the shim as SQLite's default VFS when PB_FAULT_VFS_DIR is set (once per
 * process; later calls do nothing). PB_OK also when the variable is unset; PB_ERR_STORE
 * when SQLite refused the registration (logged). Call before any store is opened. */
pb_err pb_faultvfs_install(void);
#else
static inline pb_err pb_faultvfs_install(void)
{
    return PB_OK;
}
#endif

#endif
