/* Inbound enforcement for enrolled pods at the pod's interface, the first of two gates (the second
 * is weft_lookup, weft_lookup.h, which steers what passes here into the agent). Nothing that
 * arrives on the interface is trusted by its address: the agent delivers over the pod's loopback
 * and never crosses it, and the only exemption is a kubelet probe, known by its 4-tuple that
 * sockops filed for a socket of the kubelet's cgroup (weft_probe_tuples).
 *  - a SYN to a STRICT pod (or STRICT port, portLevelMtls) is answered with a RST, so a client
 *    fails at once instead of timing out; PERMISSIVE plaintext passes, counted, to weft_lookup;
 *  - IPv4 fragments to a STRICT pod are dropped: a later fragment has no header to judge, and a
 *    first fragment may carry only part of one;
 *  - a TCP header that cannot be read (even after bpf_skb_load_bytes, which reads paged data) is
 *    dropped, never passed unjudged;
 *  - IPv6 TCP SYNs and IPv6 fragments are dropped: Weft meshes IPv4 only, so IPv6 would be a way
 *    around every check (the link exists only on enrolled pods, so this touches no one else);
 *  - martians are dropped: an IPv4 packet from or to 127.0.0.0/8 (loopback addresses never appear
 *    on a wire, RFC 1122 3.2.1.3, but a pod's namespace copies route_localnet from the node's at
 *    creation, and kube-proxy sets it there, so its stack would take such a packet to its loopback
 *    services), and any packet whose source is its destination, IPv4 or IPv6, whatever address of
 *    the pod it names (weft_lookup lets a connection from the address it is made to by, as made
 *    inside the namespace; the IPv4 stack's own martian check rests on accept_local, copied from
 *    the node's alike, and IPv6 has none);
 *  - a frame that still carries an 802.1Q or 802.1ad tag here is dropped: the stack takes one tag
 *    off before tc (the program then sees what it carries), and takes a second priority tag (VID 0)
 *    off only after tc, then delivers what is inside, which this program would not have judged.
 * Only the first SYN is judged: an established flow was allowed when it started, and SYN-ACKs and
 * ACKs belong to the pod's own connections. */
#ifndef WEFT_INBOUND_H
#define WEFT_INBOUND_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include "weft_addr.h"
#include "weft_count.h"
#include "weft_probe.h"

/* tcx verdicts: NEXT lets later programs in the chain (and then the stack) decide, so Weft does not
 * override another tcx user's drop; the uapi headers of this distribution predate tcx. */
#define WEFT_TCX_NEXT (-1)
#define WEFT_TCX_DROP TC_ACT_SHOT

#define WEFT_IP_OFF ETH_HLEN
#define WEFT_TCP_OFF (ETH_HLEN + (int)sizeof(struct iphdr))
#define WEFT_RST_LEN (WEFT_TCP_OFF + (int)sizeof(struct tcphdr))
#define WEFT_IP_CSUM_OFF (WEFT_IP_OFF + (int)__builtin_offsetof(struct iphdr, check))
#define WEFT_IP_TOTLEN_OFF (WEFT_IP_OFF + (int)__builtin_offsetof(struct iphdr, tot_len))
#define WEFT_TCP_CSUM_OFF (WEFT_TCP_OFF + (int)__builtin_offsetof(struct tcphdr, check))
#define WEFT_TCP_MAX_OPT_WORDS 10

/* The 16-bit word at byte 12 of the TCP header: data offset (5 words) and RST|ACK. */
#define WEFT_RST_ACK_WORD bpf_htons((5 << 12) | 0x0004 | 0x0010)

/* What weft_refuse needs from the SYN, read before any helper invalidates packet pointers. */
struct weft_syn {
	__u8 eth_dst[ETH_ALEN];
	__u8 eth_src[ETH_ALEN];
	__be32 saddr, daddr;
	__be16 sport, dport;
	__be32 seq, ack_seq;
	__be16 flag_word, window, urg_ptr, tot_len;
	__u32 opt_len;
	__s64 opt_csum; /* one's-complement difference that removes the options from the checksum */
};

/* Turns the SYN in place into the RST|ACK the pod's kernel would have sent for a closed port
 * (RFC 9293 3.10.7.1: no ACK in the segment, so seq = 0 and ack = SYN's seq + 1) and sends it back
 * out the interface it came in on. Checksums are updated incrementally with the csum helpers rather
 * than recomputed: veth traffic is usually CHECKSUM_PARTIAL, where the TCP field holds only the
 * pseudo-header sum, and the helpers know which form the skb carries. Addresses and ports are
 * swapped, which leaves both sums unchanged. */
