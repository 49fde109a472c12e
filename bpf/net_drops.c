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

#ifndef VCHECK_CORE
/* bcc's record of kfree_skb names the enum; its values come from the format file, not from
 * here (including <linux/skbuff.h> for it would triple the compile time) */
enum skb_drop_reason { VCHK_SKB_DROP_REASON_ANY = 0 };
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

static __always_inline int count_drop(struct drop_key *key, u64 ino, const char *ifname)
{
    struct drop_val zero = {};
    struct drop_val *v = drops.lookup_or_try_init(key, &zero);
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
        __builtin_memcpy(v->ifname, ifname, 16);
    return 0;
}

#ifdef VCHECK_CORE
/* CO-RE: a typed raw tracepoint, kfree_skb(skb, location, reason[, rx_sk]): no record is
 * formatted, it detaches in milliseconds (a classic one ~75 ms), and the socket's and device's
 * fields are plain loads. rx_sk (6.12+) is an argument only on kernels that have it: the
 * VCHK_RX_SK variant reads it, the loader picks that variant from the tracepoint's format. */
VCHK_BTF_TP(kfree_skb)
int vchk_kfree_skb(u64 *ctx)
{
    struct sk_buff *skb = (struct sk_buff *)ctx[0];
    struct drop_key key = {.location = ctx[1], .reason = (u32)ctx[2]};
    u64 ino = 0;
    char ifname[16] = {};
    struct sock *sk = skb->sk;
#ifdef VCHK_RX_SK
    if (!sk)
        sk = (struct sock *)ctx[3];
#endif
    struct net_device *dev = skb->dev;
    if (sk) {
        key.netns = sk->__sk_common.skc_net.net->ns.inum;
        struct socket *so = sk->sk_socket;
        if (so && so->file)
            ino = so->file->f_inode->i_ino;
    }
    if (dev) {
        if (!key.netns)
            key.netns = dev->nd_net.net->ns.inum;
        bpf_probe_read_kernel_str(ifname, sizeof(ifname), dev->name);
    }
    return count_drop(&key, ino, ifname);
}
#else
/* bcc: the classic record; its pointers are not followed (no BTF for this kernel's layout) */
VCHK_TP
int vchk_kfree_skb(struct tracepoint__skb__kfree_skb *args)
{
    struct drop_key key = {.location = (u64)args->location, .reason = args->reason};
    char ifname[16] = {};
    return count_drop(&key, 0, ifname);
}
#endif
