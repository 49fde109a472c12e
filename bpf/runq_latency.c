/* runq_latency.c - scheduler run-queue latency (wakeup -> running), in nanoseconds, per CPU,
 * and who had the CPU meanwhile.
 *
 * What runqlat measures, from tracepoints only: a task becomes runnable at sched:sched_wakeup
 * or sched:sched_wakeup_new, or when it is preempted while still runnable (sched:sched_switch
 * with prev_state == TASK_RUNNING); the delay ends when sched:sched_switch switches it in. The
 * delay is charged to the CPU it finally ran on. Per CPU: a log-linear histogram
 * (vcheck_hist.h) and exact count/sum/max. PID 0 (the idle task) is never tracked.
 *
 * Culprits (-DVCHK_CULPRITS, -DVCHK_WATCH): each wait is split among the tasks that ran on that
 * CPU during it, summed in the kernel; no per-switch record reaches user space.
 *  - Each CPU keeps a history ring of RING_SLOTS segments: a segment is a stretch of the CPU's
 *    time with the run time of each of at most SEGMENT_TASKS distinct tasks in it (ns, summed over
 *    all their turns). A switch adds the outgoing turn to the current segment; a new segment
 *    starts when the incoming task is not in it and it is full, or it is SEGMENT_NS old. Turns
 *    of the same few tasks (a pipe ping-pong, 67k switches/s) fold into one segment: the history
 *    holds RING_SLOTS segments, not RING_SLOTS turns. Only c's own sched_switch reads or writes
 *    c's ring (preemption is off there and tracepoint programs do not nest on a CPU): no lock.
 *  - When a task that waited since W is switched in on c at T, c's ring is walked back from T
 *    to W: a segment wholly inside [W, T] charges each of its tasks its run time there; the
 *    segment W falls in charges its overlap with the wait among its tasks (the waiter itself
 *    excepted) in proportion to their run time in it (an estimate within SEGMENT_NS). What the
 *    ring no longer covers is charged to UNATTRIBUTED, idle time to pid 0.
 *  - Victims, told apart by the key's kind: the CPU (VICTIM_CPU, every task: what
 *    sched.runq.latency per CPU is made of, with VCHK_CULPRITS), and with VCHK_WATCH the task
 *    itself when user space put its tid in `watched` (VICTIM_TASK: vCPU threads).
 *    VCHK_NO_HIST tracks watched tasks only, no histogram.
 * Not chosen: charging each outgoing task to the waiters queued on its CPU. The waiter count
 * of a CPU would be changed by wakeups running on other CPUs, and tracing programs may not
 * take bpf_spin_lock. Limit: a task migrated while it waited is charged with what ran on the
 * CPU it finally ran on, as its latency is.
 * Bounds: 65536 runnable tasks, 16384 (victim, culprit) pairs; a charge that finds the map
 * full is counted in counters[COUNTER_CULPRITS_FULL].
 */
#if defined(VCHK_NO_HIST) && !defined(VCHK_WATCH)
#define VCHK_WATCH                     /* no histogram means watched tasks only: it needs the watch */
#endif
#include "vcheck_compat.h"   /* built by bcc or as a CO-RE object */
#include "vcheck_hist.h"

struct cpu_key {
    u32 cpu;
};

struct cpu_slot {
    struct cpu_key k;
    u32 slot;
};

BPF_HASH(runnable_since, u32, u64, 65536);
BPF_HASH(hist, struct cpu_slot, u64, 16384);
BPF_HASH(stats, struct cpu_key, struct vcheck_stats, 1024);

#if defined(VCHK_CULPRITS) || defined(VCHK_WATCH)
#define VCHK_RING 1
#define RING_SLOTS 64                  /* a power of two: the index is masked */
#define SEGMENT_TASKS 4                /* distinct tasks a segment sums */
#define SEGMENT_NS 4000000ull          /* a segment is closed at its first switch after 4 ms */
#ifndef BCC_WALK
#define BCC_WALK 32                    /* segments the bcc path walks (no bpf_loop there; 64 is too complex) */
#endif
#define UNATTRIBUTED 0xFFFFFFFFu       /* no pid_t: the part of a wait older than the ring */
#define COUNTER_CULPRITS_FULL 0
#define COUNTER_UNATTRIBUTED_WAITS 1
#define VICTIM_CPU 0
#define VICTIM_TASK 1

