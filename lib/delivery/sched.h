/*
 * sched - who may start a transfer to a peer now: a fixed number of slots shared by all
 * peers (the global connection cap), two priority classes, FIFO within a class. A peer
 * has at most one item per activity (sending, pulling, rename notice) and at most one
 * transfer per item, so FIFO order is round-robin among the peers that have due work: no
 * peer's backlog or hang delays another's turn by more than one transfer each.
 *
 * HIGH: pushes, drain probes, rename notices, and a Pull that a waiting Push depends on.
 * LOW: start-up and periodic Pulls, which may hold at most low_max slots, so that even
 * thousands of peers being pulled (some hung until their timeout) leave room for pushes.
 *
 * Pure data structure, loop thread only; unit-tested in tests/unit/sched_test.c.
 *
 * Untrusted input: none.
 */
#ifndef PB_SCHED_H
#define PB_SCHED_H

#include <stdbool.h>
#include <stddef.h>

typedef enum pb_sched_class { PB_SCHED_HIGH = 0, PB_SCHED_LOW = 1 } pb_sched_class;

/* One queue entry, embedded in its owner; zero-initialised it is not queued. */
typedef struct pb_sched_item {
    struct pb_sched_item *prev, *next;
    int queued; /* 0, or 1 + the class it waits in */
    int tag;    /* the owner's: which activity this item starts */
} pb_sched_item;

typedef struct pb_sched {
    unsigned max, low_max;
    unsigned used[2];
    pb_sched_item *head[2], *tail[2];
    size_t waiting[2];
} pb_sched;

/* max >= 1 slots in all; the LOW class may use at most low_max (clamped to max). */
void pb_sched_init(pb_sched *s, unsigned max, unsigned low_max);
/* Queues it at the end of cls (nothing if it waits already). */
void pb_sched_want(pb_sched *s, pb_sched_item *it, pb_sched_class cls);
/* A waiting LOW item moves to the end of HIGH; nothing otherwise. */
void pb_sched_promote(pb_sched *s, pb_sched_item *it);
/* Takes it out of its queue (nothing when it does not wait). */
void pb_sched_cancel(pb_sched *s, pb_sched_item *it);
/* The next item that may start now, its slot taken (class in *cls); NULL when none. */
pb_sched_item *pb_sched_next(pb_sched *s, pb_sched_class *cls);
/* A transfer of class cls ended: its slot is free. */
void pb_sched_done(pb_sched *s, pb_sched_class cls);
static inline bool pb_sched_waiting(const pb_sched_item *it)
{
    return it->queued != 0;
}

#endif
