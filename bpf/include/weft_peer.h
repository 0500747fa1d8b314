/* getpeername()/accept() address rewriting: what each end of a meshed connection believes its
 * peer is. A captured client sees the address it dialled, not the agent's; a server in an enrolled
 * pod sees the real remote client, not the agent that connected on its behalf. */
#ifndef WEFT_PEER_H
#define WEFT_PEER_H

#include <bpf/bpf_endian.h>
#include "weft_count.h"

/* Fills *out with what to report as the peer of ctx->sk, given the peer the kernel is about to
 * report (remote_ip/remote_port) and the socket's own address. Returns 1 when it changes. */
static __always_inline int weft_peer_lookup(struct bpf_sock_addr *ctx, __be32 local_ip, __be32 remote_ip,
					    __u16 remote_port, __be32 *out_ip, __u16 *out_port)
{
	struct weft_orig *orig;
	struct weft_peer *peer;
	struct weft_peer_key key = {};
	__u64 cookie;

	/* Client side: only sockets connect4/6 captured carry storage. */
	orig = bpf_sk_storage_get(&weft_sk_orig, ctx->sk, 0, 0);
	if (orig) {
		*out_ip = orig->orig_ip;
		*out_port = orig->orig_port;
		weft_count(WEFT_C_GETPEERNAME_REWRITTEN);
		weft_pod_count(orig->netns_cookie, WEFT_PC_GETPEERNAME_REWRITTEN);
		return 1;
	}
	/* Server side: only enrolled pods' sockets, so other workloads never pay for the lookup. */
	cookie = bpf_get_netns_cookie(ctx);
	if (!bpf_map_lookup_elem(&weft_pods, &cookie))
		return 0;
	key.local_ip = local_ip;
	key.remote_ip = remote_ip;
	key.local_port = (__u16)ctx->sk->src_port; /* host order */
	key.remote_port = remote_port;
	peer = bpf_map_lookup_elem(&weft_peer_override, &key);
	if (!peer)
		return 0;
	*out_ip = peer->client_ip;
	*out_port = peer->client_port;
	weft_count(WEFT_C_GETPEERNAME_PEER_OVERRIDE);
	weft_pod_count(cookie, WEFT_PC_PEER_OVERRIDE);
	return 1;
}

static __always_inline int weft_do_getpeer4(struct bpf_sock_addr *ctx)
{
	__be32 ip;
	__u16 port;

	if (weft_peer_lookup(ctx, ctx->sk->src_ip4, ctx->user_ip4, bpf_ntohs(ctx->user_port), &ip, &port)) {
		ctx->user_ip4 = ip;
		ctx->user_port = bpf_htons(port);
	}
	return 1;
}

/* Dual-stack servers (Node's default `::` listener) accept IPv4 clients on IPv6 sockets: the peer is
 * then v4-mapped. Native IPv6 peers are left alone, like connect6 leaves them. */
static __always_inline int weft_do_getpeer6(struct bpf_sock_addr *ctx)
{
	__be32 ip;
	__u16 port;

	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff))
		return 1;
	if (weft_peer_lookup(ctx, ctx->sk->src_ip6[3], ctx->user_ip6[3], bpf_ntohs(ctx->user_port), &ip, &port)) {
		ctx->user_ip6[3] = ip;
		ctx->user_port = bpf_htons(port);
	}
	return 1;
}

#endif /* WEFT_PEER_H */
