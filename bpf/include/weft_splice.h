/* Same-node splice: once the agent has authorized a connection between two pods on its node, the
 * kernel carries the bytes pod to pod, and neither the agent nor TCP sees them.
 *
 * Which sockets. Sockops files two kinds of pod socket in weft_splice_sk (a sockhash) and
 * weft_spliced (its state), keyed by the socket's own 4-tuple: a captured client's socket to its
 * agent, when it is established and the agent splices (weft_splice_on); and a server pod's socket
 * whose peer is the address the agent announced in weft_splice_expect just before it connected
 * for a splice. The agent knows both tuples from its own two sockets (the accepted one and the one
 * it opened), and pairs the two entries (F_PAIRED) once the connection is authorized; for any
 * other connection it removes the client's socket from both maps again (the socket goes back to
 * plain TCP).
 *
 * What moves the bytes. weft_splice_verdict, the sk_msg verdict attached to weft_splice_sk, runs
 * in the pod's own sendmsg and redirects the message into the peer pod socket's receive queue
 * (bpf_msg_redirect_hash with BPF_F_INGRESS: net/ipv4/tcp_bpf.c bpf_tcp_ingress queues it on the
 * peer's psock ingress_msg and wakes the reader, in the sender's call, no worker). The agent's two
 * sockets stay open and its pipe still runs: it carries what came by TCP (the bytes a client sent
 * before the pair was made, and every fallback below) and ends each side as it does unspliced. A
 * FIN goes by TCP through the agent, after every byte redirected before it (the sender's earlier
 * sendmsg calls have completed).
 *
 * Order. The reader takes its psock queue before its TCP receive queue (tcp_bpf_recvmsg), so a
 * message may be redirected only when every byte this socket sent by TCP has been read by the
 * peer: this socket's write_seq - snd_base equals the peer's copied_seq - rcv_base (both move
 * only with TCP bytes; redirected bytes touch neither). Until then, and whenever it is not so
 * again, the message goes by TCP (SK_PASS) through the agent, which keeps the order. Going back
 * from redirects to TCP needs no such check: whatever is still queued on the psock is read first.
 *
 * Bound. A redirect has no backpressure of its own: bpf_tcp_ingress charges the receiver against
 * the protocol's global memory only, and the sender's charge is returned as soon as the message is
 * queued. So a peer whose psock already holds WEFT_SPLICE_MAX_QUEUED unread bytes (its msg_tot_len)
 * gets the next message by TCP, whose windows and the agent's pipe hold the sender back; it comes
 * back to redirects once the peer has read everything (the order rule). A sender that stays ahead
 * of its reader therefore stays on the agent's pipe, as an unspliced connection is.
 *
 * Readers. A redirected message lands on the peer's psock queue, which only recvmsg (and read,
 * readv, recvmmsg: tcp_bpf_recvmsg) takes from; splice(2) (tcp_splice_read) reads the TCP queue
 * alone and would never see it (Go's io.Copy between two TCP connections reads so, as does
 * HAProxy's splicing). So the verdict redirects only to a peer that has been seen reading with
 * recvmsg and never with splice(2) (weft_splice_reader, marked by the tracepoint programs of
 * splice.bpf.c); until a socket's first recvmsg, what is sent to it goes by TCP. A reader that
 * switches to splice(2) later gets nothing more redirected; if redirected bytes were still queued
 * for it then, they are stranded: counted (splice_stranded), marked, and the agent resets the
 * connection rather than leave its reader waiting for them.
 *
 * The peer's state is read through its kernel address, stored by sockops when it filed the socket,
 * with bpf_probe_read_kernel (an sk_msg program cannot take a reference on another socket). Sockops
 * marks an entry F_CLOSED when its socket closes, before the socket is freed, and a peer marked so
 * is never read nor redirected to. */
#ifndef WEFT_SPLICE_H
#define WEFT_SPLICE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "weft_count.h"

/* Unread redirected bytes a receiving pod socket may hold (below TCP's own default maximum
 * receive buffer, net.ipv4.tcp_rmem[2] = 6 MiB). */
