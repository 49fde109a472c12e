/* block_latency.c - block device request latency, issue -> completion, in nanoseconds.
 *
 * Measures what biolatency/biosnoop measure (device time, not queue time): from
 * block:block_rq_issue to block:block_rq_complete. Per (device, op) it keeps a log-linear
 * histogram and exact count/sum/max (vcheck_hist.h); I/Os at or above a floor that user space
 * sets per device go to a ring buffer as outlier evidence (time, device, sector, bytes, op,
 * latency, pid/comm of the task that queued the request). What the evidence cannot hold is
 * counted per (device, op) in outlier_counts: the I/Os over a check's threshold (how many the
 * evidence should show) and those the ring buffer had no room for.
 *
 * Every completion /proc/diskstats counts is timed here, under the op its rwbs names:
 * - A request in flight is keyed by (dev, sector, op): tracepoints do not expose the request
 *   pointer, and the key is unique for in-flight data requests.
 * - Flushes (rwbs "FF") carry no sector (issue says 0, completion -1), so a device's flushes
 *   are paired in issue order: count and sum stay exact when a multi-queue device completes
 *   concurrent flushes out of order, only which flush got which latency may swap.
 * - An empty preflush request (fsync) is never issued itself: the flush it waited for
 *   completes it right after, on the same CPU. It is timed from that flush's issue, as the
 *   write its rwbs says ("WS", sector 0). Without a flush (no write-back cache) it took 0 ns.
 * - A write finished by a post-flush (FUA on a device without FUA) completes twice: its data
 *   (timed) and, after the flush, an empty completion at its sector, which is not a new I/O.
 *   block_io_start tells the two empty completions apart (it counts preflushes submitted);
 *   without it (kernels before 6.5) only sector 0 does, so a FUA write to sector 0 of such a
 *   device counts twice.
 * What cannot be timed is counted by reason in counters[], never guessed.
 *
 * Attach points: block:block_rq_issue, block:block_rq_complete, and where present
 * block:block_io_start (names the submitting task) and block:block_rq_requeue (a requeued
 * request is timed from its last issue). Built by bcc or as a CO-RE object (vcheck_compat.h).
 */
#include "vcheck_compat.h"
#include "vcheck_hist.h"

#define OP_READ 0
#define OP_WRITE 1
#define OP_FLUSH 2
#define OP_DISCARD 3
#define OP_OTHER 4

/* vcheck/bpf.py reads counters[] by these names */
#define COUNTER_COLLISION 0
#define COUNTER_UNPAIRED 1
#define COUNTER_FLUSH_OVERFLOW 2

VCHK_DECLARE_HAVE(block_io_start);

#define FLUSH_RING 64   /* flushes of one device in flight at once that can be told apart */

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

struct dev_op {
    u32 dev;
    u32 op;
};

struct hist_key {
    struct dev_op k;
    u32 slot;
    u32 pad;
};

/* a device's flushes: [done, issued) are in flight; requeued ones are issued again */
struct flush_fifo {
    u64 issued;
    u64 done;
    u64 requeued;
};

struct flush_slot {
    u32 dev;
    u32 seq;
};

struct dev_cpu {
    u32 dev;
    u32 cpu;
};

/* empty preflush requests of a device waiting for a flush, and the last task to submit a
 * preflush request (empty, an fsync's; or with data, a journal commit's) */
struct preflush {
    u64 pending;
    u32 pid;
    char comm[16];
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

/* per (device, op): what the outlier stream could not carry */
struct outlier_count {
    u64 over;   /* I/Os slower than threshold_ns: all of them, streamed or not */
    u64 lost;   /* I/Os at or above their device's floor that found the ring buffer full */
};

BPF_HASH(inflight, struct rq_key, struct rq_start, 65536);
BPF_HASH(submitter, struct rq_key, struct who, 65536);
BPF_HASH(flushes, u32, struct flush_fifo, 1024);
BPF_HASH(flush_start, struct flush_slot, struct rq_start, 16384);
BPF_HASH(last_flush, struct dev_cpu, struct rq_start, 4096);  /* the flush just completed here */
BPF_HASH(preflushes, u32, struct preflush, 1024);
BPF_HASH(hist, struct hist_key, u64, 32768);
BPF_HASH(stats, struct dev_op, struct vcheck_stats, 1024);
BPF_HASH(floor_ns, u32, u64, 1024);   /* per device: send I/Os at least this slow; no entry: all */
BPF_ARRAY(threshold_ns, u64, 1);      /* [0]: a check's outlier threshold; 0 = none */
/* [0, 1): the window, CLOCK_MONOTONIC ns. Only I/Os completed inside it are recorded, so the
 * histograms, the counts below and the events are cut at the same instants */
BPF_ARRAY(window_ns, u64, 2);
BPF_HASH(outlier_counts, struct dev_op, struct outlier_count, 1024);
BPF_ARRAY(counters, u64, 3);
BPF_RINGBUF_OUTPUT(outliers, 256);    /* pages */

/* What the handlers need of a request, read from either kind of hook (see the end of the file). */
struct rq_info {
    u64 sector;      /* 0 when unset (issue and requeue report -1 as 0, completion does not) */
    u32 dev;
    u32 op;
    u32 bytes;       /* the request's size */
    u32 nr_sector;   /* completion: sectors this completion covers */
    s32 error;       /* completion: -errno (classic record) or blk_status_t (raw hook) */
    u32 preflush;    /* REQ_PREFLUSH: a leading F in rwbs */
};

static __always_inline struct rq_key key_of(struct rq_info *i)
{
    struct rq_key key = {.sector = i->sector == (u64)-1 ? 0 : i->sector, .dev = i->dev, .op = i->op};
    return key;
}

#define EEXIST_ 17   /* errno.h is not available to both builds */

/* the task issuing the request: the one that queued it when nothing better is known */
static __always_inline void name_current(struct rq_start *s)
{
    s->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&s->comm, sizeof(s->comm));
}

