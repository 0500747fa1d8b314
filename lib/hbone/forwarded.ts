// The `forwarded` request header of an HBONE CONNECT (RFC 7239): the source says which client it
// carries, as `for="<ip>:<port>"`. Parsed strictly: a value the grammar does not allow is no
// address at all, so a sloppy or hostile header can never be half-read into one.
//
// Who the client of an inbound HBONE tunnel is. The TCP peer of port 15008 is the source's agent
// (its node address) or a waypoint, never the application, so the source says which client it
// carries in `forwarded: for="ip:port"`. That is a claim, and policy (`ipBlocks`) and the server's
// accept() rest on it, so it is honoured only where the peer is entitled to make it:
//
//  - a waypoint that serves the destination (identity AND address of one of its replicas) speaks
//    for anyone: its clients reached it over HBONE of their own (Istio ztunnel honoured Forwarded
//    only from the destination's waypoint, `check_from_waypoint`, for the same reason);
//  - anyone else speaks only for itself: the address must belong to a workload whose identity is
//    the peer certificate's and whose node address is the TCP peer's (what its agent would send).
//
// Otherwise the claim is ignored, counted and logged, and the client is the TCP peer itself.
// Agents (agent/src/inbound.ts) and waypoints (waypoint/src/hbone.ts) both decide with tunnelClient.
//
// A waypoint also names the caller it carries by identity, in `x-forwarded-client-cert` (Envoy's
// XFCC: `By` the proxy, `URI` the SPIFFE ID of the client certificate it verified). That claim
// can only ever refuse more: the destination agent judges its DENY policies against the caller as
// well as against the peer, and nothing else (ALLOW, telemetry, the server's view) rests on it.
// So it needs no entitlement check, and it still holds where the peer cannot be placed by
// address (a waypoint in another cluster, whose tunnels arrive through an east-west gateway).
import { isIPv4, isIPv6 } from 'node:net';
import type { Waypoint, Workload } from '../model/mesh.ts';

/** A `for=` node that names an address (not `unknown` or an obfuscated identifier). */
export interface ForwardedNode {
  ip: string;
  /** Absent when the node has no port (or an obfuscated one). */
  port: number | undefined;
}

/** RFC 7230 tchar: what a token (a parameter name or an unquoted value) may hold. */
const TCHAR = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * The elements of a Forwarded header, each a map of lower-case parameter names to values (quotes
 * and escapes removed). undefined when the header does not follow RFC 7239 section 4: a bad token,
 * an unterminated quoted string, a pair without `=`, or a parameter twice in one element.
 */
export function parseForwarded(value: string): Array<Record<string, string>> | undefined {
  const elements: Array<Record<string, string>> = [];
  let element: Record<string, string> = {};
  let i = 0;
  const n = value.length;
  const skipSpace = (): void => { while (i < n && (value[i] === ' ' || value[i] === '\t')) i++; };
  for (;;) {
    skipSpace();
    // An empty pair (";;" or a leading/trailing ";") and empty list members are allowed.
    if (i < n && value[i] !== ',' && value[i] !== ';') {
      const eq = value.indexOf('=', i);
      if (eq < 0) return undefined;
      const name = value.slice(i, eq).toLowerCase();
      if (!TCHAR.test(name)) return undefined;
      i = eq + 1;
      let v: string;
      if (value[i] === '"') {
        v = '';
        i++;
        for (;;) {
          if (i >= n) return undefined;
          const c = value[i]!;
          if (c === '"') { i++; break; }
          if (c === '\\') {
            if (i + 1 >= n) return undefined;
            v += value[i + 1];
            i += 2;
            continue;
          }
          v += c;
          i++;
        }
      } else {
        const start = i;
        while (i < n && value[i] !== ';' && value[i] !== ',' && value[i] !== ' ' && value[i] !== '\t') i++;
        v = value.slice(start, i);
        if (!TCHAR.test(v)) return undefined;
      }
      if (Object.hasOwn(element, name)) return undefined;
      element[name] = v;
      skipSpace();
    }
    if (i >= n) break;
    if (value[i] === ';') { i++; continue; }
    if (value[i] === ',') {
      i++;
      if (Object.keys(element).length > 0) elements.push(element);
      element = {};
      continue;
    }
    return undefined;
  }
  if (Object.keys(element).length > 0) elements.push(element);
  return elements;
}

/**
 * A `for=` node value (RFC 7239 section 6) as an address: `192.0.2.1`, `192.0.2.1:4711`,
 * `[2001:db8::1]`, `[2001:db8::1]:4711`. undefined for `unknown`, obfuscated identifiers and
 * anything malformed.
 */
export function parseForwardedNode(node: string): ForwardedNode | undefined {
  let host: string;
  let rest: string;
  if (node.startsWith('[')) {
    const close = node.indexOf(']');
    if (close < 0) return undefined;
    host = node.slice(1, close);
    if (!isIPv6(host)) return undefined;
    rest = node.slice(close + 1);
  } else {
    const colon = node.indexOf(':');
    host = colon < 0 ? node : node.slice(0, colon);
    if (!isIPv4(host)) return undefined;
    rest = colon < 0 ? '' : node.slice(colon);
  }
  if (rest === '') return { ip: host, port: undefined };
  if (/^:_[A-Za-z0-9._-]+$/.test(rest)) return { ip: host, port: undefined }; // obfuscated port
  const m = /^:(\d{1,5})$/.exec(rest);
  if (!m) return undefined;
  const port = Number(m[1]);
  if (port < 1 || port > 65535) return undefined;
  return { ip: host, port };
}

