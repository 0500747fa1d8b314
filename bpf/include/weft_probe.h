/* The kubelet-probe exemption, shared by both inbound gates: connect4 tags a socket of the
 * kubelet's cgroup, sockops files its 4-tuple (weft_redirect.h), and the gates let exactly that
 * connection through. */
#ifndef WEFT_PROBE_H
#define WEFT_PROBE_H

#include "weft_maps.h"

/* Ports in host order; the key is the connection as the pod sees it. */
static __always_inline int weft_is_probe_tuple(__be32 pod_ip, __be32 peer_ip, __u16 pod_port, __u16 peer_port)
{
	struct weft_peer_key key = { .local_ip = pod_ip, .remote_ip = peer_ip, .local_port = pod_port, .remote_port = peer_port };

	return bpf_map_lookup_elem(&weft_probe_tuples, &key) != 0;
}

#endif /* WEFT_PROBE_H */