static __always_inline void count(u32 which)
{
    vcheck_inc(counters.lookup(&which));
}

static __always_inline void record(struct rq_key *key, struct rq_start *s, u64 now, s32 error)
{
    u32 from_idx = 0, until_idx = 1;
    u64 *from = window_ns.lookup(&from_idx);
    u64 *until = window_ns.lookup(&until_idx);
    if (!from || !until || now < *from || now >= *until)
        return;
    u64 lat = now - s->ts;
    struct hist_key hk = {.k = {.dev = key->dev, .op = key->op}, .slot = vcheck_bucket(lat)};
    u64 zero = 0;
    struct vcheck_stats empty = {};
    vcheck_record(hist.lookup_or_try_init(&hk, &zero), stats.lookup_or_try_init(&hk.k, &empty), lat);

    u32 zero_idx = 0;
    u64 *threshold = threshold_ns.lookup(&zero_idx);
    struct outlier_count none = {};
    struct outlier_count *n = NULL;
    if (threshold && *threshold && lat > *threshold) {
        n = outlier_counts.lookup_or_try_init(&hk.k, &none);
        if (n)
            __sync_fetch_and_add(&n->over, 1);
    }
    u64 *floor = floor_ns.lookup(&key->dev);
    if (floor && lat < *floor)
        return;
    struct outlier *ev = outliers.ringbuf_reserve(sizeof(struct outlier));
    if (!ev) {
        if (!n)
            n = outlier_counts.lookup_or_try_init(&hk.k, &none);
        if (n)
            __sync_fetch_and_add(&n->lost, 1);
        return;
    }
    ev->done_ns = now;
    ev->latency_ns = lat;
    ev->sector = key->sector;
    ev->dev = key->dev;
    ev->bytes = s->bytes;
    ev->op = key->op;
    ev->pid = s->pid;
    ev->error = error;
    ev->pad = 0;
    __builtin_memcpy(&ev->comm, s->comm, sizeof(ev->comm));
    outliers.ringbuf_submit(ev, 0);
}

static __always_inline int on_start(struct rq_info *i)
{
    struct rq_key key = key_of(i);
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (i->preflush && key.op == OP_WRITE) {   /* the flush issued for it is this task's */
        struct preflush empty = {};
        struct preflush *p = preflushes.lookup_or_try_init(&key.dev, &empty);
        if (p) {
            p->pid = pid;
            bpf_get_current_comm(&p->comm, sizeof(p->comm));
        }
        if (i->bytes == 0) {   /* an fsync's: no issue of its own, the flush completes it */
            if (p)
                __sync_fetch_and_add(&p->pending, 1);
            return 0;
        }
    }
    struct who w = {.pid = pid};
    bpf_get_current_comm(&w.comm, sizeof(w.comm));
    submitter.update(&key, &w);
    return 0;
}

static __always_inline void flush_issue(u32 dev, struct rq_start *s)
{
    struct flush_fifo empty = {};
    struct flush_fifo *f = flushes.lookup_or_try_init(&dev, &empty);
    if (!f)
        return;
    if (f->requeued) {       /* a requeued flush again: it keeps its place, timed from now */
        __sync_fetch_and_add(&f->requeued, -1);
        struct flush_slot k = {.dev = dev, .seq = (u32)((f->issued - 1) % FLUSH_RING)};
        flush_start.update(&k, s);
        return;
    }
    u64 seq = __sync_fetch_and_add(&f->issued, 1);
    if (seq - f->done >= FLUSH_RING)
        count(COUNTER_FLUSH_OVERFLOW);
    struct flush_slot k = {.dev = dev, .seq = (u32)(seq % FLUSH_RING)};
    flush_start.update(&k, s);
}

