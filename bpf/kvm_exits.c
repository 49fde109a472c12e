/* kvm_exits.c - KVM exits per VM and exit reason, in nanoseconds (the kvmexits.bt method).
 *
 * Two latencies, each a log-linear histogram (vcheck_hist.h) with exact count/sum/max, keyed
 * by (VMM process, kind, isa, reason):
 *   kind 0: kvm:kvm_exit -> kvm:kvm_entry on the same vCPU thread: the whole exit, in-kernel
 *           handling and any trip to the VMM. The reason is VMX-numbered (low 16 bits of
 *           exit_reason) when isa == 1, SVM-numbered otherwise; user space names it.
 *   kind 1: kvm:kvm_userspace_exit -> the same thread's next KVM_RUN, seen as kvm:kvm_fpu(1),
 *           which KVM_RUN emits as it loads the guest's FPU state before anything else: how
 *           long the VMM's device emulation held the vCPU. Reason is the KVM_EXIT_* code, or
 *           1000 + errno when KVM_RUN returned an error (1004: interrupted by a signal).
 * Counts, taken when the event fires (rates do not depend on the pairing above): exits per
 * (VMM process, kind, isa, reason), port I/O per (VMM process, port, direction) from
 * kvm:kvm_pio, MMIO per (VMM process, guest physical address, type) from kvm:kvm_mmio.
 * counters[] counts kvm_exit and kvm_entry events so user space can tell "no exits happened"
 * from "the tracepoint never fires here".
 *
 * Cost: every kvm:* event fires only in a VMM's vCPU thread, so nothing here runs for the rest
 * of the host (the former syscalls:sys_enter_ioctl hook ran for every ioctl and put every
 * syscall of the host on the slow path). All but kvm_exit are raw tracepoints (no record is
 * formatted; arguments as the kernel passes them); kvm_exit computes its reason only in its
 * record. A thread's in_userspace entry is reused, not deleted and inserted per exit.
 */
#include "vcheck_compat.h"
#include "vcheck_hist.h"

#define KIND_EXIT 0
#define KIND_USERSPACE 1

/* vcheck/bpf.py reads counters[] by these names; the userspace-exit path counts in exits[] only
 * (a shared counter costs every exit an atomic add on a contended line) */
#define COUNTER_EXIT 0
#define COUNTER_ENTRY 1

struct exit_start {
    u64 ts;
    u32 reason;
    u32 isa;
};

struct reason_key {
    u32 tgid;
    u32 kind;
    u32 isa;
    u32 reason;
};

struct reason_slot {
    struct reason_key k;
    u32 slot;
    u32 pad;
};

struct pio_key {
    u32 tgid;
    u32 port;
    u32 rw;
    u32 pad;
};

struct mmio_key {
    u64 gpa;
    u32 tgid;
    u32 type;
};

BPF_HASH(in_exit, u32, struct exit_start, 65536);
BPF_HASH(in_userspace, u32, struct exit_start, 65536);
BPF_HASH(hist, struct reason_slot, u64, 65536);
BPF_HASH(stats, struct reason_key, struct vcheck_stats, 16384);
BPF_HASH(exits, struct reason_key, u64, 16384);
BPF_HASH(pio, struct pio_key, u64, 16384);
BPF_HASH(mmio, struct mmio_key, u64, 16384);
BPF_ARRAY(counters, u64, 2);

static __always_inline void count(u32 which)
{
    vcheck_inc(counters.lookup(&which));
}

static __always_inline void count_exit(u32 tgid, u32 kind, struct exit_start *s)
{
    struct reason_key k = {.tgid = tgid, .kind = kind, .isa = s->isa, .reason = s->reason};
    u64 zero = 0;
    vcheck_inc(exits.lookup_or_try_init(&k, &zero));
}

static __always_inline void record(u32 tgid, u32 kind, struct exit_start *s, u64 now)
{
    u64 delta = now - s->ts;
    struct reason_slot hk = {};
    hk.k.tgid = tgid;
    hk.k.kind = kind;
    hk.k.isa = s->isa;
    hk.k.reason = s->reason;
    hk.slot = vcheck_bucket(delta);
    u64 zero = 0;
    struct vcheck_stats empty = {};
    vcheck_record(hist.lookup_or_try_init(&hk, &zero), stats.lookup_or_try_init(&hk.k, &empty), delta);
}

VCHK_TP
int vchk_kvm_exit(struct tracepoint__kvm__kvm_exit *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct exit_start s = {.ts = bpf_ktime_get_ns(), .isa = args->isa};
    s.reason = args->isa == 1 ? (args->exit_reason & 0xffff) : args->exit_reason;
    in_exit.update(&tid, &s);
    count(COUNTER_EXIT);
    count_exit(id >> 32, KIND_EXIT, &s);
    return 0;
}

/* kvm:kvm_entry(vcpu, immediate_exit) */
VCHK_RAW_TP
int vchk_kvm_entry(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    count(COUNTER_ENTRY);
    struct exit_start *s = in_exit.lookup(&tid);
    if (!s)
        return 0;
    record(id >> 32, KIND_EXIT, s, bpf_ktime_get_ns());
    in_exit.delete(&tid);
    return 0;
}

/* kvm:kvm_userspace_exit(reason, errno) */
VCHK_RAW_TP
int vchk_kvm_uexit(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    int err = (int)ctx->args[1];
    struct exit_start s = {.ts = bpf_ktime_get_ns(), .isa = 0};
    s.reason = err < 0 ? 1000 + (u32)(-err) : (u32)ctx->args[0];
    struct exit_start *slot = in_userspace.lookup(&tid);
    if (slot)
        *slot = s;      /* only this thread writes its entry */
    else
        in_userspace.update(&tid, &s);
    count_exit(id >> 32, KIND_USERSPACE, &s);
    return 0;
}

/* kvm:kvm_fpu(load): 1 as KVM_RUN starts, 0 as it returns to the VMM */
VCHK_RAW_TP
int vchk_kvm_run(struct bpf_raw_tracepoint_args *ctx)
{
    if (!ctx->args[0])
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct exit_start *s = in_userspace.lookup(&tid);
    if (!s || !s->ts)
        return 0;
    record(id >> 32, KIND_USERSPACE, s, bpf_ktime_get_ns());
    s->ts = 0;
    return 0;
}

/* kvm:kvm_pio(rw, port, size, count, data) */
VCHK_RAW_TP
int vchk_kvm_pio(struct bpf_raw_tracepoint_args *ctx)
{
    struct pio_key k = {.tgid = bpf_get_current_pid_tgid() >> 32, .port = (u32)ctx->args[1],
                        .rw = (u32)ctx->args[0]};
    u64 zero = 0;
    vcheck_inc(pio.lookup_or_try_init(&k, &zero));
    return 0;
}

/* kvm:kvm_mmio(type, len, gpa, val) */
VCHK_RAW_TP
int vchk_kvm_mmio(struct bpf_raw_tracepoint_args *ctx)
{
    struct mmio_key k = {.gpa = ctx->args[2], .tgid = bpf_get_current_pid_tgid() >> 32,
                         .type = (u32)ctx->args[0]};
    u64 zero = 0;
    vcheck_inc(mmio.lookup_or_try_init(&k, &zero));
    return 0;
}
