/* vcheck_hist.h - the log-linear bucket index shared by every vcheck BPF program.
 *
 * Must stay identical to vcheck/histogram.py (bucket_index): SUB_BITS = 3, i.e. 8 linear
 * sub-buckets per power of two, so a bucket is at most 1/8 of its lower bound wide and a
 * percentile read from it is within 6.25 % of the true value.
 *
 *   v <  8   -> v
 *   v >= 8   -> (e - 2) * 8 + ((v >> (e - 3)) - 8)      where e = floor(log2(v))
 *
 * A value is an integer in the program's recording unit (nanoseconds everywhere).
 */
#ifndef VCHECK_HIST_H
#define VCHECK_HIST_H

#define VCHECK_SUB_BITS 3
#define VCHECK_SUB (1 << VCHECK_SUB_BITS)
#define VCHECK_MAX_INDEX ((64 - VCHECK_SUB_BITS + 1) * VCHECK_SUB)

/* floor(log2(v)) for v > 0, branch-light so the verifier accepts it without loops */
static __always_inline u32 vcheck_log2(u64 v)
{
    u32 r = 0, shift;
    shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
    shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
    shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
    shift = (v > 0xF) << 2; v >>= shift; r |= shift;
    shift = (v > 0x3) << 1; v >>= shift; r |= shift;
    r |= (v >> 1);
    return r;
}

static __always_inline u32 vcheck_bucket(u64 v)
{
    if (v < VCHECK_SUB)
        return (u32)v;
    u32 e = vcheck_log2(v);
    u32 idx = (e - VCHECK_SUB_BITS + 1) * VCHECK_SUB + (u32)((v >> (e - VCHECK_SUB_BITS)) - VCHECK_SUB);
    return idx < VCHECK_MAX_INDEX ? idx : VCHECK_MAX_INDEX - 1;
}

/* Exact per-key totals kept beside the buckets: the mean and the maximum are not estimates. */
struct vcheck_stats {
    u64 count;
    u64 sum;
    u64 max;
};

static __always_inline void vcheck_stats_add(struct vcheck_stats *s, u64 v)
{
    __sync_fetch_and_add(&s->count, 1);
    __sync_fetch_and_add(&s->sum, v);
    if (v > s->max)
        s->max = v;   /* racy by design: a lost update only under a tie of concurrent maxima */
}

static __always_inline void vcheck_inc(u64 *n)
{
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Record v in a program's two maps, which vcheck/bpf.py reads back alike for every program:
 *   hist:  struct { K k; u32 slot; ... } -> u64, slot = vcheck_bucket(v)
 *   stats: K -> struct vcheck_stats
 * bcc allows no map call inside a macro, so the caller passes both entries (NULL: map full). */
static __always_inline void vcheck_record(u64 *bucket, struct vcheck_stats *stats, u64 v)
{
    vcheck_inc(bucket);
    if (stats)
        vcheck_stats_add(stats, v);
}

#endif
