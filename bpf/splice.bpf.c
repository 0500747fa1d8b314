/* Same-node splice of authorized connections between two pods (weft_splice.h): an sk_skb stream
 * verdict program attached to weft_splice_socks. No stream parser: each skb is forwarded as it
 * comes, the agent needs no message boundaries. */
#include "weft_splice.h"

SEC("sk_skb/stream_verdict")
int weft_splice_verdict(struct __sk_buff *skb)
{
	return weft_do_splice(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
