// Names of the kernel's numeric program, map, link and attach types (include/uapi/linux/bpf.h),
// kept here rather than asked of libbpf 1.1, whose tables stop before tcx, netkit and sockmap links.

const names = (list: readonly string[]) => (n: number): string => list[n] ?? `unknown(${n})`;

export const PROG_TYPES = [
  'unspec', 'socket_filter', 'kprobe', 'sched_cls', 'sched_act', 'tracepoint', 'xdp', 'perf_event',
  'cgroup_skb', 'cgroup_sock', 'lwt_in', 'lwt_out', 'lwt_xmit', 'sock_ops', 'sk_skb', 'cgroup_device',
  'sk_msg', 'raw_tracepoint', 'cgroup_sock_addr', 'lwt_seg6local', 'lirc_mode2', 'sk_reuseport',
  'flow_dissector', 'cgroup_sysctl', 'raw_tracepoint_writable', 'cgroup_sockopt', 'tracing', 'struct_ops',
  'ext', 'lsm', 'sk_lookup', 'syscall', 'netfilter',
] as const;

export const MAP_TYPES = [
  'unspec', 'hash', 'array', 'prog_array', 'perf_event_array', 'percpu_hash', 'percpu_array', 'stack_trace',
  'cgroup_array', 'lru_hash', 'lru_percpu_hash', 'lpm_trie', 'array_of_maps', 'hash_of_maps', 'devmap',
  'sockmap', 'cpumap', 'xskmap', 'sockhash', 'cgroup_storage', 'reuseport_sockarray', 'percpu_cgroup_storage',
  'queue', 'stack', 'sk_storage', 'devmap_hash', 'struct_ops', 'ringbuf', 'inode_storage', 'task_storage',
  'bloom_filter', 'user_ringbuf', 'cgrp_storage', 'arena',
] as const;

export const LINK_TYPES = [
  'unspec', 'raw_tracepoint', 'tracing', 'cgroup', 'iter', 'netns', 'xdp', 'perf_event', 'kprobe_multi',
  'struct_ops', 'netfilter', 'tcx', 'uprobe_multi', 'netkit', 'sockmap',
] as const;

/**
 * enum bpf_attach_type, by value. The cgroup ones carry the short names of CgroupAttachType
 * ('connect4', 'ingress', ...).
 */
export const ATTACH_TYPES = [
  'ingress', 'egress', 'sock_create', 'sockops', 'sk_skb_stream_parser', 'sk_skb_stream_verdict',
  'cgroup_device', 'sk_msg_verdict', 'bind4', 'bind6', 'connect4', 'connect6', 'post_bind4', 'post_bind6',
  'sendmsg4', 'sendmsg6', 'lirc_mode2', 'flow_dissector', 'sysctl', 'recvmsg4', 'recvmsg6', 'getsockopt',
  'setsockopt', 'trace_raw_tp', 'trace_fentry', 'trace_fexit', 'modify_return', 'lsm_mac', 'trace_iter',
  'getpeername4', 'getpeername6', 'getsockname4', 'getsockname6', 'xdp_devmap', 'sock_release', 'xdp_cpumap',
  'sk_lookup', 'xdp', 'sk_skb_verdict', 'sk_reuseport_select', 'sk_reuseport_select_or_migrate', 'perf_event',
  'trace_kprobe_multi', 'lsm_cgroup', 'struct_ops', 'netfilter', 'tcx_ingress', 'tcx_egress',
  'trace_uprobe_multi', 'unix_connect', 'unix_sendmsg', 'unix_recvmsg', 'unix_getpeername', 'unix_getsockname',
  'netkit_primary', 'netkit_peer',
] as const;

export type AttachTypeName = (typeof ATTACH_TYPES)[number];

export const progTypeName = names(PROG_TYPES);
export const mapTypeName = names(MAP_TYPES);
export const linkTypeName = names(LINK_TYPES);
export const attachTypeName = names(ATTACH_TYPES);

export function attachTypeNumber(name: AttachTypeName): number {
  return ATTACH_TYPES.indexOf(name);
}

/** Map types whose values are one slot per possible CPU, each rounded up to 8 bytes. */
export const PERCPU_MAP_TYPES: ReadonlySet<string> = new Set([
  'percpu_hash', 'percpu_array', 'lru_percpu_hash', 'percpu_cgroup_storage',
]);

export const BPF_F = {
  any: 0,
  noexist: 1,
  exist: 2,
  lock: 4,
} as const;