/**
 * The client a Forwarded header names: the `for=` of its LAST element, the one the sender (our
 * peer) added itself; earlier elements are claims the peer only relayed. undefined when the
 * header is absent, malformed, or its last element names no address.
 */
export function forwardedFor(value: string | undefined): ForwardedNode | undefined {
  if (value === undefined || value === '') return undefined;
  const elements = parseForwarded(value);
  const last = elements?.[elements.length - 1];
  const node = last?.['for'];
  return node === undefined ? undefined : parseForwardedNode(node);
}

/** `for="192.0.2.1:4711"` / `for="[2001:db8::1]:4711"`: the port forces the quotes (RFC 7239 section 6). */
export function formatForwardedFor(ip: string, port?: number): string {
  const host = isIPv6(ip) ? `[${ip}]` : ip;
  return port ? `for="${host}:${port}"` : isIPv6(ip) ? `for="${host}"` : `for=${host}`;
}

/** `::ffff:10.0.0.1` (what a dual-stack socket reports) -> `10.0.0.1`; anything else unchanged. */
export function unmapV4(addr: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  return m ? m[1]! : addr;
}

/** Why a `for=` was not honoured (stable strings: metric labels). */
export type ForwardedIgnoredReason =
  /** A forwarded header that names no address under RFC 7239 (or `unknown`, obfuscated). */
  | 'malformed'
  /** No workload or endpoint of the mesh has that address. */
  | 'unknown-address'
  /** The address belongs to a workload of another identity than the peer's. */
  | 'identity-mismatch'
  /** The peer's identity, but the workload runs on another node than the one the tunnel came from. */
  | 'node-mismatch';

export interface TunnelClient {
  ip: string;
  /** 0 when the peer did not say (the agent then lets the kernel report its own source port). */
  port: number;
  /** `forwarded`: the peer's `for=` was honoured; `peer`: the TCP peer itself. */
  source: 'forwarded' | 'peer';
  /** Set when a `for=` was present and not honoured. */
  ignored?: { reason: ForwardedIgnoredReason; claimed: string };
}

/** What the decision needs from the receiver's view of the mesh (the agent's AgentState, the waypoint's snapshot). */
export interface ForwardedView<D = Workload> {
  addressOwner(ip: string): { spiffeId?: string | undefined; nodeIp?: string | undefined } | undefined;
  /** The waypoints entitled to speak for anyone to `dest` (none where the receiver is a waypoint itself). */
  waypointsServing(dest: D): readonly Waypoint[];
}

/** Is the peer (identity and address) a replica of a waypoint that serves `dest`? */
export function isServingWaypoint<D>(view: ForwardedView<D>, dest: D, spiffeId: string | undefined, address: string): boolean {
  if (!spiffeId) return false;
  return view.waypointsServing(dest).some((wp) =>
    wp.spiffeId === spiffeId && (wp.address === address || (wp.addresses ?? []).includes(address)));
}

/** The client of a tunnel to `dest`, from the peer and its `for=` claim (see the top of this file). */
export function tunnelClient<D>(
  view: ForwardedView<D>,
  dest: D,
  req: { peer: { spiffeId: string | undefined; address: string; port: number }; forwardedFor: ForwardedNode | undefined; headers: Record<string, string> },
): TunnelClient {
  const peerIp = unmapV4(req.peer.address);
  const peer: TunnelClient = { ip: peerIp, port: req.peer.port, source: 'peer' };
  const claim = req.forwardedFor;
  const raw = req.headers['forwarded'];
  if (!claim) {
    return raw === undefined ? peer : { ...peer, ignored: { reason: 'malformed', claimed: raw.slice(0, 200) } };
  }
  const honoured: TunnelClient = { ip: unmapV4(claim.ip), port: claim.port ?? 0, source: 'forwarded' };
  if (isServingWaypoint(view, dest, req.peer.spiffeId, peerIp)) return honoured;
  const claimed = claim.port ? `${claim.ip}:${claim.port}` : claim.ip;
  const owner = view.addressOwner(honoured.ip);
  if (!owner) return { ...peer, ignored: { reason: 'unknown-address', claimed } };
  if (owner.spiffeId === undefined || owner.spiffeId !== req.peer.spiffeId) return { ...peer, ignored: { reason: 'identity-mismatch', claimed } };
  if (owner.nodeIp === undefined || unmapV4(owner.nodeIp) !== peerIp) return { ...peer, ignored: { reason: 'node-mismatch', claimed } };
  return honoured;
}

/** HBONE CONNECT header in which a waypoint names the caller it carries (Envoy's x-forwarded-client-cert). */
export const CALLER_HEADER = 'x-forwarded-client-cert';

/** `By="<proxy>";URI="<caller>"`: values always quoted, so the RFC 7239 grammar reads them back. */
export function formatCaller(by: string, caller: string): string {
  const q = (v: string) => `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  return `By=${q(by)};URI=${q(caller)}`;
}

/**
 * The caller an x-forwarded-client-cert value names: the `URI` of its last element (the one our
 * peer added), when it is a SPIFFE ID; undefined when absent or malformed.
 */
export function callerOf(value: string | undefined): string | undefined {
  if (value === undefined || value === '' || value.length > 4096) return undefined;
  const elements = parseForwarded(value);
  const uri = elements?.[elements.length - 1]?.['uri'];
  return uri !== undefined && /^spiffe:\/\/[^\s"\\,;]+$/.test(uri) && uri.length <= 2048 ? uri : undefined;
}
