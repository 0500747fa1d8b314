/* Outbound capture: which connections of an enrolled pod go to its node's agent, and the bookkeeping
 * that lets the agent (orig_by_tuple) and the application (getpeername) see the dialled address. */
#ifndef WEFT_REDIRECT_H
#define WEFT_REDIRECT_H

#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_endian.h>
#include "weft_count.h"
#include "weft_splice.h"

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

/* A destination is captured when the mesh knows it (exact ip:port, or the ip with port 0 for "every
 * port") and the port is not one the mesh itself uses or the operator excluded. */
static __always_inline int weft_is_mesh_dest(__be32 ip, __u16 port)
{
	struct weft_dest_key key = { .ip = ip, .port = port };

	if (bpf_map_lookup_elem(&weft_excluded_ports, &port))
		return 0;
	if (bpf_map_lookup_elem(&weft_dests, &key))
		return 1;
	key.port = 0;
	return bpf_map_lookup_elem(&weft_dests, &key) != 0;
}

/* A connect() from outside every enrolled pod to an enrolled pod: when the caller runs in the
 * kubelet's cgroup (weft_probers), the socket is tagged as a probe, and sockops files its 4-tuple
 * in weft_probe_tuples so the pod's inbound programs let exactly this connection through. The
 * cgroup is the kernel's fact about the caller; an address would be anyone's on the node. */
static __always_inline void weft_tag_probe(struct bpf_sock_addr *ctx, __be32 dst_ip)
{
	__u64 cgroup;
	struct weft_sk_tag *tag;

	if (!bpf_map_lookup_elem(&weft_inbound_pods, &dst_ip))
		return;
	cgroup = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&weft_probers, &cgroup))
		return;
	tag = bpf_sk_storage_get(&weft_sk_tag, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!tag)
		return;
	tag->kind = WEFT_SK_PROBE;
	weft_count(WEFT_C_PROBE_TAGGED);
}

/* Decides for one connect() of an IPv4 destination (plain or v4-mapped). On capture it records the
 * original destination on the socket and returns the pod whose agent address to dial. */
static __always_inline struct weft_pod *weft_capture(struct bpf_sock_addr *ctx, __be32 dst_ip,
						     __u16 dst_port, __u64 *cookie_out)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct weft_pod *pod;
	struct weft_orig *orig;
	struct weft_sk_tag *tag;

	*cookie_out = cookie;
	/* UDP connect() runs the same hook; only TCP is meshed. */
	if (ctx->type != SOCK_STREAM)
		return 0;
	pod = bpf_map_lookup_elem(&weft_pods, &cookie);
	if (!pod) {
		weft_tag_probe(ctx, dst_ip);
		return 0;
	}
	if (!weft_is_mesh_dest(dst_ip, dst_port)) {
		weft_pod_count(cookie, WEFT_PC_CONNECT_PASSED);
		return 0;
	}
	/* The agent delivering into this pod from a socket it made inside the pod's netns. */
	tag = bpf_sk_storage_get(&weft_sk_tag, ctx->sk, 0, 0);
	if (tag && tag->kind == WEFT_SK_AGENT) {
		weft_count(WEFT_C_CONNECT_AGENT_SKIPPED);
		return 0;
	}
	/* If storage cannot be had (memory pressure), leave the connection alone: a captured connection
	 * whose original destination is lost would reach the agent with nowhere to go. */
	orig = bpf_sk_storage_get(&weft_sk_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!orig)
		return 0;
	orig->orig_ip = dst_ip;
	orig->orig_port = dst_port;
	orig->pad = 0;
	orig->netns_cookie = cookie;
	weft_pod_count(cookie, WEFT_PC_CONNECT_REDIRECTED);
	return pod;
}