struct entry {
    u64 ns;                            /* run time of the task in the segment */
    u32 pid;
    u32 pad;
    char comm[16];
};

struct segment {
    u64 start;
    u32 n;                             /* entries used */
    u32 pad;
    struct entry e[SEGMENT_TASKS];
};

struct ring {
    u64 head;                          /* segments ever started on this CPU */
    u64 last;                          /* the last switch on this CPU */
    u32 cur;                           /* the running task's entry in the newest segment */
    u32 pad;
    struct segment s[RING_SLOTS];
};

struct culprit_key {
    u32 kind;                          /* VICTIM_CPU or VICTIM_TASK */
    u32 victim;                        /* a CPU, or a watched tid */
    u32 pid;                           /* who ran meanwhile: a tid, 0 idle, UNATTRIBUTED */
};

struct culprit {
    u64 ns;
    char comm[16];                     /* as it was then: the task may exit before the read */
};

BPF_PERCPU_ARRAY(rings, struct ring, 1);
BPF_ARRAY(counters, u64, 2);
BPF_HASH(culprits, struct culprit_key, struct culprit, 16384);
#ifdef VCHK_WATCH
BPF_HASH(watched, u32, u8, 4096);
#endif

static __always_inline void count(u32 i)
{
    vcheck_inc(counters.lookup(&i));
}
#endif

static __always_inline void mark_runnable(u32 pid)
{
    if (pid == 0)
        return;
#ifdef VCHK_NO_HIST
    if (!watched.lookup(&pid))
        return;
#endif
    u64 ts = bpf_ktime_get_ns();
    runnable_since.update(&pid, &ts);
}

#ifdef VCHECK_CORE
/* CO-RE: raw tracepoints (the kernel's arguments; detached in ms, a classic one takes ~75 ms) */
/* sched:sched_wakeup(p), sched:sched_wakeup_new(p) */
VCHK_RAW_TP
int vchk_rq_wakeup(struct bpf_raw_tracepoint_args *ctx)
{
    mark_runnable(BPF_CORE_READ((struct task_struct *)ctx->args[0], pid));
    return 0;
}

VCHK_RAW_TP
int vchk_rq_wakeup_new(struct bpf_raw_tracepoint_args *ctx)
{
    mark_runnable(BPF_CORE_READ((struct task_struct *)ctx->args[0], pid));
    return 0;
}
#else
VCHK_TP
int vchk_rq_wakeup(struct tracepoint__sched__sched_wakeup *args)
{
    mark_runnable(args->pid);
    return 0;
}

VCHK_TP
int vchk_rq_wakeup_new(struct tracepoint__sched__sched_wakeup_new *args)
{
    mark_runnable(args->pid);
    return 0;
}
#endif

#ifdef VCHK_RING
static __always_inline void charge(struct culprit_key *k, u64 ns, const char *comm)
{
    struct culprit *c = culprits.lookup(k);
    if (!c) {
        struct culprit init = {};
        __builtin_memcpy(init.comm, comm, sizeof(init.comm));
        culprits.insert(k, &init);
        c = culprits.lookup(k);
        if (!c) {
            count(COUNTER_CULPRITS_FULL);
            return;
        }
    }
    __sync_fetch_and_add(&c->ns, ns);
}

/* Charge one segment's part of a wait: all of each task's run time when the segment lies in
 * the wait (part == 0), else `part` ns split among its tasks other than the waiter by their
 * run time in it. */
static __always_inline void charge_segment(struct segment *g, u32 cpu, u32 tid, u64 part,
                                           bool by_cpu, bool by_task)
{
    u64 others = 0;
    if (part) {
        for (int j = 0; j < SEGMENT_TASKS; j++)
            if (j < g->n && g->e[j].pid != tid)
                others += g->e[j].ns;
        if (!others)
            return;
    }
    for (int j = 0; j < SEGMENT_TASKS; j++) {
        if (j >= g->n)
            break;
        struct entry *e = &g->e[j];
        if (e->pid == tid || !e->ns)
            continue;
        /* in 1/1024ths of the part: no 64-bit overflow for any realistic segment */
        u64 ns = part ? (e->ns * 1024 / others) * part / 1024 : e->ns;
        struct culprit_key k = {.kind = VICTIM_CPU, .victim = cpu, .pid = e->pid};
        if (by_cpu)
            charge(&k, ns, e->comm);
        k.kind = VICTIM_TASK;
        k.victim = tid;
        if (by_task)
            charge(&k, ns, e->comm);
    }
}

