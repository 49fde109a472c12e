/* vcheck_compat.h - one source per program for two loaders: bcc (compiled at run time) and
 * libbpf (a CO-RE object compiled once at set-up by vcheck/bpf_build.py, with -DVCHECK_CORE).
 *
 * Programs are written in bcc's dialect (BPF_HASH, map.lookup(), struct tracepoint__cat__event);
 * under VCHECK_CORE this header gives that dialect a libbpf meaning:
 * - each map is a BTF-defined map NAME__map plus a constant table of inline functions named
 *   NAME, so NAME.lookup(k) is a direct call once clang has folded the constant (-O2);
 * - tracepoint records are the kernel's trace_event_raw_* structs from vmlinux.h, so field
 *   offsets are relocated against the running kernel's BTF at load;
 * - VCHK_TP / VCHK_RAW_TP / VCHK_BTF_TP(event) put a program in the section libbpf loads as
 *   that type (bcc takes the type from the attach call and needs nothing here);
 * - VCHK_HAVE(event) says whether an optional tracepoint is attached: a -D under bcc, a
 *   read-only global that the loader sets before load under CO-RE (the verifier then drops
 *   the dead branch).
 * bcc cannot rewrite a map call that comes from a macro, hence the function table rather than
 * macros around the calls.
 */
#ifndef VCHECK_COMPAT_H
#define VCHECK_COMPAT_H

#ifdef VCHECK_CORE

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#ifndef NULL
#define NULL ((void *)0)
#endif

char _vchk_license[] SEC("license") = "GPL";

#define VCHK_TP SEC("tp")
#define VCHK_RAW_TP SEC("raw_tp")
#define VCHK_BTF_TP(event) SEC("tp_btf/" #event)   /* typed raw tracepoint (5.5+): plain loads */
#define VCHK_DECLARE_HAVE(event) const volatile u32 vchk_have_##event = 1
#define VCHK_HAVE(event) (vchk_have_##event)

/* bcc's names for tracepoint records -> the event class struct that defines the record */
#define tracepoint__block__block_rq_issue trace_event_raw_block_rq
#define tracepoint__block__block_rq_insert trace_event_raw_block_rq
#define tracepoint__block__block_io_start trace_event_raw_block_rq
#define tracepoint__block__block_io_done trace_event_raw_block_rq
#define tracepoint__block__block_rq_requeue trace_event_raw_block_rq_requeue
#define tracepoint__block__block_rq_complete trace_event_raw_block_rq_completion
#define tracepoint__sched__sched_switch trace_event_raw_sched_switch
#define tracepoint__sched__sched_wakeup trace_event_raw_sched_wakeup_template
#define tracepoint__sched__sched_wakeup_new trace_event_raw_sched_wakeup_template
#define tracepoint__sched__sched_waking trace_event_raw_sched_wakeup_template
#define tracepoint__sched__sched_process_exit trace_event_raw_sched_process_template
#define tracepoint__kvm__kvm_exit trace_event_raw_kvm_exit
#define tracepoint__kvm__kvm_entry trace_event_raw_kvm_entry
#define tracepoint__kvm__kvm_userspace_exit trace_event_raw_kvm_userspace_exit
#define tracepoint__kvm__kvm_pio trace_event_raw_kvm_pio
#define tracepoint__kvm__kvm_mmio trace_event_raw_kvm_mmio
#define tracepoint__kvm__kvm_fpu trace_event_raw_kvm_fpu