static __always_inline int weft_refuse(struct __sk_buff *skb, struct weft_syn *s)
{
	__be32 new_ack = bpf_htonl(bpf_ntohl(s->seq) + 1);
	__be16 new_tot = bpf_htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
	__be16 old_tcp_len = bpf_htons(bpf_ntohs(s->tot_len) - sizeof(struct iphdr));
	__be16 new_tcp_len = bpf_htons(sizeof(struct tcphdr));
	__be16 new_word = WEFT_RST_ACK_WORD;
	__be32 zero32 = 0;
	__be16 zero16 = 0;
	int f = BPF_F_RECOMPUTE_CSUM;

	if (bpf_skb_store_bytes(skb, 0, s->eth_src, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, s->eth_dst, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, WEFT_IP_OFF + __builtin_offsetof(struct iphdr, saddr), &s->daddr, 4, f) ||
	    bpf_skb_store_bytes(skb, WEFT_IP_OFF + __builtin_offsetof(struct iphdr, daddr), &s->saddr, 4, f) ||
	    bpf_skb_store_bytes(skb, WEFT_TCP_OFF + __builtin_offsetof(struct tcphdr, source), &s->dport, 2, f) ||
	    bpf_skb_store_bytes(skb, WEFT_TCP_OFF + __builtin_offsetof(struct tcphdr, dest), &s->sport, 2, f))
		return WEFT_TCX_DROP;

	if (bpf_skb_store_bytes(skb, WEFT_IP_TOTLEN_OFF, &new_tot, 2, f) ||
	    bpf_l3_csum_replace(skb, WEFT_IP_CSUM_OFF, s->tot_len, new_tot, 2) ||
	    bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, old_tcp_len, new_tcp_len, BPF_F_PSEUDO_HDR | 2))
		return WEFT_TCX_DROP;

	if (bpf_skb_store_bytes(skb, WEFT_TCP_OFF + __builtin_offsetof(struct tcphdr, seq), &zero32, 4, f) ||
	    bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, s->seq, 0, 4) ||
	    bpf_skb_store_bytes(skb, WEFT_TCP_OFF + __builtin_offsetof(struct tcphdr, ack_seq), &new_ack, 4, f) ||
	    bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, s->ack_seq, new_ack, 4) ||
	    bpf_skb_store_bytes(skb, WEFT_TCP_OFF + 12, &new_word, 2, f) ||
	    bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, s->flag_word, new_word, 2) ||
	    bpf_skb_store_bytes(skb, WEFT_TCP_OFF + __builtin_offsetof(struct tcphdr, window), &zero16, 2, f) ||
	    bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, s->window, 0, 2) ||
	    bpf_skb_store_bytes(skb, WEFT_TCP_OFF + __builtin_offsetof(struct tcphdr, urg_ptr), &zero16, 2, f) ||
	    bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, s->urg_ptr, 0, 2))
		return WEFT_TCX_DROP;

	/* Options go: remove their bytes from the sum (a size of 0 means "from/to is a diff"), then
	 * cut the packet after the bare TCP header. */
	if (s->opt_len && bpf_l4_csum_replace(skb, WEFT_TCP_CSUM_OFF, 0, s->opt_csum, 0))
		return WEFT_TCX_DROP;
	if (bpf_skb_change_tail(skb, WEFT_RST_LEN, 0))
		return WEFT_TCX_DROP;

	weft_count(WEFT_C_STRICT_RST_SENT);
	/* Ingress -> egress of the same device: the RST travels back through the node to the client. */
	return bpf_redirect(skb->ifindex, 0);
}

#define WEFT_IP_MF 0x2000
#define WEFT_IP_OFFSET 0x1fff
#define WEFT_NEXTHDR_FRAGMENT 44

/* The mode a port of a pod runs in: its portLevelMtls entry, else the pod's. */
static __always_inline __u8 weft_port_mode(struct weft_pod_in *pod, __be32 pod_ip, __u16 port)
{
	struct weft_pod_port key = { .pod_ip = pod_ip, .port = port };
	struct weft_port_mode *pm;

	if (!(pod->flags & WEFT_POD_F_PORT_MODES))
		return pod->mode;
	pm = bpf_map_lookup_elem(&weft_port_modes, &key);
	return pm ? pm->mode : pod->mode;
}

/* A frame dropped for the tag it still carries (vlan_dropped), named by what is inside it where
 * that is IPv4 right behind this one tag: its addresses, its ports if TCP, and the pod. */
