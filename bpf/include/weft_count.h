/* Counter helpers. Node-wide counters are per-CPU (no atomics on the hot path); per-pod counters
 * live in a shared hash and are bumped atomically. Indices are compile-time enum constants, so the
 * verifier sees a fixed offset into the map value. */
#ifndef WEFT_COUNT_H
#define WEFT_COUNT_H

#include "weft_maps.h"

static __always_inline void weft_count(__u32 idx)
{
	__u32 zero = 0;
	__u64 *slots = bpf_map_lookup_elem(&weft_counters, &zero);

	if (slots && idx < WEFT_C__COUNT)
		slots[idx]++;
}

/* The agent creates a pod's counter entry on enrol; a pod without one (being unenrolled) is not
 * counted rather than re-created here. */
static __always_inline void weft_pod_count(__u64 cookie, __u32 idx)
{
	__u64 *slots = bpf_map_lookup_elem(&weft_pod_counters, &cookie);

	if (slots && idx < WEFT_PC__COUNT)
		__sync_fetch_and_add(&slots[idx], 1);
}

/* A refusal: counted node-wide (and per pod when the pod is known), and reported to the agent. */
static __always_inline void weft_refused(__u32 idx, __u64 cookie, __be32 saddr, __be32 daddr, __u16 sport, __u16 dport)
{
	struct weft_refusal r = { .netns_cookie = cookie, .saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport, .reason = (__u16)idx };

	weft_count(idx);
	bpf_ringbuf_output(&weft_refusals, &r, sizeof(r), 0);
}

/* Never called, so never loaded (libbpf loads the subprograms a program calls): a global function
 * taking struct weft_refusal puts the struct in each object's BTF, which a ring buffer record
 * otherwise is not (no map type names it), so test/bpf/datapath.test.ts checks the agent's codec
 * of it as it checks the others. */
__attribute__((noinline)) int weft_btf_refusal(struct weft_refusal *r)
{
	return r != 0;
}

#endif /* WEFT_COUNT_H */