#define VCHK_MAP__(_name, _mtype, _K, _V, _N)                                                   \
    struct {                                                                                    \
        __uint(type, _mtype);                                                                   \
        __uint(max_entries, _N);                                                                \
        __type(key, _K);                                                                        \
        __type(value, _V);                                                                      \
    } _name##__map SEC(".maps");                                                                \
    static __always_inline _V *_name##__lookup(const void *k)                                   \
    {                                                                                           \
        return bpf_map_lookup_elem(&_name##__map, k);                                           \
    }                                                                                           \
    static __always_inline long _name##__update(const void *k, const _V *v)                     \
    {                                                                                           \
        return bpf_map_update_elem(&_name##__map, k, v, BPF_ANY);                               \
    }                                                                                           \
    static __always_inline long _name##__insert(const void *k, const _V *v)                     \
    {                                                                                           \
        return bpf_map_update_elem(&_name##__map, k, v, BPF_NOEXIST);                           \
    }                                                                                           \
    static __always_inline long _name##__delete(const void *k)                                  \
    {                                                                                           \
        return bpf_map_delete_elem(&_name##__map, k);                                           \
    }                                                                                           \
    static __always_inline _V *_name##__lookup_or_try_init(const void *k, const _V *init)      \
    {                                                                                           \
        _V *v = bpf_map_lookup_elem(&_name##__map, k);                                          \
        if (!v) {                                                                               \
            bpf_map_update_elem(&_name##__map, k, init, BPF_NOEXIST);                           \
            v = bpf_map_lookup_elem(&_name##__map, k);                                          \
        }                                                                                       \
        return v;                                                                               \
    }                                                                                           \
    static const struct {                                                                       \
        _V *(*lookup)(const void *);                                                            \
        long (*update)(const void *, const _V *);                                               \
        long (*insert)(const void *, const _V *);                                               \
        long (*delete)(const void *);                                                           \
        _V *(*lookup_or_try_init)(const void *, const _V *);                                    \
    } _name __attribute__((unused)) = {_name##__lookup, _name##__update, _name##__insert,       \
                                       _name##__delete, _name##__lookup_or_try_init}

#define BPF_HASH(_name, _K, _V, _N) VCHK_MAP__(_name, BPF_MAP_TYPE_HASH, _K, _V, _N)
#define BPF_PERCPU_HASH(_name, _K, _V, _N) VCHK_MAP__(_name, BPF_MAP_TYPE_PERCPU_HASH, _K, _V, _N)
#define BPF_ARRAY(_name, _V, _N) VCHK_MAP__(_name, BPF_MAP_TYPE_ARRAY, int, _V, _N)
#define BPF_PERCPU_ARRAY(_name, _V, _N) VCHK_MAP__(_name, BPF_MAP_TYPE_PERCPU_ARRAY, int, _V, _N)

#define BPF_RINGBUF_OUTPUT(_name, _pages)                                                      \
    struct {                                                                                    \
        __uint(type, BPF_MAP_TYPE_RINGBUF);                                                     \
        __uint(max_entries, (_pages) * 4096);                                                   \
    } _name##__map SEC(".maps");                                                                \
    static __always_inline void *_name##__ringbuf_reserve(u64 size)                             \
    {                                                                                           \
        return bpf_ringbuf_reserve(&_name##__map, size, 0);                                     \
    }                                                                                           \
    static __always_inline void _name##__ringbuf_submit(void *data, u64 flags)                  \
    {                                                                                           \
        bpf_ringbuf_submit(data, flags);                                                        \
    }                                                                                           \
    static __always_inline void _name##__ringbuf_discard(void *data, u64 flags)                 \
    {                                                                                           \
        bpf_ringbuf_discard(data, flags);                                                       \
    }                                                                                           \
    static const struct {                                                                       \
        void *(*ringbuf_reserve)(u64);                                                          \
        void (*ringbuf_submit)(void *, u64);                                                    \
        void (*ringbuf_discard)(void *, u64);                                                   \
    } _name __attribute__((unused)) = {_name##__ringbuf_reserve, _name##__ringbuf_submit,       \
                                       _name##__ringbuf_discard}

#else /* bcc */

#include <uapi/linux/ptrace.h>

#define VCHK_TP
#define VCHK_RAW_TP
/* vcheck/bpf.py passes -DVCHK_HAVE_<event>=0|1 for every attach point */
#define VCHK_DECLARE_HAVE(event) typedef int vchk_have_##event##_t
#define VCHK_HAVE(event) (VCHK_HAVE_##event)

#endif /* VCHECK_CORE */

#endif
