/* Same-node splice: once the agent has authorized a connection between two pods on its node, it
 * puts its two sockets (the one it accepted from the client pod on 15001, the one it opened to the
 * server pod) into weft_splice_socks and records each one's peer in weft_splice_conns. From then
 * on weft_splice_verdict, the sk_skb stream verdict program attached to weft_splice_socks, runs on
 * every skb either socket receives and sends it out of the peer socket (bpf_sk_redirect_hash
 * without BPF_F_INGRESS: the peer's egress), so the payload never reaches user space.
 *
 * What the kernel does not do, and the agent does (agent/src/splice.ts): a FIN is not carried
 * across (the FIN skb is consumed here; the receiving socket still sees RCV_SHUTDOWN, so the agent
 * reads EOF), and a redirect is queued to the peer's psock and sent by a kernel worker, so the
 * agent shuts the peer down only once the peer has taken every byte counted here. Backpressure is
 * the kernel's: a peer whose send buffer is full leaves skbs queued until write space returns.
 *
 * Keys are socket cookies (SO_COOKIE, never reused while the socket lives). An entry in
 * weft_splice_socks leaves the map when its socket closes; the agent deletes the
 * weft_splice_conns entries after reading their byte counts. */
#ifndef WEFT_SPLICE_H
#define WEFT_SPLICE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WEFT_MAX_SPLICED * 2);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SPLICED * 2);
	__type(key, __u64); /* socket cookie of the receiving socket */
	__type(value, struct weft_splice);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_conns SEC(".maps");

/* The one field of the kernel's tcp_sock read here, relocated by libbpf against the running
 * kernel's BTF (CO-RE), so no vmlinux.h is needed. */
struct tcp_sock {
	__u64 bytes_acked;
} __attribute__((preserve_access_index));

/* Bytes the kernel may hold for a peer that does not keep up: redirected but not yet acknowledged
 * by the peer's own peer (queued to the peer's psock, in its send queue, or in flight). A redirect
 * is queued without any limit of the kernel's own, so past this the connection goes back to the
 * agent (WEFT_SPLICE_F_PASSING), whose pipe pauses reading and lets TCP close the window. */
#define WEFT_SPLICE_MAX_INFLIGHT (8 * 1024 * 1024)

/* How far the peer has got: its bytes_acked. Nothing but this socket's redirects is written to the
 * peer while spliced (the agent writes nothing), so bytes - bytes_acked is what is in flight. */
static __always_inline int weft_splice_peer_congested(struct weft_splice *s)
{
	struct bpf_sock *peer = bpf_map_lookup_elem(&weft_splice_socks, &s->peer_cookie);
	struct tcp_sock *tp;
	int congested = 0;

	if (!peer)
		return 0;
	tp = bpf_skc_to_tcp_sock(peer);
	/* Signed: bytes_acked counts the SYN too, so it starts one ahead. */
	if (tp && (__s64)(s->bytes - tp->bytes_acked) > WEFT_SPLICE_MAX_INFLIGHT)
		congested = 1;
	bpf_sk_release(peer);
	return congested;
}

/* SK_PASS without a redirect hands the skb to the socket itself, i.e. to the agent: a socket
 * without a weft_splice_conns entry, or one whose peer fell behind (WEFT_SPLICE_F_PASSING, which
 * stays set: from then on the agent carries this direction, after the peer has taken every byte
 * counted here, so nothing is reordered). A redirect to a peer that has left weft_splice_socks
 * (closed) drops the skb; the agent sees the peer's close and tears the connection down, as the
 * unspliced path does. */
static __always_inline int weft_do_splice(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct weft_splice *s = bpf_map_lookup_elem(&weft_splice_conns, &cookie);

	if (!s || (s->flags & WEFT_SPLICE_F_PASSING))
		return SK_PASS;
	/* The FIN arrives as an skb without payload. Sent out of the peer it would count as a failed
	 * send (0 bytes) and break the peer with EPIPE; the receiving socket has recorded the FIN
	 * (RCV_SHUTDOWN) already, so dropping the empty skb still lets the agent read the EOF. */
	if (skb->len == 0)
		return SK_DROP;
	if (weft_splice_peer_congested(s)) {
		__sync_fetch_and_or(&s->flags, WEFT_SPLICE_F_PASSING);
		return SK_PASS;
	}
	__sync_fetch_and_add(&s->bytes, skb->len);
	__sync_fetch_and_add(&s->skbs, 1);
	return bpf_sk_redirect_hash(skb, &weft_splice_socks, &s->peer_cookie, 0);
}

#endif /* WEFT_SPLICE_H */
