/* tcp_latency.c - TCP retransmissions per flow and smoothed RTT per network namespace.
 *
 * tcp:tcp_retransmit_skb: segments resent per flow (netns, addresses, ports; under bcc the
 * packets, a TSO packet counting once) with the socket's inode,
 * so user space names the remote endpoint and the process that owns the socket (the event
 * runs in softirq or a timer: the current task is not the owner). A retransmission the
 * kernel could not send (err != 0, 6.x) is not counted, as /proc/net/snmp RetransSegs does.
 *
 * tcp:tcp_probe (each segment received on an established socket): the socket's smoothed RTT
 * (srtt_us >> 3, microseconds) into a log-linear histogram per namespace (vcheck_hist.h, in
 * nanoseconds like every vcheck histogram), and per flow the largest srtt seen, so the
 * slowest flows are evidence. Per ACK: one histogram slot, one stats entry, one flow entry;
 * nothing goes to user space per event.
 *
 * CO-RE: both are typed raw tracepoints (no record is formatted; they detach in milliseconds),
 * fields read from the socket. bcc: both classic records;
 * the namespace and the socket's inode are not read (0).
 */
#include "vcheck_compat.h"
#include "vcheck_hist.h"


#define COUNTER_FLOWS_FULL 0
#define COUNTER_RETRANS_FAILED 1

struct flow {
    u8 saddr[16];    /* IPv4 in the first 4 bytes when family == 2 */
    u8 daddr[16];
    u32 netns;
    u16 family;
    u16 sport;       /* host order */
    u16 dport;
    u16 pad;
    u32 pad2;
};

struct retrans_val {
    u64 count;
    u64 sock_ino;
};

struct ns_key {
    u32 netns;
    u32 pad;
};

struct hist_key {
    struct ns_key k;
    u32 slot;
    u32 pad;
};

struct flow_rtt {
    struct flow f;
    u64 sock_ino;
    u64 samples;
    u32 max_srtt_us;
    u32 last_srtt_us;
};

BPF_HASH(retrans, struct flow, struct retrans_val, 16384);
BPF_HASH(hist, struct hist_key, u64, 8192);
BPF_HASH(stats, struct ns_key, struct vcheck_stats, 1024);
BPF_HASH(flows, u64, struct flow_rtt, 16384);
BPF_ARRAY(counters, u64, 2);

static __always_inline void count(u32 which)
{
    vcheck_inc(counters.lookup(&which));
}