static __always_inline int on_issue(struct rq_info *i)
{
    struct rq_key key = key_of(i);
    struct rq_start s = {.ts = bpf_ktime_get_ns(), .bytes = i->bytes};
    if (key.op == OP_FLUSH) {   /* issued by a kworker: name the task whose preflush asked for it */
        struct preflush *p = preflushes.lookup(&key.dev);
        if (p && p->pid) {
            s.pid = p->pid;
            __builtin_memcpy(&s.comm, p->comm, sizeof(s.comm));
        } else {
            name_current(&s);
        }
        flush_issue(key.dev, &s);
        return 0;
    }
    struct who *w = submitter.lookup(&key);
    if (w) {
        s.pid = w->pid;
        __builtin_memcpy(&s.comm, w->comm, sizeof(s.comm));
        submitter.delete(&key);
    } else {
        name_current(&s);
    }
    if (inflight.insert(&key, &s) == -EEXIST_) {   /* one lookup fewer than lookup + update */
        count(COUNTER_COLLISION);
        inflight.update(&key, &s);
    }
    return 0;
}

static __always_inline int on_requeue(struct rq_info *i)
{
    struct rq_key key = key_of(i);
    if (key.op == OP_FLUSH) {
        struct flush_fifo *f = flushes.lookup(&key.dev);
        if (f && f->issued > f->done)
            __sync_fetch_and_add(&f->requeued, 1);
        return 0;
    }
    struct rq_start *s = inflight.lookup(&key);
    if (!s)
        return 0;
    struct who w = {.pid = s->pid};
    __builtin_memcpy(&w.comm, s->comm, sizeof(w.comm));
    submitter.update(&key, &w);
    inflight.delete(&key);
    return 0;
}

static __always_inline int flush_done(struct rq_key *key, u64 now, s32 error)
{
    struct dev_cpu here = {.dev = key->dev, .cpu = bpf_get_smp_processor_id()};
    struct flush_fifo *f = flushes.lookup(&key->dev);
    if (!f || f->done >= f->issued) {   /* issued before the program attached */
        struct rq_start unknown = {};
        last_flush.update(&here, &unknown);
        count(COUNTER_UNPAIRED);
        return 0;
    }
    u64 seq = __sync_fetch_and_add(&f->done, 1);
    struct flush_slot k = {.dev = key->dev, .seq = (u32)(seq % FLUSH_RING)};
    struct rq_start *s = flush_start.lookup(&k);
    if (!s) {
        count(COUNTER_UNPAIRED);
        return 0;
    }
    record(key, s, now, error);
    last_flush.update(&here, s);
    flush_start.delete(&k);
    return 0;
}

/* An empty completion with no issue of its own: a preflush request the flush served, or the
 * end of a write timed already (its post-flush is done). */
static __always_inline int empty_done(struct rq_key *key, u64 now, s32 error)
{
    if (VCHK_HAVE(block_io_start)) {
        struct preflush *p = preflushes.lookup(&key->dev);
        if (!p || !p->pending)
            return 0;
        if (__sync_fetch_and_add(&p->pending, -1) == 0) {   /* lost a race for the last one */
            __sync_fetch_and_add(&p->pending, 1);
            return 0;
        }
    } else if (key->sector != 0) {
        return 0;
    }
    struct dev_cpu here = {.dev = key->dev, .cpu = bpf_get_smp_processor_id()};
    struct rq_start *f = last_flush.lookup(&here);
    struct rq_start s = {.ts = now};
    if (f) {
        if (!f->ts) {                 /* served by a flush issued before the program attached */
            count(COUNTER_UNPAIRED);
            return 0;
        }
        s = *f;
    }
    s.bytes = 0;
    record(key, &s, now, error);
    return 0;
}

static __always_inline int on_done(struct rq_info *i)
{
    u64 now = bpf_ktime_get_ns();
    struct rq_key key = key_of(i);
    if (key.op == OP_FLUSH)
        return flush_done(&key, now, i->error);
    struct rq_start *s = inflight.lookup(&key);
    if (s) {
        record(&key, s, now, i->error);
        inflight.delete(&key);
        return 0;
    }
    if (i->nr_sector == 0)
        return empty_done(&key, now, i->error);
    count(COUNTER_UNPAIRED);
    return 0;
}

