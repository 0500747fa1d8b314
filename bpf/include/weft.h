/* Structures shared by the kernel programs in bpf/ and the agent (agent/src/datapath/codecs.ts
 * mirrors each as a struct() codec named after it, with these member names;
 * test/bpf/datapath.test.ts compares every codec with the objects' BTF). Rules that keep both
 * sides in step:
 *  - IPv4 addresses are stored in network byte order (as the kernel hands them to us);
 *  - ports are stored in HOST byte order, so `bpftool map dump` shows readable numbers;
 *  - every struct has explicit padding and a _Static_assert on its size, so a change that moves a
 *    field breaks the build instead of silently disagreeing with user space.
 */
#ifndef WEFT_H
#define WEFT_H

#include <linux/types.h>

/* Enrolment modes (weft_pod.mode, weft_pod_in.mode). */
#define WEFT_MODE_PERMISSIVE 1
#define WEFT_MODE_STRICT 2

/* weft_pod_in.flags */
#define WEFT_POD_F_PORT_MODES 0x01   /* some port has its own mode: look it up in weft_port_modes */
#define WEFT_POD_F_STRICT_PORT 0x02  /* some port is STRICT (fragments are dropped as for a STRICT pod) */

/* weft_sk_tag.kind: what a socket is, set by the agent (AGENT) or by connect4 (PROBE). */
#define WEFT_SK_AGENT 1  /* one of the agent's own sockets: never captured */
#define WEFT_SK_PROBE 2  /* a kubelet probe to a pod: its 4-tuple goes to weft_probe_tuples */

#define WEFT_MAX_PODS 4096
#define WEFT_MAX_DESTS 65536
#define WEFT_MAX_EXCLUDED_PORTS 256
#define WEFT_MAX_TUPLES 65536
#define WEFT_MAX_PORT_MODES 16384
#define WEFT_MAX_PROBERS 16
#define WEFT_MAX_SPLICED 16384  /* spliced connections (two sockets each) */
#define WEFT_MAX_SPLICE_EXPECT 1024  /* deliveries being connected for a splice at once */

/* weft_pods: network-namespace cookie -> the enrolled pod it belongs to. */
struct weft_pod {
	__be32 pod_ip;
	__be32 agent_ip;   /* where captured connections go: the node-side veth address */
	__u16 agent_port;  /* host order, normally 15001 */
	__u8 mode;         /* WEFT_MODE_* */
	__u8 flags;        /* reserved, 0 */
	__u32 ifindex;     /* pod-side interface inside the pod netns */
};
_Static_assert(sizeof(struct weft_pod) == 16, "weft_pod layout");

/* weft_inbound_pods: pod IPv4 -> what inbound enforcement needs to know. No address is trusted:
 * the agent's own deliveries are made inside the pod's netns, from a socket bound to the pod's own
 * address (see weft_lookup.h), kubelet probes are recognised by the prober's cgroup
 * (weft_probe_tuples). */
struct weft_pod_in {
	__u64 netns_cookie;  /* key into weft_pod_counters */
	__u8 mode;           /* the pod's default WEFT_MODE_* */
	__u8 flags;          /* WEFT_POD_F_* */
	__u16 pad0;
	__u32 pad1;
};
_Static_assert(sizeof(struct weft_pod_in) == 16, "weft_pod_in layout");

/* weft_port_modes key: one port of a pod with its own mode (PeerAuthentication portLevelMtls). */
struct weft_pod_port {
	__be32 pod_ip;
	__u16 port;  /* host order */
	__u16 pad;
};
_Static_assert(sizeof(struct weft_pod_port) == 8, "weft_pod_port layout");

struct weft_port_mode {
	__u8 mode;
	__u8 pad[3];
};
_Static_assert(sizeof(struct weft_port_mode) == 4, "weft_port_mode layout");

/* weft_sk_tag value (socket-local storage). */
struct weft_sk_tag {
	__u32 kind;  /* WEFT_SK_* */
};
_Static_assert(sizeof(struct weft_sk_tag) == 4, "weft_sk_tag layout");