static __always_inline int weft_drop_tagged(struct __sk_buff *skb)
{
	struct { __be16 tci; __be16 proto; } tag;
	struct weft_pod_in *pod = 0;
	struct iphdr iph = {};
	struct tcphdr th = {};

	if (!bpf_skb_load_bytes(skb, ETH_HLEN, &tag, sizeof(tag)) && tag.proto == bpf_htons(ETH_P_IP) &&
	    !bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(tag), &iph, sizeof(iph))) {
		pod = bpf_map_lookup_elem(&weft_inbound_pods, &iph.daddr);
		if (iph.protocol != IPPROTO_TCP || iph.ihl < 5 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(tag) + iph.ihl * 4, &th, sizeof(th)))
			th.source = th.dest = 0;
	}
	weft_refused(WEFT_C_VLAN_DROPPED, pod ? pod->netns_cookie : 0, iph.saddr, iph.daddr, bpf_ntohs(th.source), bpf_ntohs(th.dest));
	return WEFT_TCX_DROP;
}

static __always_inline int weft_inbound6(struct __sk_buff *skb)
{
	struct ipv6hdr ip6;
	struct tcphdr tcp;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
		return WEFT_TCX_NEXT; /* not IPv6 the stack would take either */
	/* From the address it is sent to, through the interface: a martian the IPv6 stack takes (it
	 * has no accept_local), and weft_lookup lets src = dst by as made inside the namespace; a SYN
	 * behind an extension header would get there. */
	if (weft_ip6_equal(ip6.saddr.in6_u.u6_addr32, ip6.daddr.in6_u.u6_addr32)) {
		/* The record holds IPv4 addresses only; the ports, when TCP follows at once. */
		if (ip6.nexthdr != IPPROTO_TCP || bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), &tcp, sizeof(tcp)))
			tcp.source = tcp.dest = 0;
		weft_refused(WEFT_C_MARTIAN, 0, 0, 0, bpf_ntohs(tcp.source), bpf_ntohs(tcp.dest));
		return WEFT_TCX_DROP;
	}
	if (ip6.nexthdr == WEFT_NEXTHDR_FRAGMENT) {
		weft_refused(WEFT_C_IPV6_REFUSED, 0, 0, 0, 0, 0);
		return WEFT_TCX_DROP;
	}
	if (ip6.nexthdr != IPPROTO_TCP)
		return WEFT_TCX_NEXT; /* ICMPv6 (neighbour discovery), UDP; TCP behind other extension
				       * headers meets weft_lookup, which refuses IPv6 too */
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), &tcp, sizeof(tcp))) {
		weft_refused(WEFT_C_HEADER_UNREADABLE, 0, 0, 0, 0, 0);
		return WEFT_TCX_DROP;
	}
	if (!tcp.syn || tcp.ack)
		return WEFT_TCX_NEXT;
	weft_refused(WEFT_C_IPV6_REFUSED, 0, 0, 0, bpf_ntohs(tcp.source), bpf_ntohs(tcp.dest));
	return WEFT_TCX_DROP;
}

