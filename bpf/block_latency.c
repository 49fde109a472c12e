/* block_latency.c - block device request latency, issue -> completion, in nanoseconds.
 *
 * Measures what biolatency/biosnoop measure (device time, not queue time): from
 * block:block_rq_issue to block:block_rq_complete. Per (device, op) it keeps a log-linear
 * histogram (vcheck_hist.h) and exact count/sum/max/bytes; I/Os at or above a floor that user
 * space sets go to a ring buffer as outlier evidence (time, device, sector, bytes, op, latency,
 * pid/comm of the task that queued the request).
 *
 * Pairing: a request in flight is keyed by (dev, sector, op). Tracepoints do not expose the
 * request pointer, and (dev, sector, op) is unique for in-flight requests on a real device
 * except for concurrent zero-length flushes; a collision or a completion with no issue is
 * counted (counters[COLLISION], counters[UNPAIRED]) and shown in the evidence, never guessed.
 *
 * Attach points: block:block_rq_issue, block:block_rq_complete, and block:block_io_start
 * (only where present; it names the submitting task, as blk_account_io_start did for biosnoop).
 */
#include <uapi/linux/ptrace.h>
#include "vcheck_hist.h"

#define OP_READ 0
#define OP_WRITE 1
#define OP_FLUSH 2
#define OP_DISCARD 3
#define OP_OTHER 4

#define COUNTER_COLLISION 0
#define COUNTER_UNPAIRED 1
#define COUNTER_EVENTS_LOST 2

struct rq_key {
    u64 sector;
    u32 dev;
    u32 op;
};

struct rq_start {
    u64 ts;
    u32 pid;
    u32 bytes;
    char comm[16];
};

struct who {
    u32 pid;
    char comm[16];
};

struct hist_key {
    u32 dev;
    u32 op;
    u32 slot;
    u32 pad;
};

struct dev_op {
    u32 dev;
    u32 op;
};

struct dev_stats {
    u64 count;
    u64 sum;
    u64 max;
    u64 bytes;
};

struct outlier {
    u64 done_ns;     /* CLOCK_MONOTONIC at completion */
    u64 latency_ns;
    u64 sector;
    u32 dev;
    u32 bytes;
    u32 op;
    u32 pid;
    s32 error;
    u32 pad;
    char comm[16];
};

BPF_HASH(inflight, struct rq_key, struct rq_start, 65536);
BPF_HASH(submitter, struct rq_key, struct who, 65536);
BPF_HASH(hist, struct hist_key, u64, 32768);
BPF_HASH(stats, struct dev_op, struct dev_stats, 1024);
BPF_ARRAY(floor_ns, u64, 1);          /* [0]: send I/Os at least this slow as events; 0 = none */
BPF_ARRAY(counters, u64, 4);
BPF_RINGBUF_OUTPUT(outliers, 256);    /* pages */

static __always_inline u32 op_of(const char *rwbs)
{
    char c = rwbs[0];
    if (c == 'F') {          /* a leading F is a preflush; the op letter follows, if any */
        char n = rwbs[1];
        if (n == 'W' || n == 'R' || n == 'D' || n == 'N')
            c = n;
        else
            return OP_FLUSH;
    }
    if (c == 'R') return OP_READ;
    if (c == 'W') return OP_WRITE;
    if (c == 'D') return OP_DISCARD;
    return OP_OTHER;
}

static __always_inline void count(u32 which)
{
    u64 *c = counters.lookup(&which);
    if (c)
        __sync_fetch_and_add(c, 1);
}

#ifdef HAVE_BLOCK_IO_START
int vchk_blk_start(struct tracepoint__block__block_io_start *args)
{
    struct rq_key key = {.sector = args->sector, .dev = args->dev, .op = op_of(args->rwbs)};
    struct who w = {.pid = bpf_get_current_pid_tgid() >> 32};
    bpf_get_current_comm(&w.comm, sizeof(w.comm));
    submitter.update(&key, &w);
    return 0;
}
#endif

int vchk_blk_issue(struct tracepoint__block__block_rq_issue *args)
{
    struct rq_key key = {.sector = args->sector, .dev = args->dev, .op = op_of(args->rwbs)};
    struct rq_start s = {.ts = bpf_ktime_get_ns(), .bytes = args->bytes};
    struct who *w = submitter.lookup(&key);
    if (w) {
        s.pid = w->pid;
        __builtin_memcpy(&s.comm, w->comm, sizeof(s.comm));
        submitter.delete(&key);
    } else {
        s.pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&s.comm, sizeof(s.comm));
    }
    if (inflight.lookup(&key))
        count(COUNTER_COLLISION);
    inflight.update(&key, &s);
    return 0;
}

int vchk_blk_done(struct tracepoint__block__block_rq_complete *args)
{
    struct rq_key key = {.sector = args->sector, .dev = args->dev, .op = op_of(args->rwbs)};
    struct rq_start *s = inflight.lookup(&key);
    if (!s) {
        count(COUNTER_UNPAIRED);
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    u64 lat = now - s->ts;

    struct hist_key hk = {.dev = key.dev, .op = key.op, .slot = vcheck_bucket(lat)};
    u64 zero = 0, *n = hist.lookup_or_try_init(&hk, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);

    struct dev_op dk = {.dev = key.dev, .op = key.op};
    struct dev_stats empty = {};
    struct dev_stats *st = stats.lookup_or_try_init(&dk, &empty);
    if (st) {
        __sync_fetch_and_add(&st->count, 1);
        __sync_fetch_and_add(&st->sum, lat);
        __sync_fetch_and_add(&st->bytes, s->bytes);
        if (lat > st->max)
            st->max = lat;
    }

    u32 zero_idx = 0;
    u64 *floor = floor_ns.lookup(&zero_idx);
    if (floor && *floor && lat >= *floor) {
        struct outlier *ev = outliers.ringbuf_reserve(sizeof(struct outlier));
        if (ev) {
            ev->done_ns = now;
            ev->latency_ns = lat;
            ev->sector = key.sector;
            ev->dev = key.dev;
            ev->bytes = s->bytes;
            ev->op = key.op;
            ev->pid = s->pid;
            ev->error = args->error;
            ev->pad = 0;
            __builtin_memcpy(&ev->comm, s->comm, sizeof(ev->comm));
            outliers.ringbuf_submit(ev, 0);
        } else {
            count(COUNTER_EVENTS_LOST);
        }
    }
    inflight.delete(&key);
    return 0;
}
