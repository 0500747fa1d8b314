// Where separate networks meet (multi-cluster on one machine: `weftctl up --clusters N`, the
// multi-cluster e2e tests, and two kube-lab clusters). The exchange is a bridge in a network
// namespace of its own, 192.168.77.0/24; each network's wire (its edge) joins it with one veth,
// `ew0` = 192.168.77.<index>, where that network offers what others may reach: its east-west
// gateway, and in the local mesh its controller's federation listener (in the kube lab, its API
// server and LoadBalancer Services). Nodes route only the exchange through their wire; each wire
// routes the other networks' node and pod ranges back over the exchange for the answers, and no
// node or pod routes anything else there: a pod reaches another network only through what that
// network offers on its edge.
//
//   <net1 wire>  br0 10.A.0.254 ── ew0 192.168.77.1 ─┐
//                                                    ├─ <exchange> br0
//   <net2 wire>  br0 10.B.0.254 ── ew0 192.168.77.2 ─┘
import { run, runIn } from '../../lib/sys/exec.ts';
import { deleteNetns, listNetns } from '../../lib/sys/netns.ts';
import type { LocalNetwork } from './network.ts';

/** The exchange all networks' edges join. */
export const EXCHANGE_NET = '192.168.77';

/** The exchange's network namespace for a lab prefix (every multi-cluster lab, local or kube). */
export const exchangeNetnsOf = (prefix: string): string => `${prefix}x-xchg`;

/** A network's edge: its wire's address on the exchange. */
export const edgeAddress = (index: number): string => `${EXCHANGE_NET}.${index}`;

/** Creates the exchange's namespace and bridge. */
export function createExchange(netns: string): void {
  run('ip', ['netns', 'add', netns]);
  runIn(netns, 'ip', ['link', 'set', 'lo', 'up']);
  runIn(netns, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
  runIn(netns, 'ip', ['link', 'set', 'br0', 'up']);
}

export function destroyExchange(netns: string): void {
  if (listNetns().includes(netns)) deleteNetns(netns);
}

/**
 * Joins a network's wire to the exchange as `ew0` = its edge address (returned), and routes its
 * nodes' traffic for the exchange (and nothing else) through the wire. Call after its nodes exist.
 */
export function joinExchange(exchangeNetns: string, net: LocalNetwork, index: number): string {
  const wire = net.wireNetns;
  const edge = edgeAddress(index);
  const peer = `x${index}`;
  run('ip', ['link', 'add', 'ew0', 'netns', wire, 'type', 'veth', 'peer', 'name', peer, 'netns', exchangeNetns]);
  runIn(exchangeNetns, 'ip', ['link', 'set', peer, 'master', 'br0', 'up']);
  runIn(wire, 'ip', ['addr', 'add', `${edge}/24`, 'dev', 'ew0']);
  runIn(wire, 'ip', ['link', 'set', 'ew0', 'up']);
  runIn(wire, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  for (const n of net.nodes) runIn(n.netns, 'ip', ['route', 'add', `${EXCHANGE_NET}.0/24`, 'via', `${net.base}.0.254`]);
  return edge;
}

/**
 * Each wire routes the other networks' node range (agents) and pod ranges (waypoints and pods that
 * reach another network's edge from their own address) back over the exchange. Only the wires
 * have these routes.
 */
export function routeBetweenEdges(members: ReadonlyArray<{ net: LocalNetwork; edgeIp: string }>): void {
  for (const m of members) {
    for (const other of members) {
      if (other === m) continue;
      for (const range of [`${other.net.base}.0.0/24`, ...other.net.nodes.map((n) => n.podCidr)]) {
        runIn(m.net.wireNetns, 'ip', ['route', 'add', range, 'via', other.edgeIp]);
      }
    }
  }
}

/** Cuts (or restores) a network's link to the exchange: it is alone until restored. */
export function setEdgeLink(net: LocalNetwork, up: boolean): void {
  runIn(net.wireNetns, 'ip', ['link', 'set', 'ew0', up ? 'up' : 'down']);
}