static __always_inline int weft_do_inbound(struct __sk_buff *skb)
{
	struct iphdr iph;
	struct tcphdr th;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	struct weft_pod_in *pod;
	struct weft_syn s = {};
	void *data, *end;
	__u16 dport, sport;
	__u32 tcp_len, ihl, hdr_end;
	__u8 mode;

	/* Stacked tags (a priority tag inside an 802.1Q or 802.1ad one): nothing of the frame's
	 * headers is where this program reads them, and the stack would judge none of it. A pod's
	 * interface carries no VLAN of its own (making one takes CAP_NET_ADMIN in the pod). */
	if (skb->protocol == bpf_htons(ETH_P_8021Q) || skb->protocol == bpf_htons(ETH_P_8021AD))
		return weft_drop_tagged(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return weft_inbound6(skb);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return WEFT_TCX_NEXT;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &iph, sizeof(iph)))
		return WEFT_TCX_NEXT; /* shorter than an IPv4 header: the stack drops it */
	pod = bpf_map_lookup_elem(&weft_inbound_pods, &iph.daddr);
	/* Before the protocol and the pod's address are looked at: weft_lookup lets src = dst by for
	 * any address of the namespace, not only the one Weft enrolled (a pod can add another). */
	if ((iph.daddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000) ||
	    (iph.saddr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000) || iph.saddr == iph.daddr) {
		weft_refused(WEFT_C_MARTIAN, pod ? pod->netns_cookie : 0, iph.saddr, iph.daddr, 0, 0);
		return WEFT_TCX_DROP;
	}
	if (iph.protocol != IPPROTO_TCP || !pod)
		return WEFT_TCX_NEXT;
	if (iph.frag_off & bpf_htons(WEFT_IP_MF | WEFT_IP_OFFSET)) {
		/* A PERMISSIVE pod's fragments are reassembled by its stack and meet weft_lookup whole. */
		if (pod->mode != WEFT_MODE_STRICT && !(pod->flags & WEFT_POD_F_STRICT_PORT))
			return WEFT_TCX_NEXT;
		weft_refused(WEFT_C_FRAGMENT_DROPPED, pod->netns_cookie, iph.saddr, iph.daddr, 0, 0);
		weft_pod_count(pod->netns_cookie, WEFT_PC_FRAGMENT_DROPPED);
		return WEFT_TCX_DROP;
	}
	ihl = iph.ihl;
	if (ihl < 5 || bpf_skb_load_bytes(skb, ETH_HLEN + ihl * 4, &th, sizeof(th))) {
		weft_refused(WEFT_C_HEADER_UNREADABLE, pod->netns_cookie, iph.saddr, iph.daddr, 0, 0);
		return WEFT_TCX_DROP;
	}
	if (!th.syn || th.ack)
		return WEFT_TCX_NEXT;
	dport = bpf_ntohs(th.dest);
	sport = bpf_ntohs(th.source);
	if (weft_is_probe_tuple(iph.daddr, iph.saddr, dport, sport)) {
		weft_count(WEFT_C_PROBE_ALLOWED);
		weft_pod_count(pod->netns_cookie, WEFT_PC_PROBE_ALLOWED);
		return WEFT_TCX_NEXT;
	}
	if (bpf_map_lookup_elem(&weft_inbound_excluded, &dport)) {
		weft_count(WEFT_C_INBOUND_EXCLUDED);
		return WEFT_TCX_NEXT;
	}
	mode = weft_port_mode(pod, iph.daddr, dport);
	if (mode != WEFT_MODE_STRICT) {
		weft_count(WEFT_C_PERMISSIVE_PLAINTEXT);
		weft_pod_count(pod->netns_cookie, WEFT_PC_PERMISSIVE_PLAINTEXT);
		return WEFT_TCX_NEXT;
	}

	weft_refused(WEFT_C_STRICT_DENIED, pod->netns_cookie, iph.saddr, iph.daddr, sport, dport);
	weft_pod_count(pod->netns_cookie, WEFT_PC_STRICT_DENIED);
	/* weft_refuse rewrites at fixed offsets: only the common 20-byte IP header is answered with a
	 * RST, a SYN behind IP options is dropped instead. */
	if (ihl != 5)
		return WEFT_TCX_DROP;
	/* The whole header linear, so the options can be summed in place. */
	hdr_end = WEFT_TCP_OFF + (__u32)th.doff * 4;
	if (hdr_end > skb->len || bpf_skb_pull_data(skb, hdr_end))
		return WEFT_TCX_DROP;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > end)
		return WEFT_TCX_DROP;

	__builtin_memcpy(s.eth_dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(s.eth_src, eth->h_source, ETH_ALEN);
	s.saddr = ip->saddr;
	s.daddr = ip->daddr;
	s.tot_len = ip->tot_len;
	s.sport = tcp->source;
	s.dport = tcp->dest;
	s.seq = tcp->seq;
	s.ack_seq = tcp->ack_seq;
	s.flag_word = *(__be16 *)((__u8 *)tcp + 12);
	s.window = tcp->window;
	s.urg_ptr = tcp->urg_ptr;
	tcp_len = (__u32)bpf_ntohs(ip->tot_len) - sizeof(struct iphdr);
	s.opt_len = (__u32)tcp->doff * 4 - sizeof(struct tcphdr);
	/* A SYN carrying data (TCP Fast Open) or a malformed header is dropped, not answered. */
	if (tcp->doff < 5 || tcp_len != (__u32)tcp->doff * 4)
		return WEFT_TCX_DROP;
#pragma unroll
	for (int i = 0; i < WEFT_TCP_MAX_OPT_WORDS; i++) {
		__be32 *w = (__be32 *)((__u8 *)(tcp + 1) + i * 4);

		if ((__u32)i * 4 >= s.opt_len)
			break;
		if ((void *)(w + 1) > end)
			return WEFT_TCX_DROP;
		s.opt_csum = bpf_csum_diff(w, 4, 0, 0, s.opt_csum);
	}
	return weft_refuse(skb, &s);
}

#endif /* WEFT_INBOUND_H */