/* weft_dests key: a mesh destination; port 0 means every port of that address. */
struct weft_dest_key {
	__be32 ip;
	__u16 port;
	__u16 pad;
};
_Static_assert(sizeof(struct weft_dest_key) == 8, "weft_dest_key layout");

struct weft_dest {
	__u32 flags;  /* reserved for the agent (e.g. service VIP vs workload), 0 today */
};
_Static_assert(sizeof(struct weft_dest) == 4, "weft_dest layout");

/* weft_excluded_ports (outbound: never captured) and weft_inbound_excluded (inbound: never judged)
 * value; the key is a host-order __u16 port. */
struct weft_excluded {
	__u8 present;
};

/* A TCP 4-tuple as the agent sees it on accept(): src = client pod, dst = agent listener. */
struct weft_tuple4 {
	__be32 src_ip;
	__be32 dst_ip;
	__u16 src_port;
	__u16 dst_port;
};
_Static_assert(sizeof(struct weft_tuple4) == 12, "weft_tuple4 layout");

/* The destination a pod dialled before connect4 rewrote it. Value of weft_orig_by_tuple and of the
 * per-socket weft_sk_orig storage. */
struct weft_orig {
	__be32 orig_ip;
	__u16 orig_port;
	__u16 pad;
	__u64 netns_cookie;  /* the client's network namespace */
};
_Static_assert(sizeof(struct weft_orig) == 16, "weft_orig layout");

/* weft_peer_override and weft_probe_tuples key: a connection as the SERVER socket in the pod sees it. */
struct weft_peer_key {
	__be32 local_ip;
	__be32 remote_ip;
	__u16 local_port;
	__u16 remote_port;
};
_Static_assert(sizeof(struct weft_peer_key) == 12, "weft_peer_key layout");

struct weft_peer {
	__be32 client_ip;
	__u16 client_port;
	__u16 pad;
};
_Static_assert(sizeof(struct weft_peer) == 8, "weft_peer layout");

/* weft_refusals record: one connection the kernel refused, for the agent's access log. */
struct weft_refusal {
	__u64 netns_cookie;  /* the pod's; 0 when not known (IPv6 at the interface) */
	__be32 saddr;        /* IPv4 addresses; 0 for IPv6 */
	__be32 daddr;
	__u16 sport;         /* host order; 0 when the TCP header was not read (fragments) */
	__u16 dport;
	__u16 reason;        /* the enum weft_counter index of the refusal's counter */
	__u16 pad;
};
_Static_assert(sizeof(struct weft_refusal) == 24, "weft_refusal layout");

/* Node-wide counters: weft_counters is a one-slot PERCPU_ARRAY whose value is this struct, so
 * `bpftool map dump` prints every counter by name. Programs address a counter by its index in
 * enum weft_counter; the asserts below pin each index to its field. */
struct weft_counters {
	__u64 connect4_redirected;
	__u64 connect4_passed;
	__u64 connect6_redirected;
	__u64 connect6_passed;
	__u64 connect6_native_skipped;
	__u64 sockops_rekeyed;
	__u64 sockops_rekey_failed;
	__u64 getpeername_rewritten;
	__u64 getpeername_peer_override;
	__u64 strict_denied;
	__u64 strict_rst_sent;
	__u64 permissive_plaintext;
	__u64 probe_allowed;
	__u64 inbound_excluded;
	__u64 connect_agent_skipped;
	__u64 probe_tagged;
	__u64 fragment_dropped;
	__u64 header_unreadable;
	__u64 ipv6_refused;
	__u64 lookup_steered;
	__u64 lookup_probe_allowed;
	__u64 lookup_excluded;
	__u64 lookup_no_agent;
	__u64 lookup_ipv6_refused;
	__u64 splice_reader_splice;
	__u64 splice_stranded;
	__u64 splice_reader_fionread;
	__u64 vlan_dropped;
	__u64 martian;
};

