/* runq_latency.c - scheduler run-queue latency (wakeup -> running), in nanoseconds, per CPU.
 *
 * What runqlat measures, from tracepoints only: a task becomes runnable at sched:sched_wakeup
 * or sched:sched_wakeup_new, or when it is preempted while still runnable (sched:sched_switch
 * with prev_state == TASK_RUNNING); the delay ends when sched:sched_switch switches it in. The
 * delay is charged to the CPU it finally ran on. Per CPU: a log-linear histogram
 * (vcheck_hist.h) and exact count/sum/max. PID 0 (the idle task) is never tracked.
 */
#include <uapi/linux/ptrace.h>
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

static __always_inline void mark_runnable(u32 pid)
{
    if (pid == 0)
        return;
    u64 ts = bpf_ktime_get_ns();
    runnable_since.update(&pid, &ts);
}

int vchk_rq_wakeup(struct tracepoint__sched__sched_wakeup *args)
{
    mark_runnable(args->pid);
    return 0;
}

int vchk_rq_wakeup_new(struct tracepoint__sched__sched_wakeup_new *args)
{
    mark_runnable(args->pid);
    return 0;
}

int vchk_rq_switch(struct tracepoint__sched__sched_switch *args)
{
    /* the low byte holds the task state; a preempted task reports only TASK_REPORT_MAX above it */
    if ((args->prev_state & 0xff) == 0)
        mark_runnable(args->prev_pid);

    u32 pid = args->next_pid;
    if (pid == 0)
        return 0;
    u64 *since = runnable_since.lookup(&pid);
    if (!since)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *since;
    runnable_since.delete(&pid);

    struct cpu_slot key = {.k = {.cpu = bpf_get_smp_processor_id()}, .slot = vcheck_bucket(delta)};
    u64 zero = 0;
    struct vcheck_stats empty = {};
    vcheck_record(hist.lookup_or_try_init(&key, &zero), stats.lookup_or_try_init(&key.k, &empty), delta);
    return 0;
}
