/*
 * sched - slots and two FIFO classes (see sched.h). Each class is a doubly linked list of
 * items; taking the next item prefers HIGH, then LOW while LOW holds fewer than low_max
 * slots, and never more than max in all.
 */
#include "delivery/sched.h"

void pb_sched_init(pb_sched *s, unsigned max, unsigned low_max)
{
    *s = (pb_sched){0};
    s->max = max ? max : 1;
    s->low_max = low_max > s->max ? s->max : low_max;
}

static void unlink_item(pb_sched *s, pb_sched_item *it)
{
    int c = it->queued - 1;
    if (it->prev)
        it->prev->next = it->next;
    else
        s->head[c] = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        s->tail[c] = it->prev;
    it->prev = it->next = NULL;
    it->queued = 0;
    s->waiting[c]--;
}

void pb_sched_want(pb_sched *s, pb_sched_item *it, pb_sched_class cls)
{
    if (it->queued) return;
    it->queued = (int)cls + 1;
    it->next = NULL;
    it->prev = s->tail[cls];
    if (s->tail[cls])
        s->tail[cls]->next = it;
    else
        s->head[cls] = it;
    s->tail[cls] = it;
    s->waiting[cls]++;
}

void pb_sched_promote(pb_sched *s, pb_sched_item *it)
{
    if (it->queued != (int)PB_SCHED_LOW + 1) return;
    unlink_item(s, it);
    pb_sched_want(s, it, PB_SCHED_HIGH);
}

void pb_sched_cancel(pb_sched *s, pb_sched_item *it)
{
    if (it->queued) unlink_item(s, it);
}

pb_sched_item *pb_sched_next(pb_sched *s, pb_sched_class *cls)
{
    if (s->used[0] + s->used[1] >= s->max) return NULL;
    pb_sched_class c = PB_SCHED_HIGH;
    if (!s->head[PB_SCHED_HIGH]) {
        if (!s->head[PB_SCHED_LOW] || s->used[PB_SCHED_LOW] >= s->low_max) return NULL;
        c = PB_SCHED_LOW;
    }
    pb_sched_item *it = s->head[c];
    unlink_item(s, it);
    s->used[c]++;
    *cls = c;
    return it;
}

void pb_sched_done(pb_sched *s, pb_sched_class cls)
{
    if (s->used[cls] > 0) s->used[cls]--;
}