#define WEFT_SPLICE_MAX_QUEUED (4 * 1024 * 1024)

/* The kernel fields read here, relocated by libbpf against the running kernel's BTF (CO-RE). */
struct tcp_sock {
	__u32 write_seq;
	__u32 copied_seq;
} __attribute__((preserve_access_index));
struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	void *sk_user_data;
} __attribute__((preserve_access_index));
struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));
/* From the calling task's descriptor to its socket (weft_fd_sock). */
struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));
struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));
struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));
struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct io_kiocb {
	__u8 opcode;
} __attribute__((preserve_access_index));

#define WEFT_S_IFMT 0170000
#define WEFT_S_IFSOCK 0140000
#define WEFT_FIONREAD 0x541B  /* == SIOCINQ */
struct sk_psock {
	__u32 msg_tot_len;
} __attribute__((preserve_access_index));

/* sk_user_data carries flag bits in its low bits (include/net/sock.h SK_USER_DATA_PTRMASK). */
#define WEFT_SK_USER_DATA_PTRMASK (~7UL)

/* Unread redirected bytes queued on the psock of the socket at kernel address `sk` (0 when it has
 * none, or when they cannot be read). */
static __always_inline __u32 weft_splice_queued(void *sk)
{
	void *psock = 0;
	__u32 queued = 0;

	if (!bpf_core_field_exists(struct sk_psock, msg_tot_len))
		return 0;
	if (bpf_probe_read_kernel(&psock, sizeof(psock), sk + bpf_core_field_offset(struct sock, sk_user_data)))
		return 0;
	psock = (void *)((unsigned long)psock & WEFT_SK_USER_DATA_PTRMASK);
	if (!psock)
		return 0;
	if (bpf_probe_read_kernel(&queued, sizeof(queued), psock + bpf_core_field_offset(struct sk_psock, msg_tot_len)))
		return 0;
	return queued;
}