enum weft_counter {
	WEFT_C_CONNECT4_REDIRECTED,
	WEFT_C_CONNECT4_PASSED,
	WEFT_C_CONNECT6_REDIRECTED,
	WEFT_C_CONNECT6_PASSED,
	WEFT_C_CONNECT6_NATIVE_SKIPPED,
	WEFT_C_SOCKOPS_REKEYED,
	WEFT_C_SOCKOPS_REKEY_FAILED,
	WEFT_C_GETPEERNAME_REWRITTEN,
	WEFT_C_GETPEERNAME_PEER_OVERRIDE,
	WEFT_C_STRICT_DENIED,
	WEFT_C_STRICT_RST_SENT,
	WEFT_C_PERMISSIVE_PLAINTEXT,
	WEFT_C_PROBE_ALLOWED,
	WEFT_C_INBOUND_EXCLUDED,
	WEFT_C_CONNECT_AGENT_SKIPPED,
	WEFT_C_PROBE_TAGGED,
	WEFT_C_FRAGMENT_DROPPED,
	WEFT_C_HEADER_UNREADABLE,
	WEFT_C_IPV6_REFUSED,
	WEFT_C_LOOKUP_STEERED,
	WEFT_C_LOOKUP_PROBE_ALLOWED,
	WEFT_C_LOOKUP_EXCLUDED,
	WEFT_C_LOOKUP_NO_AGENT,
	WEFT_C_LOOKUP_IPV6_REFUSED,
	WEFT_C_SPLICE_READER_SPLICE,    /* a filed pod socket read with splice(2) (or sendfile, zerocopy
	                                 * receive): nothing more is redirected to it */
	WEFT_C_SPLICE_STRANDED,         /* ... while redirected bytes it had not read were queued for it */
	WEFT_C_SPLICE_READER_FIONREAD,  /* a filed pod socket asked FIONREAD (counts only redirected bytes) */
	WEFT_C_VLAN_DROPPED,            /* a frame into an enrolled pod still carrying an 802.1Q/802.1ad tag at tc */
	WEFT_C_MARTIAN,                 /* on an enrolled pod's interface, an IPv4 packet from or to
	                                 * 127.0.0.0/8, TCP from the pod's own address, or IPv6
	                                 * whose source is its destination */
	WEFT_C__COUNT,
};
_Static_assert(sizeof(struct weft_counters) == WEFT_C__COUNT * 8, "weft_counters layout");
_Static_assert(__builtin_offsetof(struct weft_counters, connect4_redirected) == WEFT_C_CONNECT4_REDIRECTED * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, getpeername_rewritten) == WEFT_C_GETPEERNAME_REWRITTEN * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, strict_denied) == WEFT_C_STRICT_DENIED * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, probe_allowed) == WEFT_C_PROBE_ALLOWED * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, lookup_ipv6_refused) == WEFT_C_LOOKUP_IPV6_REFUSED * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, splice_reader_fionread) == WEFT_C_SPLICE_READER_FIONREAD * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, vlan_dropped) == WEFT_C_VLAN_DROPPED * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_counters, martian) == WEFT_C_MARTIAN * 8, "idx");

/* weft_pod_counters: netns cookie -> per-pod counters (shared across CPUs, updated atomically). */
struct weft_pod_counters {
	__u64 connect_redirected;
	__u64 connect_passed;
	__u64 getpeername_rewritten;
	__u64 peer_override;
	__u64 strict_denied;
	__u64 permissive_plaintext;
	__u64 probe_allowed;
	__u64 fragment_dropped;
	__u64 steered;
	__u64 no_agent;
};

