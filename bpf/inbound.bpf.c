/* Inbound enforcement for enrolled pods, two gates:
 *
 * weft_inbound: a tcx INGRESS link on the pod-side veth inside the pod's network namespace. Why
 * there and not on the node-side end (egress): every packet to the pod crosses that one interface
 * whatever the node's routing does (same-node pods, remote nodes, host-network processes),
 * bpf_redirect back out of it returns the RST along the reverse path with no route lookup, and the
 * link lives and dies with the pod's interface, so a deleted pod leaves no program behind.
 *
 * weft_lookup: an sk_lookup link on the pod's network namespace, steering every connection from
 * outside the namespace into the agent's listener there (weft_lookup.h). */
#include "weft_inbound.h"
#include "weft_lookup.h"

SEC("tc")
int weft_inbound(struct __sk_buff *skb)
{
	return weft_do_inbound(skb);
}

SEC("sk_lookup")
int weft_lookup(struct bpf_sk_lookup *ctx)
{
	return weft_do_lookup(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