static __always_inline int weft_do_connect4(struct bpf_sock_addr *ctx)
{
	__u64 cookie;
	struct weft_pod *pod = weft_capture(ctx, ctx->user_ip4, bpf_ntohs(ctx->user_port), &cookie);

	if (!pod) {
		weft_count(WEFT_C_CONNECT4_PASSED);
		return 1;
	}
	ctx->user_ip4 = pod->agent_ip;
	ctx->user_port = bpf_htons(pod->agent_port);
	weft_count(WEFT_C_CONNECT4_REDIRECTED);
	return 1;
}

/* IPv6 sockets reach IPv4 destinations through v4-mapped addresses (::ffff:a.b.c.d); those are
 * captured like connect4 and sent to the v4-mapped agent address. Native IPv6 destinations are
 * not meshed yet: the maps hold IPv4 only. */
static __always_inline int weft_do_connect6(struct bpf_sock_addr *ctx)
{
	__u64 cookie;
	struct weft_pod *pod;

	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff)) {
		weft_count(WEFT_C_CONNECT6_NATIVE_SKIPPED);
		return 1;
	}
	pod = weft_capture(ctx, ctx->user_ip6[3], bpf_ntohs(ctx->user_port), &cookie);
	if (!pod) {
		weft_count(WEFT_C_CONNECT6_PASSED);
		return 1;
	}
	ctx->user_ip6[3] = pod->agent_ip;
	ctx->user_port = bpf_htons(pod->agent_port);
	weft_count(WEFT_C_CONNECT6_REDIRECTED);
	return 1;
}

/* A probe's connection as the pod will see it: local = the pod, remote = the prober. */
static __always_inline void weft_probe_key(struct bpf_sock_ops *skops, struct weft_peer_key *key)
{
	key->local_ip = skops->remote_ip4;
	key->remote_ip = skops->local_ip4;
	key->local_port = (__u16)bpf_ntohl(skops->remote_port);
	key->remote_port = (__u16)skops->local_port;
}

/* connect4/6 run before the kernel picks the source port, so the agent-facing key is written here:
 * TCP_CONNECT_CB fires from tcp_connect() after the port is bound and before the SYN leaves, so the
 * entry exists before the agent can accept the connection. For v4-mapped IPv6 sockets the kernel
 * keeps the IPv4 addresses in the same fields, so local_ip4/remote_ip4 hold for both families.
 * A kubelet probe's tuple is filed the same way, and removed when its socket closes (STATE_CB,
 * asked for on that socket only), so a later connection reusing the port is not let in. */
static __always_inline int weft_do_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct weft_orig *orig;
	struct weft_sk_tag *tag;
	struct weft_tuple4 key = {};
	struct weft_peer_key probe = {};
	struct weft_excluded present = { .present = 1 };

	weft_splice_sockops(skops);
	if (skops->op == BPF_SOCK_OPS_STATE_CB) {
		if (skops->args[1] == BPF_TCP_CLOSE) {
			weft_probe_key(skops, &probe);
			bpf_map_delete_elem(&weft_probe_tuples, &probe);
		}
		return 1;
	}
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	tag = bpf_sk_storage_get(&weft_sk_tag, sk, 0, 0);
	if (tag && tag->kind == WEFT_SK_PROBE) {
		weft_probe_key(skops, &probe);
		if (bpf_map_update_elem(&weft_probe_tuples, &probe, &present, BPF_ANY) == 0)
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}
	orig = bpf_sk_storage_get(&weft_sk_orig, sk, 0, 0);
	if (!orig)
		return 1;
	key.src_ip = skops->local_ip4;
	key.dst_ip = skops->remote_ip4;
	key.src_port = (__u16)skops->local_port;           /* host order */
	key.dst_port = (__u16)bpf_ntohl(skops->remote_port); /* network order in the upper half */
	if (bpf_map_update_elem(&weft_orig_by_tuple, &key, orig, BPF_ANY) == 0)
		weft_count(WEFT_C_SOCKOPS_REKEYED);
	else
		weft_count(WEFT_C_SOCKOPS_REKEY_FAILED);
	return 1;
}

#endif /* WEFT_REDIRECT_H */
