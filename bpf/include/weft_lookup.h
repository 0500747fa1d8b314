/* The second inbound gate, at the socket layer: an sk_lookup program attached to each enrolled
 * pod's network namespace. It runs when a connection's first packet looks for a listener, after the
 * pod's stack has reassembled fragments and parsed every header, so nothing reaches it half-read.
 * Every TCP connection that enters the pod from outside its namespace is handed to the agent's
 * listener inside that namespace (weft_pod_listeners), where the pod's policy judges it with no
 * principal; the application never sees it unless the agent delivers it. What is let through:
 *  - connections whose source address is the destination address itself (the pod's own address,
 *    or loopback): weft_inbound drops such a packet where it arrives on the pod's interface (a
 *    martian; the IPv4 stack does too, but only while accept_local=0, and for loopback while
 *    route_localnet=0, settings a namespace copies from the node's; the IPv6 stack does not), so
 *    these were made inside the pod's netns, by the pod itself or by the agent, which delivers
 *    from a socket it made there bound to the pod's address. That is where the connection was
 *    made, not trust in an address: no one outside the namespace can send from it;
 *  - a kubelet probe (its tuple in weft_probe_tuples) and explicitly excluded inbound ports.
 * With no agent listener (the agent is down) the connection is refused (SK_DROP: the pod's stack
 * answers the SYN with a RST): fail closed. IPv6 is not
 * meshed and is refused. Established flows never get here (sk_lookup runs only for a lookup of a
 * listener), so the mesh's own traffic pays nothing per packet. */
#ifndef WEFT_LOOKUP_H
#define WEFT_LOOKUP_H

#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_endian.h>
#include "weft_addr.h"
#include "weft_count.h"
#include "weft_probe.h"

#ifndef AF_INET6
#define AF_INET6 10
#endif

static __always_inline int weft_do_lookup(struct bpf_sk_lookup *ctx)
{
	struct weft_pod_in *pod;
	struct bpf_sock *sk;
	__be32 pod_ip;
	__u16 port;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET6) {
		if (weft_ip6_equal(ctx->remote_ip6, ctx->local_ip6))
			return SK_PASS;
		weft_refused(WEFT_C_LOOKUP_IPV6_REFUSED, 0, 0, 0, bpf_ntohs((__be16)ctx->remote_port), (__u16)ctx->local_port);
		return SK_DROP;
	}
	if (ctx->remote_ip4 == ctx->local_ip4)
		return SK_PASS;
	pod_ip = ctx->local_ip4;
	port = (__u16)ctx->local_port; /* host order */
	pod = bpf_map_lookup_elem(&weft_inbound_pods, &pod_ip);
	if (weft_is_probe_tuple(pod_ip, ctx->remote_ip4, port, bpf_ntohs((__be16)ctx->remote_port))) {
		weft_count(WEFT_C_LOOKUP_PROBE_ALLOWED);
		return SK_PASS;
	}
	if (bpf_map_lookup_elem(&weft_inbound_excluded, &port)) {
		weft_count(WEFT_C_LOOKUP_EXCLUDED);
		return SK_PASS;
	}
	sk = bpf_map_lookup_elem(&weft_pod_listeners, &pod_ip);
	if (!sk) {
		weft_refused(WEFT_C_LOOKUP_NO_AGENT, pod ? pod->netns_cookie : 0, ctx->remote_ip4, pod_ip,
			     bpf_ntohs((__be16)ctx->remote_port), port);
		if (pod)
			weft_pod_count(pod->netns_cookie, WEFT_PC_NO_AGENT);
		return SK_DROP;
	}
	/* That socket exactly, not another member of its SO_REUSEPORT group (an agent being
	 * replaced shares the listener's address with its successor). */
	err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_NO_REUSEPORT);
	bpf_sk_release(sk);
	if (err) {
		weft_refused(WEFT_C_LOOKUP_NO_AGENT, pod ? pod->netns_cookie : 0, ctx->remote_ip4, pod_ip,
			     bpf_ntohs((__be16)ctx->remote_port), port);
		return SK_DROP;
	}
	weft_count(WEFT_C_LOOKUP_STEERED);
	if (pod)
		weft_pod_count(pod->netns_cookie, WEFT_PC_STEERED);
	return SK_PASS;
}

#endif /* WEFT_LOOKUP_H */
