/* Same-node splice of authorized connections between two pods (weft_splice.h): an sk_msg verdict
 * program attached to weft_splice_sk, run in each filed pod socket's sendmsg. */
#include "weft_splice.h"

SEC("sk_msg")
int weft_splice_verdict(struct sk_msg_md *msg)
{
	return weft_do_splice(msg);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