static __always_inline void weft_splice_file(struct bpf_sock_ops *skops, struct weft_tuple4 *key, __u32 flags)
{
	struct bpf_sock *sk = skops->sk;
	struct weft_spliced s = {};

	if (!sk)
		return;
	if (bpf_sock_hash_update(skops, &weft_splice_sk, key, BPF_NOEXIST) != 0)
		return;
	s.flags = flags;
	s.sk = (__u64)sk;
	s.snd_base = skops->snd_nxt;
	s.rcv_base = skops->rcv_nxt;
	s.netns_cookie = bpf_get_netns_cookie(skops);
	if (bpf_map_update_elem(&weft_spliced, key, &s, BPF_ANY) != 0) {
		bpf_map_delete_elem(&weft_splice_sk, key);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Sockops, at ESTABLISHED and at close (weft_do_sockops calls it for every op). */
static __always_inline void weft_splice_sockops(struct bpf_sock_ops *skops)
{
	struct weft_tuple4 key = {};
	struct weft_splice_expect_key ek = {};
	struct weft_spliced *s;
	__u32 zero = 0, *on;

	key.src_ip = skops->local_ip4;
	key.dst_ip = skops->remote_ip4;
	key.src_port = (__u16)skops->local_port;
	key.dst_port = (__u16)bpf_ntohl(skops->remote_port);
	switch (skops->op) {
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			return;
		/* Its reader marks go first: a peer finding none redirects nothing (weft_do_splice). */
		bpf_map_delete_elem(&weft_splice_reader, &key);
		s = bpf_map_lookup_elem(&weft_spliced, &key);
		if (!s)
			return;
		/* A paired entry keeps its counts for the agent, which removes it. */
		if (s->flags & WEFT_SPLICE_F_PAIRED)
			s->flags |= WEFT_SPLICE_F_CLOSED;  /* under the socket's lock, as its own verdicts */
		else
			bpf_map_delete_elem(&weft_spliced, &key);
		return;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on = bpf_map_lookup_elem(&weft_splice_on, &zero);
		if (!on || !*on || !skops->sk)
			return;
		/* Only a captured client's socket: connect4 left it the destination it dialled. */
		if (!bpf_sk_storage_get(&weft_sk_orig, skops->sk, 0, 0))
			return;
		weft_splice_file(skops, &key, WEFT_SPLICE_F_CLIENT);
		return;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		ek.ip = skops->remote_ip4;
		ek.port = key.dst_port;
		if (!bpf_map_lookup_elem(&weft_splice_expect, &ek))
			return;
		weft_splice_file(skops, &key, 0);
		return;
	}
}

/* The sk_msg verdict, in the sending pod's sendmsg (its socket's lock held, so verdicts on one
 * socket never run at once and its entry's fields are updated in place). */
static __always_inline int weft_do_splice(struct sk_msg_md *msg)
{
	struct weft_tuple4 key = {};
	struct weft_spliced *me, *peer;
	struct tcp_sock *tp;
	void *psk;
	__u32 peer_copied = 0;
	__u64 *reads;

	key.src_ip = msg->local_ip4;
	key.dst_ip = msg->remote_ip4;
	key.src_port = (__u16)msg->local_port;
	key.dst_port = (__u16)bpf_ntohl(msg->remote_port);
	me = bpf_map_lookup_elem(&weft_spliced, &key);
	if (!me || !(me->flags & WEFT_SPLICE_F_PAIRED))
		return SK_PASS;
	/* The peer must be paired too: the agent pairs one side, then the other, and a socket it
	 * returns to TCP when pairing fails must have nothing queued (leaving the sockhash drops it). */
	peer = bpf_map_lookup_elem(&weft_spliced, &me->peer);
	if (!peer || !(peer->flags & WEFT_SPLICE_F_PAIRED) || (peer->flags & WEFT_SPLICE_F_CLOSED) || !msg->sk)
		goto pass;
	/* The peer takes redirected bytes only if it reads with recvmsg, and never with splice(2). */
	reads = bpf_map_lookup_elem(&weft_splice_reader, &me->peer);
	if (!reads || (*reads & (WEFT_SPLICE_R_RECVMSG | WEFT_SPLICE_R_SPLICE)) != WEFT_SPLICE_R_RECVMSG)
		goto pass;
	tp = bpf_skc_to_tcp_sock(msg->sk);
	if (!tp)
		goto pass;
	psk = (void *)peer->sk;
	if (bpf_probe_read_kernel(&peer_copied, sizeof(peer_copied), psk + bpf_core_field_offset(struct tcp_sock, copied_seq)))
		goto pass;
	/* Bytes this socket sent by TCP that the peer has not read yet: not now (the order rule). */
	if (tp->write_seq - me->snd_base != peer_copied - peer->rcv_base)
		goto pass;
	if (!bpf_core_field_exists(struct sk_psock, msg_tot_len) || weft_splice_queued(psk) > WEFT_SPLICE_MAX_QUEUED)
		goto pass;
	me->flags |= WEFT_SPLICE_F_REDIRECTING;
	me->bytes += msg->size;
	me->msgs++;
	return bpf_msg_redirect_hash(msg, &weft_splice_sk, &me->peer, BPF_F_INGRESS);
pass:
	if (me->flags & WEFT_SPLICE_F_REDIRECTING) {
		me->flags &= ~WEFT_SPLICE_F_REDIRECTING;
		me->fallbacks++;
	}
	me->passed += msg->size;
	return SK_PASS;
}

/* A kernel socket's own 4-tuple, as sockops files it (the socket is read through its address). */
static __always_inline void weft_sk_tuple(struct sock *sk, struct weft_tuple4 *key)
{
	key->src_ip = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
	key->dst_ip = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	key->src_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	key->dst_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

/* The socket behind the calling task's descriptor `fd`, or 0 when it is not a socket. */
static __always_inline struct sock *weft_fd_sock(__s64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *f = 0;
	struct socket *sock;

	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (!fds || bpf_probe_read_kernel(&f, sizeof(f), fds + fd) || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & WEFT_S_IFMT) != WEFT_S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	return sock ? BPF_CORE_READ(sock, sk) : 0;
}

/* Marks how a filed pod socket reads. Returns the marks it had before, or -1 for a socket that is
 * not filed (not tracked). */
static __always_inline int weft_splice_mark_reader(struct weft_tuple4 *key, __u64 mark)
{
	__u64 *reads, had;

	reads = bpf_map_lookup_elem(&weft_splice_reader, key);
	if (!reads) {
		if (!bpf_map_lookup_elem(&weft_spliced, key))
			return -1;
		if (bpf_map_update_elem(&weft_splice_reader, key, &mark, BPF_NOEXIST) == 0)
			return 0;
		/* Another reader of the same socket created it first. */
		reads = bpf_map_lookup_elem(&weft_splice_reader, key);
		if (!reads)
			return -1;
	}
	had = *reads;
	if ((had & mark) != mark)
		had = __sync_fetch_and_or(reads, mark);
	return (int)(had & 0xff);
}

/* Only sockets with a psock (in a sockhash: filed) are looked up. */
static __always_inline int weft_has_psock(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_user_data) != 0;
}

/* After a recvmsg on any socket (tracepoint sock_recv_length, also read, readv, recvmmsg and
 * io_uring's recv): a filed socket reading so takes its psock queue (redirected bytes) first. */
static __always_inline void weft_splice_on_recvmsg(struct sock *sk)
{
	struct weft_tuple4 key = {};

	if (!sk || !weft_has_psock(sk))
		return;
	weft_sk_tuple(sk, &key);
	weft_splice_mark_reader(&key, WEFT_SPLICE_R_RECVMSG);
}

/* Before a splice(2), sendfile(2), io_uring splice or TCP_ZEROCOPY_RECEIVE that reads descriptor
 * `fd`: a filed socket read so reads its TCP queue alone. From now on its peer sends it everything by TCP. Bytes already redirected to
 * it and unread are stranded: counted once, and reported to the agent, which resets the
 * connection. */
static __always_inline void weft_splice_on_splice_read(__s64 fd)
{
	struct weft_tuple4 key = {};
	struct sock *sk = weft_fd_sock(fd);
	int had;

	if (!sk || !weft_has_psock(sk))
		return;
	weft_sk_tuple(sk, &key);
	had = weft_splice_mark_reader(&key, WEFT_SPLICE_R_SPLICE);
	if (had < 0)
		return;
	if (!(had & WEFT_SPLICE_R_SPLICE))
		weft_count(WEFT_C_SPLICE_READER_SPLICE);
	if ((had & WEFT_SPLICE_R_STRANDED) || weft_splice_queued(sk) == 0)
		return;
	had = weft_splice_mark_reader(&key, WEFT_SPLICE_R_STRANDED);
	if (had < 0 || (had & WEFT_SPLICE_R_STRANDED))
		return;
	weft_count(WEFT_C_SPLICE_STRANDED);
	bpf_ringbuf_output(&weft_splice_stranded, &key, sizeof(key), 0);
}

/* Before an ioctl: FIONREAD on a socket in the sockhash counts only its psock queue (tcp_bpf_ioctl),
 * not what waits in TCP. Counted once per socket, for the operator (weftctl bpf). */
static __always_inline void weft_splice_on_ioctl(__s64 fd, __u64 cmd)
{
	struct weft_tuple4 key = {};
	struct sock *sk;
	int had;

	if (cmd != WEFT_FIONREAD)
		return;
	sk = weft_fd_sock(fd);
	if (!sk || !weft_has_psock(sk))
		return;
	weft_sk_tuple(sk, &key);
	had = weft_splice_mark_reader(&key, WEFT_SPLICE_R_FIONREAD);
	if (had >= 0 && !(had & WEFT_SPLICE_R_FIONREAD))
		weft_count(WEFT_C_SPLICE_READER_FIONREAD);
}

#endif /* WEFT_SPLICE_H */
