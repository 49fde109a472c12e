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
 *  - Every sched_switch on CPU c appends {next pid, comm, time} to c's history ring: the last
 *    RING_SLOTS slices of c. Only c's own sched_switch reads or writes c's ring (preemption is
 *    off there and tracepoint programs do not nest on a CPU), so it needs no lock.
 *  - When a task that waited since W is switched in on c at T, c's ring is walked back from T
 *    to W and each slice's overlap with [W, T] is added to culprits{victim, slice's pid}. The
 *    walk costs the slices the wait spanned (one or two for most waits), at most RING_SLOTS;
 *    what a longer wait leaves uncovered is charged to UNATTRIBUTED, idle slices to pid 0.
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
#define UNATTRIBUTED 0xFFFFFFFFu       /* no pid_t: the part of a wait older than the ring */
#define COUNTER_CULPRITS_FULL 0
#define COUNTER_UNATTRIBUTED_WAITS 1
#define VICTIM_CPU 0
#define VICTIM_TASK 1

struct slice {
    u64 start;
    u32 pid;
    u32 pad;
    char comm[16];
};

struct ring {
    u64 head;                          /* slices ever written on this CPU */
    struct slice s[RING_SLOTS];
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

#ifdef VCHECK_CORE
/* The walk back through the ring as a bpf_loop (5.17+; the raw sched_switch hook needs 5.18
 * anyway): the verifier checks one step once instead of RING_SLOTS unrolled steps, which was
 * most of this program's load time. */
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
    struct slice *s = &r->s[(w->head - 1 - i) & (RING_SLOTS - 1)];
    u64 start = s->start;
    u64 from = start > w->since ? start : w->since;
    if (w->end > from && s->pid != w->tid) {
        struct culprit_key k = {.kind = VICTIM_CPU, .victim = w->cpu, .pid = s->pid};
        if (w->by_cpu)
            charge(&k, w->end - from, s->comm);
        k.kind = VICTIM_TASK;
        k.victim = w->tid;
        if (w->by_task)
            charge(&k, w->end - from, s->comm);
    }
    w->end = start < w->end ? start : w->end;
    return 0;
}
#endif

/* Split the wait [since, now] of task `tid`, switched in on `cpu`, among the slices of the
 * CPU's ring; by_cpu/by_task say which victims are charged. */
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
    u64 end = now;
    u64 head = r->head;
    for (int i = 0; i < RING_SLOTS; i++) {
        if (end <= since || (u64)i >= head)
            break;
        struct slice *s = &r->s[(head - 1 - i) & (RING_SLOTS - 1)];
        u64 start = s->start;
        u64 from = start > since ? start : since;
        if (end > from && s->pid != tid) {
            ck.pid = tk.pid = s->pid;
            if (by_cpu)
                charge(&ck, end - from, s->comm);
            if (by_task)
                charge(&tk, end - from, s->comm);
        }
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
    struct slice *s = &r->s[r->head & (RING_SLOTS - 1)];
    s->start = now;
    s->pid = pid;
    /* a copy out of a CO-RE relocated record must go through a helper (verifier) */
    bpf_probe_read_kernel(s->comm, sizeof(s->comm), comm);
    r->head++;
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