enum weft_pod_counter {
	WEFT_PC_CONNECT_REDIRECTED,
	WEFT_PC_CONNECT_PASSED,
	WEFT_PC_GETPEERNAME_REWRITTEN,
	WEFT_PC_PEER_OVERRIDE,
	WEFT_PC_STRICT_DENIED,
	WEFT_PC_PERMISSIVE_PLAINTEXT,
	WEFT_PC_PROBE_ALLOWED,
	WEFT_PC_FRAGMENT_DROPPED,
	WEFT_PC_STEERED,
	WEFT_PC_NO_AGENT,
	WEFT_PC__COUNT,
};
_Static_assert(sizeof(struct weft_pod_counters) == WEFT_PC__COUNT * 8, "weft_pod_counters layout");
_Static_assert(__builtin_offsetof(struct weft_pod_counters, strict_denied) == WEFT_PC_STRICT_DENIED * 8, "idx");
_Static_assert(__builtin_offsetof(struct weft_pod_counters, no_agent) == WEFT_PC_NO_AGENT * 8, "idx");

/* weft_spliced value: one pod socket the same-node splice may carry (weft_splice.h), keyed by its
 * own weft_tuple4 (src = its local address). Filed by sockops when the socket is established (a
 * captured client's socket to its agent; a server's socket whose peer the agent announced in
 * weft_splice_expect); paired by the agent (peer, F_PAIRED) once it has authorized the connection;
 * removed by the agent after it read the counts, or by sockops when an unpaired socket closes. */
struct weft_spliced {
	struct weft_tuple4 peer;  /* the paired socket's own tuple (F_PAIRED) */
	__u32 flags;              /* WEFT_SPLICE_F_* */
	__u64 sk;                 /* the socket's kernel address: the peer's verdict reads its state */
	__u32 snd_base;           /* write_seq when established: what it sends by TCP is write_seq - snd_base */
	__u32 rcv_base;           /* copied_seq when established: what it read by TCP is copied_seq - rcv_base */
	__u64 netns_cookie;       /* the socket's network namespace */
	__u64 bytes;              /* sent by this socket, put by the kernel into its peer's receive queue */
	__u64 msgs;               /* sendmsg chunks redirected */
	__u64 passed;             /* sent by this socket over TCP (through the agent) while paired, as
	                           * far as the verdict saw it: after a TCP send that found the send
	                           * buffer full, tcp_bpf keeps the last verdict for the next message
	                           * without running the program (net/ipv4/tcp_bpf.c) */
	__u32 fallbacks;          /* times a redirect gave way to TCP (peer over its bound, or not caught up) */
	__u32 pad;
};
_Static_assert(sizeof(struct weft_spliced) == 72, "weft_spliced layout");

/* weft_spliced.flags */
#define WEFT_SPLICE_F_PAIRED 0x1       /* set by the agent: peer is valid, redirects may start */
#define WEFT_SPLICE_F_CLIENT 0x2       /* the client pod's socket (connected to its agent) */
#define WEFT_SPLICE_F_CLOSED 0x4       /* the socket closed (sockops): its peer stops redirecting to it */
#define WEFT_SPLICE_F_REDIRECTING 0x8  /* its last message was redirected (counts fallbacks) */

/* weft_splice_reader values: how a filed pod socket has been read (set by the kernel, sticky) */
#define WEFT_SPLICE_R_RECVMSG 0x1   /* read with recvmsg/read (tcp_bpf_recvmsg): takes redirected bytes */
#define WEFT_SPLICE_R_SPLICE 0x2    /* read its TCP queue directly (splice(2), sendfile(2),
                                     * TCP_ZEROCOPY_RECEIVE): never sees redirected bytes */
#define WEFT_SPLICE_R_STRANDED 0x4  /* ... and redirected bytes were queued for it when it did */
#define WEFT_SPLICE_R_FIONREAD 0x8  /* asked FIONREAD (tcp_bpf_ioctl counts only redirected bytes) */

/* weft_splice_expect key: the address the agent's delivery socket is bound to before it connects
 * to a pod it will splice to (the server pod's socket sees it as its peer). */
struct weft_splice_expect_key {
	__be32 ip;
	__u16 port;  /* host order */
	__u16 pad;
};
_Static_assert(sizeof(struct weft_splice_expect_key) == 8, "weft_splice_expect_key layout");

#endif /* WEFT_H */
