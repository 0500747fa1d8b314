/* The maps every Weft program shares. Each object in bpf/ includes this header, so the definitions
 * are identical everywhere; LIBBPF_PIN_BY_NAME makes libbpf pin them under the agent's pin root on
 * first load and reuse the pinned map on every later load (another object, a restarted agent). A
 * definition change therefore needs a new map name or an explicit migration: libbpf refuses to reuse
 * a pin whose type, sizes or max_entries differ. The agent's explicit migrations (Datapath.open):
 * counters whose layout grew are re-created (counts restart from zero), and pins of retired maps
 * (weft_pods_by_ip, replaced by weft_inbound_pods) are removed once nothing new uses them. */
#ifndef WEFT_MAPS_H
#define WEFT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weft.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PODS);
	__type(key, __u64); /* network-namespace cookie */
	__type(value, struct weft_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PODS);
	__type(key, __be32); /* pod IPv4 */
	__type(value, struct weft_pod_in);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_inbound_pods SEC(".maps");

/* PeerAuthentication portLevelMtls: ports whose mode differs from their pod's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PORT_MODES);
	__type(key, struct weft_pod_port);
	__type(value, struct weft_port_mode);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_port_modes SEC(".maps");

/* Ports an operator excluded from inbound enforcement (explicitly; outbound exclusions never
 * open a port inbound). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_EXCLUDED_PORTS);
	__type(key, __u16); /* host-order port */
	__type(value, struct weft_excluded);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_inbound_excluded SEC(".maps");

/* The agent's plaintext listener inside each enrolled pod's netns, by pod IPv4: weft_lookup steers
 * every TCP connection that reaches the pod from outside its netns into it. A listener that closes
 * (the agent died) leaves the map by itself, and the pod's plaintext is then refused. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WEFT_MAX_PODS);
	__type(key, __be32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_pod_listeners SEC(".maps");

/* What a socket is (WEFT_SK_*): the agent tags its own sockets through the map's fd interface,
 * connect4 tags kubelet probes. Freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct weft_sk_tag);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_sk_tag SEC(".maps");

/* cgroup ids of the kubelet (the only prober exempt from inbound enforcement). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PROBERS);
	__type(key, __u64);
	__type(value, struct weft_excluded);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_probers SEC(".maps");

/* Live kubelet probe connections, as the pod sees them: written by sockops when the probe's SYN is
 * about to leave, deleted when its socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_TUPLES);
	__type(key, struct weft_peer_key);
	__type(value, struct weft_excluded);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_probe_tuples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_DESTS);
	__type(key, struct weft_dest_key);
	__type(value, struct weft_dest);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_EXCLUDED_PORTS);
	__type(key, __u16); /* host-order port */
	__type(value, struct weft_excluded);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_excluded_ports SEC(".maps");

/* Filled by sockops when a redirected connection gets its source port; the agent reads the entry on
 * accept() and deletes it. LRU so entries of connections the agent never accepted age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_TUPLES);
	__type(key, struct weft_tuple4);
	__type(value, struct weft_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_orig_by_tuple SEC(".maps");

/* Per-socket original destination: freed with the socket, so getpeername() never sees a stale one. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct weft_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_sk_orig SEC(".maps");

/* Written by the agent before it connects to a local pod for a remote client. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_TUPLES);
	__type(key, struct weft_peer_key);
	__type(value, struct weft_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_peer_override SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weft_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PODS);
	__type(key, __u64); /* network-namespace cookie */
	__type(value, struct weft_pod_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_pod_counters SEC(".maps");

/* Refusals, one record each, for the agent's access log. Written only on a refusal, never on a
 * connection that is let through; a full ring drops records (the counters still count). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_refusals SEC(".maps");

/* Same-node splice (weft_splice.h): the pod sockets sockops filed, by their own tuple, with the
 * sk_msg verdict of splice.bpf.c attached to weft_splice_sk. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WEFT_MAX_SPLICED * 2);
	__type(key, struct weft_tuple4);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SPLICED * 2);
	__type(key, struct weft_tuple4);
	__type(value, struct weft_spliced);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_spliced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SPLICE_EXPECT);
	__type(key, struct weft_splice_expect_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_expect SEC(".maps");

/* How each filed pod socket has been read (WEFT_SPLICE_R_*), by its own tuple: set only by the
 * kernel (the tracepoint programs of splice.bpf.c), removed by sockops when the socket closes. A
 * socket's verdict redirects to its peer only when the peer has read with recvmsg and never with
 * splice(2) (weft_splice.h, "Readers"). Separate from weft_spliced, which the agent rewrites when
 * it pairs, so that no mark is lost to that write. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SPLICED * 2);
	__type(key, struct weft_tuple4);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_reader SEC(".maps");

/* Same-node splice: the tuple (struct weft_tuple4) of each filed pod socket that began reading
 * with splice(2) while redirected bytes it had not read were queued for it (weft_splice.h); the
 * agent resets that connection. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_stranded SEC(".maps");

/* Slot 0: 1 while the agent splices (--splice): only then does sockops file client sockets. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_splice_on SEC(".maps");

#endif /* WEFT_MAPS_H */