#ifdef VCHECK_CORE
static __always_inline void flow_of(const struct sock *sk, struct flow *f, u64 *ino)
{
    f->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
    f->family = BPF_CORE_READ(sk, __sk_common.skc_family);
    f->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
    f->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
    if (f->family == 2) {
        u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr), d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
        __builtin_memcpy(f->saddr, &s, 4);
        __builtin_memcpy(f->daddr, &d, 4);
    } else {
        BPF_CORE_READ_INTO(&f->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
        BPF_CORE_READ_INTO(&f->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
    }
    *ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
}
#endif

#ifdef HAVE_TCP_RETRANSMIT_SKB
static __always_inline int count_retransmit(struct flow *f, u64 ino, u64 n)
{
    struct retrans_val zero = {};
    struct retrans_val *v = retrans.lookup_or_try_init(f, &zero);
    if (!v) {
        count(COUNTER_FLOWS_FULL);
        return 0;
    }
    __sync_fetch_and_add(&v->count, n);
    if (ino)
        v->sock_ino = ino;
    return 0;
}

#ifdef VCHECK_CORE
/* CO-RE: a typed raw tracepoint, tcp_retransmit_skb(sk, skb[, err]): detaches in milliseconds.
 * err (6.x: the resend failed, not counted, as RetransSegs does not) is an argument only on
 * kernels that have it: the VCHK_RETRANS_ERR variant reads it, chosen from the format file. */
VCHK_BTF_TP(tcp_retransmit_skb)
int vchk_tcp_retransmit(u64 *ctx)
{
    struct flow f = {};
    u64 ino = 0, n = 1;
#ifdef VCHK_RETRANS_ERR
    if ((int)ctx[2]) {
        count(COUNTER_RETRANS_FAILED);
        return 0;
    }
#endif
    flow_of((const struct sock *)ctx[0], &f, &ino);
    /* one event may resend several segments (a TSO skb): count them as RetransSegs does,
     * tcp_skb_pcount() = TCP_SKB_CB(skb)->tcp_gso_segs */
    u16 segs = 0;
    const void *cb = (const void *)ctx[1] + bpf_core_field_offset(struct sk_buff, cb);
    bpf_probe_read_kernel(&segs, sizeof(segs), cb + bpf_core_field_offset(struct tcp_skb_cb, tcp_gso_segs));
    if (segs > 1)
        n = segs;
    return count_retransmit(&f, ino, n);
}
#else
/* bcc: the classic record (packets: a TSO packet counts once) */
VCHK_TP
int vchk_tcp_retransmit(struct tracepoint__tcp__tcp_retransmit_skb *args)
{
    struct flow f = {};
    f.family = args->family;
    f.sport = args->sport;
    f.dport = args->dport;
    if (f.family == 2) {
        __builtin_memcpy(f.saddr, args->saddr, 4);
        __builtin_memcpy(f.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(f.saddr, args->saddr_v6, 16);
        __builtin_memcpy(f.daddr, args->daddr_v6, 16);
    }
    return count_retransmit(&f, 0, 1);
}
#endif
#endif

static __always_inline void record_hist(u32 netns, u32 srtt_us)
{
    struct hist_key hk = {.k = {.netns = netns}, .slot = vcheck_bucket((u64)srtt_us * 1000)};
    u64 zero = 0;
    struct vcheck_stats empty = {};
    vcheck_record(hist.lookup_or_try_init(&hk, &zero), stats.lookup_or_try_init(&hk.k, &empty),
                  (u64)srtt_us * 1000);
}

static __always_inline void update_flow(struct flow_rtt *fr, u32 srtt_us)
{
    fr->samples++;
    fr->last_srtt_us = srtt_us;
    if (srtt_us > fr->max_srtt_us)
        fr->max_srtt_us = srtt_us;
}

/* a flow's entry, made from init the first time its socket is seen */
static __always_inline struct flow_rtt *new_flow(u64 skp, struct flow_rtt *init)
{
    if (flows.insert(&skp, init)) {
        count(COUNTER_FLOWS_FULL);
        return NULL;
    }
    return flows.lookup(&skp);
}

#ifdef HAVE_TCP_PROBE
#ifdef VCHECK_CORE
VCHK_BTF_TP(tcp_probe)
int vchk_tcp_probe(u64 *ctx)
{
    struct sock *sk = (struct sock *)ctx[0];
    struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);   /* typed: plain loads, not probe reads */
    if (!tp)
        return 0;
    u32 srtt = tp->srtt_us >> 3;
    u64 skp = (u64)sk;
    struct flow_rtt *fr = flows.lookup(&skp);
    /* a socket freed and made again at the same address is a new flow: its local port tells */
    if (fr && fr->f.sport != sk->__sk_common.skc_num) {
        flows.delete(&skp);
        fr = NULL;
    }
    if (!fr) {                       /* addresses read once per flow, not per ACK */
        struct flow_rtt init = {};
        flow_of(sk, &init.f, &init.sock_ino);
        record_hist(init.f.netns, srtt);
        fr = new_flow(skp, &init);
    } else {
        record_hist(fr->f.netns, srtt);
    }
    if (fr)
        update_flow(fr, srtt);
    return 0;
}
#else
VCHK_TP
int vchk_tcp_probe(struct tracepoint__tcp__tcp_probe *args)
{
    struct flow_rtt init = {};
    init.f.family = args->family;
    init.f.sport = args->sport;
    init.f.dport = args->dport;
    /* sockaddr_in: port at 2, address at 4; sockaddr_in6: address at 8 */
    if (init.f.family == 2) {
        __builtin_memcpy(init.f.saddr, &args->saddr[4], 4);
        __builtin_memcpy(init.f.daddr, &args->daddr[4], 4);
    } else {
        __builtin_memcpy(init.f.saddr, &args->saddr[8], 16);
        __builtin_memcpy(init.f.daddr, &args->daddr[8], 16);
    }
    u64 skp = (u64)args->skaddr;
    record_hist(0, args->srtt);
    struct flow_rtt *fr = flows.lookup(&skp);
    if (fr && fr->f.sport != init.f.sport) {
        flows.delete(&skp);
        fr = NULL;
    }
    if (!fr)
        fr = new_flow(skp, &init);
    if (fr)
        update_flow(fr, args->srtt);
    return 0;
}
#endif
#endif /* HAVE_TCP_PROBE */