#ifdef VCHECK_CORE
/* The walk back through the ring as a bpf_loop (5.17+; the raw sched_switch hook needs 5.18
 * anyway): the verifier checks one step once instead of RING_SLOTS unrolled steps. */
struct walk {
    u64 since;
    u64 end;
    u64 head;
    u32 cpu;
    u32 tid;
    u32 by_cpu;
    u32 by_task;
};

static long walk_step(u32 i, void *arg)
{
    struct walk *w = arg;
    u32 zero = 0;
    struct ring *r = rings.lookup(&zero);   /* this CPU's ring: the caller's, per-CPU */
    if (!r || w->end <= w->since || (u64)i >= w->head)
        return 1;
    struct segment *g = &r->s[(w->head - 1 - i) & (RING_SLOTS - 1)];
    u64 start = g->start;
    charge_segment(g, w->cpu, w->tid, start >= w->since ? 0 : w->end - w->since, w->by_cpu, w->by_task);
    w->end = start < w->end ? start : w->end;
    return 0;
}
#endif

/* Split the wait [since, now] of task `tid`, switched in on `cpu`, among the segments of the
 * CPU's ring (the newest brought up to `now`); by_cpu/by_task say which victims are charged. */
static __always_inline void charge_wait(struct ring *r, u32 cpu, u32 tid, u64 since, u64 now,
                                        bool by_cpu, bool by_task)
{
    struct culprit_key ck = {.kind = VICTIM_CPU, .victim = cpu};
    struct culprit_key tk = {.kind = VICTIM_TASK, .victim = tid};
    char none[16] = {};
#ifdef VCHECK_CORE
    struct walk w = {.since = since, .end = now, .head = r->head, .cpu = cpu, .tid = tid,
                     .by_cpu = by_cpu, .by_task = by_task};
    bpf_loop(RING_SLOTS, walk_step, &w, 0);
    u64 end = w.end;
#else
    /* bcc cannot pass bpf_loop a callback, and RING_SLOTS unrolled copies of a segment's
     * charges exceed the verifier's complexity limit: it walks the newest BCC_WALK segments */
    u64 end = now;
    u64 head = r->head;
    for (int i = 0; i < BCC_WALK; i++) {
        if (end <= since || (u64)i >= head)
            break;
        struct segment *g = &r->s[(head - 1 - i) & (RING_SLOTS - 1)];
        u64 start = g->start;
        charge_segment(g, cpu, tid, start >= since ? 0 : end - since, by_cpu, by_task);
        end = start < end ? start : end;
    }
#endif
    if (end > since) {
        count(COUNTER_UNATTRIBUTED_WAITS);
        ck.pid = tk.pid = UNATTRIBUTED;
        if (by_cpu)
            charge(&ck, end - since, none);
        if (by_task)
            charge(&tk, end - since, none);
    }
}

/* The CPU switches to `pid` at `now`: the outgoing turn is added to the newest segment (done by
 * the caller before any wait is charged), and the incoming task gets its entry there, or a new
 * segment when it has no room or is SEGMENT_NS old. */
static __always_inline void account_turn(struct ring *r, u64 now)
{
    if (!r->head)
        return;
    struct segment *g = &r->s[(r->head - 1) & (RING_SLOTS - 1)];
    u32 cur = r->cur;
    if (cur < SEGMENT_TASKS && now > r->last)
        g->e[cur & (SEGMENT_TASKS - 1)].ns += now - r->last;
}

