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
 * agent shuts the peer down only once the peer has taken every byte counted here.
 *
 * Backpressure. A redirect has none of its own (kernel 6.18, as read in its source):
 * tcp_read_skb (net/ipv4/tcp.c) unlinks each skb from the receive queue and re-owns it with
 * skb_set_owner_sk_safe, which drops its receive-memory charge, so the receiving socket's window
 * stays open; sk_psock_skb_redirect (net/core/skmsg.c) appends it to the peer psock's ingress_skb
 * list with no length check; sk_psock_backlog sends from that list while the peer is
 * sock_writeable and otherwise waits for write space. A sender faster than the far reader would
 * fill kernel memory without limit. SK_PASS does give backpressure: sk_psock_skb_ingress_self
 * charges the skb to the receiving socket (skb_set_owner_r), so its window closes while the agent
 * does not read (and tcp_bpf_recvmsg_parser's __tcp_cleanup_rbuf reopens it as the agent reads).
 * So a direction whose peer lags more than WEFT_SPLICE_MAX_INFLIGHT behind is handed to the agent
 * (WEFT_SPLICE_F_PASSING): its pipe writes what it reads once the peer has taken the kernel's
 * bytes, pauses while the peer's send buffer is full, and TCP closes the sender's window. It comes
 * back to the kernel on the first skb after the peer has caught up: every byte of this direction,
 * the kernel's and the agent's, is in the peer's send queue (its write_seq), so a redirect queued
 * now goes out after all of them, and the peer holds no more than WEFT_SPLICE_RESUME_INFLIGHT.
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

/* The fields of the kernel's tcp_sock read here, relocated by libbpf against the running kernel's
 * BTF (CO-RE), so no vmlinux.h is needed. write_seq: the end of what the socket's send queue has
 * taken; snd_una: the first byte its peer has not acknowledged. */
struct tcp_sock {
	__u32 write_seq;
	__u32 snd_una;
} __attribute__((preserve_access_index));

/* Bytes the kernel may hold for a peer that does not keep up: this direction's bytes not yet
 * acknowledged by the peer's own peer (queued to the peer's psock, in its send queue, or in
 * flight). Past this the direction goes to the agent (WEFT_SPLICE_F_PASSING). */
#define WEFT_SPLICE_MAX_INFLIGHT (8 * 1024 * 1024)
/* A passing direction comes back to the kernel once the agent has written all it was passed and
 * the peer holds no more than this unacknowledged (hysteresis: not on the next skb at 8 MiB). */
#define WEFT_SPLICE_RESUME_INFLIGHT (2 * 1024 * 1024)

enum weft_splice_act { WEFT_SPLICE_REDIRECT, WEFT_SPLICE_PASS };

/* Where this direction's bytes go next and whether the kernel carries them. The stream position
 * of the next byte in the peer's sequence space is peer_seq0 + bytes + passed: nothing but this
 * direction's bytes is written to the peer while spliced (the kernel's redirects and, while
 * passing, the agent's writes of what it was passed), and peer_seq0 is the peer's write_seq at
 * this direction's first skb, before any of them. Bytes that reached a socket before the splice
 * are no exception: the agent reads nothing before it (splice.ts), and a read after it finds them
 * still queued, where tcp_bpf_recvmsg_parser (net/ipv4/tcp_bpf.c) runs tcp_data_ready, i.e. this
 * verdict, before handing out any byte. Differences are taken in 32 bits, signed, like
 * TCP's own sequence numbers (what is compared is never more than a few MiB apart). */
static __always_inline enum weft_splice_act weft_splice_decide(struct weft_splice *s)
{
	struct bpf_sock *peer = bpf_map_lookup_elem(&weft_splice_socks, &s->peer_cookie);
	enum weft_splice_act act = (s->flags & WEFT_SPLICE_F_PASSING) ? WEFT_SPLICE_PASS : WEFT_SPLICE_REDIRECT;
	struct tcp_sock *tp;
	__u32 next, write_seq, snd_una;

	/* No peer (closed): a redirect is dropped, and the agent tears down on the peer's close. */
	if (!peer)
		return act;
	tp = bpf_skc_to_tcp_sock(peer);
	if (!tp)
		goto out;
	write_seq = tp->write_seq;
	snd_una = tp->snd_una;
	if (!(s->flags & WEFT_SPLICE_F_SEQ0)) {
		s->peer_seq0 = write_seq;
		s->flags |= WEFT_SPLICE_F_SEQ0;
	}
	next = s->peer_seq0 + (__u32)(s->bytes + s->passed);
	if (act == WEFT_SPLICE_PASS) {
		/* Caught up: the agent's last write is in the peer's send queue, and the kernel's before it. */
		if ((__s32)(write_seq - next) >= 0 && (__s32)(next - snd_una) <= WEFT_SPLICE_RESUME_INFLIGHT) {
			s->flags &= ~(__u64)WEFT_SPLICE_F_PASSING;
			act = WEFT_SPLICE_REDIRECT;
		}
	} else if ((__s32)(next - snd_una) > WEFT_SPLICE_MAX_INFLIGHT) {
		s->flags |= WEFT_SPLICE_F_PASSING;
		s->handbacks++;
		act = WEFT_SPLICE_PASS;
	}
out:
	bpf_sk_release(peer);
	return act;
}

/* SK_PASS without a redirect hands the skb to the socket itself, i.e. to the agent: a socket
 * without a weft_splice_conns entry, or a passing direction (above). A redirect to a peer that has
 * left weft_splice_socks (closed) drops the skb; the agent sees the peer's close and tears the
 * connection down, as the unspliced path does. Verdicts on one socket never run concurrently (the
 * socket's lock is held), so the entry's fields are updated in place. */
static __always_inline int weft_do_splice(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct weft_splice *s = bpf_map_lookup_elem(&weft_splice_conns, &cookie);

	if (!s)
		return SK_PASS;
	/* The FIN arrives as an skb without payload. Sent out of the peer it would count as a failed
	 * send (0 bytes) and break the peer with EPIPE; the receiving socket has recorded the FIN
	 * (RCV_SHUTDOWN) already, so dropping the empty skb still lets the agent read the EOF. While
	 * passing, it goes to the agent with the bytes before it. */
	if (skb->len == 0)
		return (s->flags & WEFT_SPLICE_F_PASSING) ? SK_PASS : SK_DROP;
	if (weft_splice_decide(s) == WEFT_SPLICE_PASS) {
		__sync_fetch_and_add(&s->passed, skb->len);
		return SK_PASS;
	}
	__sync_fetch_and_add(&s->bytes, skb->len);
	__sync_fetch_and_add(&s->skbs, 1);
	return bpf_sk_redirect_hash(skb, &weft_splice_socks, &s->peer_cookie, 0);
}

#endif /* WEFT_SPLICE_H */
