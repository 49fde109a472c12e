/* net_drops.c - packets the kernel dropped, counted in the kernel per (network namespace,
 * drop reason, dropping function), from skb:kfree_skb.
 *
 * Since 5.17 skb:kfree_skb carries `reason` (enum skb_drop_reason) and `location` (the return
 * address in the function that dropped the skb); since 5.19 normal frees go to consume_skb, so
 * what fires here is a drop, or a path that never says why (NOT_SPECIFIED). Nothing goes to
 * user space per packet: user space reads the `drops` map once per interval.
 *
 * The namespace is the socket's (skb->sk, else the receiving socket rx_sk of 6.12+) when a
 * socket is involved, else the device's (skb->dev): the namespace the packet was in when it
 * died. With it each key keeps the last device name and the socket's inode, so user space can
 * name the interface and the process that owns the socket.
 *
 * Under bcc (no BTF) the record's pointers cannot be followed safely with another kernel's
 * headers: the namespace, device and socket stay 0 and user space says so.
 */
#include "vcheck_compat.h"

#ifdef VCHECK_CORE
#define tracepoint__skb__kfree_skb trace_event_raw_kfree_skb
#else
#include <linux/skbuff.h>   /* enum skb_drop_reason, which bcc's record of kfree_skb names */
#endif

/* vcheck/probes.py reads counters[] by these names */
#define COUNTER_MAP_FULL 0

struct drop_key {
    u64 location;    /* address in the dropping function (kallsyms names it) */
    u32 netns;       /* namespace inode number, 0 when unknown */
    u32 reason;      /* enum skb_drop_reason */
};

struct drop_val {
    u64 count;
    u64 sock_ino;    /* inode of the socket involved, last seen; 0: none */
    char ifname[16]; /* the device, last seen */
};

BPF_HASH(drops, struct drop_key, struct drop_val, 8192);
BPF_ARRAY(counters, u64, 1);

VCHK_TP
int vchk_kfree_skb(struct tracepoint__skb__kfree_skb *args)
{
    struct drop_key key = {.location = (u64)args->location, .reason = args->reason};
    u64 ino = 0;
    char ifname[16] = {};
#ifdef VCHECK_CORE
    struct sk_buff *skb = (struct sk_buff *)args->skbaddr;
    struct sock *sk = BPF_CORE_READ(skb, sk);
    if (!sk && bpf_core_field_exists(args->rx_sk))
        sk = (struct sock *)BPF_CORE_READ(args, rx_sk);
    struct net_device *dev = BPF_CORE_READ(skb, dev);
    if (sk) {
        key.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
        ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
    }
    if (dev) {
        if (!key.netns)
            key.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
        bpf_probe_read_kernel_str(ifname, sizeof(ifname), dev->name);
    }
#endif
    struct drop_val zero = {};
    struct drop_val *v = drops.lookup_or_try_init(&key, &zero);
    if (!v) {
        u32 idx = COUNTER_MAP_FULL;
        u64 *n = counters.lookup(&idx);
        if (n)
            __sync_fetch_and_add(n, 1);
        return 0;
    }
    __sync_fetch_and_add(&v->count, 1);
    if (ino)
        v->sock_ino = ino;
    if (ifname[0])
        __builtin_memcpy(v->ifname, ifname, sizeof(ifname));
    return 0;
}
