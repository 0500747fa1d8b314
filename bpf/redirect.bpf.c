/* Outbound L4 capture for enrolled pods, attached to the cgroup v2 root the pods live under:
 *   weft_connect4/6  rewrite connect() to a mesh destination into a connect() to the node's agent
 *   weft_sockops     keys the original destination by the 4-tuple the agent will accept
 *   weft_getpeer4/6  make getpeername()/accept() show the dialled address / the real client
 * Pods are recognised by network-namespace cookie (weft_pods), so every other process in the
 * cgroup tree is untouched. Cgroup hooks must return 1 (allow): Weft never refuses a connect(). */
#include "weft_redirect.h"
#include "weft_peer.h"

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx)
{
	return weft_do_connect4(ctx);
}

SEC("cgroup/connect6")
int weft_connect6(struct bpf_sock_addr *ctx)
{
	return weft_do_connect6(ctx);
}

SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	return weft_do_sockops(skops);
}

SEC("cgroup/getpeername4")
int weft_getpeer4(struct bpf_sock_addr *ctx)
{
	return weft_do_getpeer4(ctx);
}

SEC("cgroup/getpeername6")
int weft_getpeer6(struct bpf_sock_addr *ctx)
{
	return weft_do_getpeer6(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