static __always_inline void place(struct ring *r, u64 now, u32 pid, const char *comm)
{
    r->last = now;
    if (r->head) {
        struct segment *g = &r->s[(r->head - 1) & (RING_SLOTS - 1)];
        if (now - g->start <= SEGMENT_NS) {
            for (int j = 0; j < SEGMENT_TASKS; j++) {
                if (j < g->n && g->e[j].pid == pid) {
                    r->cur = j;
                    return;
                }
            }
            u32 n = g->n;
            if (n < SEGMENT_TASKS) {
                struct entry *e = &g->e[n & (SEGMENT_TASKS - 1)];
                e->ns = 0;
                e->pid = pid;
                /* a copy out of a CO-RE relocated record must go through a helper (verifier) */
                bpf_probe_read_kernel(e->comm, sizeof(e->comm), comm);
                g->n = n + 1;
                r->cur = n;
                return;
            }
        }
    }
    struct segment *g = &r->s[r->head & (RING_SLOTS - 1)];
    g->start = now;
    g->n = 1;
    g->e[0].ns = 0;
    g->e[0].pid = pid;
    bpf_probe_read_kernel(g->e[0].comm, sizeof(g->e[0].comm), comm);
    r->cur = 0;
    r->head++;
}
#endif

/* Switching from prev (runnable again: preempted, or state reported as TASK_RUNNING) to next
 * (pid, comm) on this CPU. */
static __always_inline void on_switch(u32 prev_pid, bool prev_runnable, u32 pid, const char *comm)
{
    if (prev_runnable)
        mark_runnable(prev_pid);

    u64 now = bpf_ktime_get_ns();
    u32 cpu = bpf_get_smp_processor_id();
#ifdef VCHK_RING
    u32 zero = 0;
    struct ring *r = rings.lookup(&zero);
    if (!r)
        return;
    account_turn(r, now);
#endif
    u64 *since = pid ? runnable_since.lookup(&pid) : NULL;
    if (since) {
        u64 from = *since;
        u64 delta = now - from;
        runnable_since.delete(&pid);
#ifndef VCHK_NO_HIST
        struct cpu_slot key = {.k = {.cpu = cpu}, .slot = vcheck_bucket(delta)};
        u64 zero64 = 0;
        struct vcheck_stats empty = {};
        vcheck_record(hist.lookup_or_try_init(&key, &zero64), stats.lookup_or_try_init(&key.k, &empty), delta);
#endif
#ifdef VCHK_RING
        bool by_cpu = false, by_task = false;
#ifdef VCHK_CULPRITS
        by_cpu = true;
#endif
#ifdef VCHK_WATCH
#ifdef VCHK_NO_HIST
        by_task = true;                /* only watched tasks are ever marked runnable */
#else
        by_task = watched.lookup(&pid) != NULL;
#endif
#endif
        if (from < now)
            charge_wait(r, cpu, pid, from, now, by_cpu, by_task);
#endif
    }
#ifdef VCHK_RING
    place(r, now, pid, comm);
#endif
}

#ifdef VCHECK_CORE
/* sched:sched_switch(preempt, prev, next, prev_state) (kernel 5.18+; older kernels refuse the
 * attach and the program falls back to bcc). The classic record's prev_state is
 * __trace_sched_switch_state(): its low byte is 0 when preempted or when
 * (prev_state | exit_state) & TASK_REPORT is 0 and neither TASK_RTLOCK_WAIT nor TASK_FROZEN
 * is set; the same test here. */
#define TASK_REPORT_ 0x7f
#define TASK_RTLOCK_WAIT_ 0x1000
#define TASK_FROZEN_ 0x8000
VCHK_RAW_TP
int vchk_rq_switch(struct bpf_raw_tracepoint_args *ctx)
{
    struct task_struct *prev = (struct task_struct *)ctx->args[1];
    struct task_struct *next = (struct task_struct *)ctx->args[2];
    u32 state = (u32)ctx->args[3];
    bool runnable = ctx->args[0] & 1;
    if (!runnable)
        runnable = ((state | (u32)BPF_CORE_READ(prev, exit_state)) & TASK_REPORT_) == 0 &&
                   !(state & (TASK_RTLOCK_WAIT_ | TASK_FROZEN_));
    on_switch(BPF_CORE_READ(prev, pid), runnable, BPF_CORE_READ(next, pid), next->comm);
    return 0;
}
#else
VCHK_TP
int vchk_rq_switch(struct tracepoint__sched__sched_switch *args)
{
    /* the low byte holds the task state; a preempted task reports only TASK_REPORT_MAX above it */
    on_switch(args->prev_pid, (args->prev_state & 0xff) == 0, args->next_pid, args->next_comm);
    return 0;
}
#endif
