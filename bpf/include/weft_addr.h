/* Address helpers shared by the inbound gates (weft_inbound.h, weft_lookup.h). */
#ifndef WEFT_ADDR_H
#define WEFT_ADDR_H

#include <linux/types.h>

/* Two IPv6 addresses, as four 32-bit words each (network order, compared as they are), are one. */
static __always_inline int weft_ip6_equal(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

#endif /* WEFT_ADDR_H */