#ifdef VCHECK_CORE
/* CO-RE: BTF-typed raw tracepoints (tp_btf), whose argument is the struct request itself: a
 * raw tracepoint detaches in milliseconds (a classic one takes ~75 ms) and, typed, its fields
 * are plain loads, not probe-read helper calls. The fields are what the classic record's
 * TP_fast_assign computes: dev = disk_devt(q->disk), sector = blk_rq_pos() (0 for
 * passthrough), bytes = blk_rq_bytes(), the op and preflush from cmd_flags. */
#define REQ_OP_MASK_ 0xff   /* REQ_OP_BITS = 8; the op numbers below have not moved since 4.10 */
#define REQ_OP_READ_ 0
#define REQ_OP_WRITE_ 1
#define REQ_OP_FLUSH_ 2
#define REQ_OP_DISCARD_ 3
#define REQ_OP_SECURE_ERASE_ 5
#define REQ_OP_DRV_IN_ 34
#define REQ_OP_DRV_OUT_ 35

static __always_inline void info_of(struct request *rq, struct rq_info *i)
{
    struct gendisk *disk = rq->q->disk;
    if (disk)
        i->dev = (u32)disk->major << 20 | (u32)disk->first_minor;
    u32 flags = rq->cmd_flags;
    u32 op = flags & REQ_OP_MASK_;
    bool passthrough = op == REQ_OP_DRV_IN_ || op == REQ_OP_DRV_OUT_;
    i->sector = passthrough ? 0 : rq->__sector;
    i->bytes = rq->__data_len;
    /* the flag's bit moved across kernels: its position comes from the running kernel's BTF */
    i->preflush = (flags >> bpf_core_enum_value(enum req_flag_bits, __REQ_PREFLUSH)) & 1;
    i->op = op == REQ_OP_READ_ ? OP_READ : op == REQ_OP_WRITE_ ? OP_WRITE : op == REQ_OP_FLUSH_ ? OP_FLUSH :
            (op == REQ_OP_DISCARD_ || op == REQ_OP_SECURE_ERASE_) ? OP_DISCARD : OP_OTHER;
}

#define VCHK_BLK_HOOK(fn, event, handler)                                                      \
    VCHK_BTF_TP(event) int fn(u64 *ctx)                                                         \
    {                                                                                           \
        struct rq_info i = {};                                                                  \
        info_of((struct request *)ctx[0], &i);                                                  \
        return handler(&i);                                                                     \
    }

#ifdef HAVE_BLOCK_IO_START
VCHK_BLK_HOOK(vchk_blk_start, block_io_start, on_start)
#endif
VCHK_BLK_HOOK(vchk_blk_issue, block_rq_issue, on_issue)
#ifdef HAVE_BLOCK_RQ_REQUEUE
VCHK_BLK_HOOK(vchk_blk_requeue, block_rq_requeue, on_requeue)
#endif

/* block:block_rq_complete(rq, blk_status_t error, unsigned int nr_bytes): the raw status,
 * which user space names (the classic record holds blk_status_to_errno() of it) */
VCHK_BTF_TP(block_rq_complete)
int vchk_blk_done(u64 *ctx)
{
    struct rq_info i = {};
    info_of((struct request *)ctx[0], &i);
    i.error = (u8)ctx[1];
    i.nr_sector = (u32)ctx[2] >> 9;
    return on_done(&i);
}
#else
/* bcc: the classic records; the op is read from rwbs, as blktrace writes it */
static __always_inline u32 op_of(char c, char n)
{
    if (c == 'F') {          /* a leading F is a preflush; the op letter follows, if any */
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

/* The first two rwbs letters are read as fields, never through a pointer into the record. */
#define INFO_OF(args)                                                                           \
    {.sector = (args)->sector, .dev = (args)->dev, .op = op_of((args)->rwbs[0], (args)->rwbs[1]),  \
     .preflush = (args)->rwbs[0] == 'F'}

#ifdef HAVE_BLOCK_IO_START
VCHK_TP
int vchk_blk_start(struct tracepoint__block__block_io_start *args)
{
    struct rq_info i = INFO_OF(args);
    i.bytes = args->bytes;
    return on_start(&i);
}
#endif

VCHK_TP
int vchk_blk_issue(struct tracepoint__block__block_rq_issue *args)
{
    struct rq_info i = INFO_OF(args);
    i.bytes = args->bytes;
    return on_issue(&i);
}

#ifdef HAVE_BLOCK_RQ_REQUEUE
VCHK_TP
int vchk_blk_requeue(struct tracepoint__block__block_rq_requeue *args)
{
    struct rq_info i = INFO_OF(args);
    return on_requeue(&i);
}
#endif

VCHK_TP
int vchk_blk_done(struct tracepoint__block__block_rq_complete *args)
{
    struct rq_info i = INFO_OF(args);
    i.error = args->error;
    i.nr_sector = args->nr_sector;
    return on_done(&i);
}
#endif
