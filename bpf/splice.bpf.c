/* Same-node splice of authorized connections between two pods (weft_splice.h): an sk_msg verdict
 * program attached to weft_splice_sk, run in each filed pod socket's sendmsg, and the tracepoint
 * programs that learn how each filed socket is read (weft_splice_reader). */
#include "weft_splice.h"

SEC("sk_msg")
int weft_splice_verdict(struct sk_msg_md *msg)
{
	return weft_do_splice(msg);
}

/* A syscall tracepoint's record: the common header, the syscall number, then its arguments. */
struct weft_sys_enter {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

/* tracepoint sock:sock_recv_length (after sock_recvmsg): TP_PROTO(struct sock *sk, int ret, int flags) */
SEC("raw_tracepoint/sock_recv_length")
int weft_splice_recvmsg(struct bpf_raw_tracepoint_args *ctx)
{
	weft_splice_on_recvmsg((struct sock *)ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_splice")
int weft_splice_read(struct weft_sys_enter *ctx)
{
	weft_splice_on_splice_read((__s64)(__s32)ctx->args[0]);  /* fd_in */
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendfile64")
int weft_splice_sendfile(struct weft_sys_enter *ctx)
{
	weft_splice_on_splice_read((__s64)(__s32)ctx->args[1]);  /* in_fd */
	return 0;
}

/* io_uring's IORING_OP_SPLICE takes no splice(2) syscall: it resolves its input descriptor through
 * io_file_get_normal, whose tracepoint gives the request (its opcode) and the descriptor.
 * TP_PROTO(struct io_kiocb *req, int fd). */
SEC("raw_tracepoint/io_uring_file_get")
int weft_splice_uring(struct bpf_raw_tracepoint_args *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx->args[0];

	if (req && BPF_CORE_READ(req, opcode) == 30 /* IORING_OP_SPLICE */)
		weft_splice_on_splice_read((__s64)(__s32)ctx->args[1]);
	return 0;
}

/* getsockopt(TCP_ZEROCOPY_RECEIVE) maps the TCP receive queue: like splice(2), it never sees the
 * psock queue. */
SEC("tracepoint/syscalls/sys_enter_getsockopt")
int weft_splice_zerocopy(struct weft_sys_enter *ctx)
{
	if (ctx->args[1] == 6 /* IPPROTO_TCP */ && ctx->args[2] == 35 /* TCP_ZEROCOPY_RECEIVE */)
		weft_splice_on_splice_read((__s64)(__s32)ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_ioctl")
int weft_splice_ioctl(struct weft_sys_enter *ctx)
{
	weft_splice_on_ioctl((__s64)(__s32)ctx->args[0], ctx->args[1]);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
