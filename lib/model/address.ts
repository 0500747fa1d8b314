// IP addresses as the mesh takes them from its objects, its remotes and its flags: one check of
// what may be an address (ipProblem: one, written in its one spelling), that spelling, to compare
// them in (canonicalIp), and the addresses no Service, endpoint, node or waypoint may have
// (isServiceAddress).
import { BlockList, isIP } from 'node:net';

/**
 * Why `s` is not an IP address at all, undefined when it is one in some spelling: not one net.isIP
 * takes, or an IPv6 address with a zone (`fe80::1%eth0`, `::1%lo`, RFC 4007 11.2), which net.isIP
 * admits: a zone names an interface of one host, not an address another host can reach; the
 * Kubernetes API server refuses one (netutils.ParseIPSloppy), the URL parser throws on it and the
 * agent's BPF codec would drop it. What a value that is matched by prefix (a policy's ipBlocks,
 * lib/policy/keys.ts cidrProblem) must be; an address the mesh compares as a string must also be
 * in its one spelling (ipProblem).
 */
export function addressProblem(s: string, family?: 4 | 6): string | undefined {
  const f = isIP(s);
  if (f === 0) return `${JSON.stringify(s)} is not an ${family ? `IPv${family}` : 'IP'} address`;
  if (s.includes('%')) return `${JSON.stringify(s)} is not an address a mesh object may hold: it has a zone (%${s.slice(s.indexOf('%') + 1)}), which names an interface of one host (RFC 4007 11.2)`;
  return undefined;
}

/**
 * Why `s` is not an IP address a mesh object may hold (of `family`, when given), undefined when it
 * is one. Every check of an address from tenant input (objects of the API server or of a config
 * directory, a remote cluster's export, the config an agent or waypoint is sent) goes through
 * this. The address must be one (addressProblem: a zone is none) and be written in its one
 * spelling (canonicalIp): an IPv6 address lower-case and compressed (RFC 5952 4), an IPv4 address
 * as such, never IPv4-mapped (`::ffff:10.0.0.1`, RFC 4291 2.5.5.2). Every comparison of addresses
 * in the mesh (a Service's cluster IP held twice, an imported VIP in use here, an address's owner)
 * is a string comparison, while the agent's BPF codec writes `FD00::10`, `fd00:0::10` and
 * `fd00::10` to one map key: two spellings of one address would be two addresses to the first and
 * one in the kernel. Kubernetes refuses IPv4-mapped addresses (KEP-4858, StrictIPCIDRValidation)
 * and warns of other non-canonical IPv6 ("should be in RFC 5952 canonical format"), writing the
 * addresses it sets itself canonically; the refusal names the spelling to write.
 */
export function ipProblem(s: string, family?: 4 | 6): string | undefined {
  const bad = addressProblem(s, family);
  if (bad) return bad;
  const c = spelling(s);
  if (c !== s) {
    return isIP(c) === 4
      ? `${JSON.stringify(s)} is an IPv4-mapped IPv6 address (RFC 4291 2.5.5.2): write the IPv4 address ${c}`
      : `${JSON.stringify(s)} is not in RFC 5952 canonical form: write ${c}`;
  }
  if (family !== undefined && isIP(s) !== family) return `${JSON.stringify(s)} is not an IPv${family} address`;
  return undefined;
}

/** Addresses no Service may have: loopback, unspecified, link-local, multicast (a remote naming one would capture this host's own traffic). */
const NOT_SERVICE_ADDRESSES = (() => {
  const b = new BlockList();
  b.addSubnet('0.0.0.0', 8, 'ipv4');
  b.addSubnet('127.0.0.0', 8, 'ipv4');
  b.addSubnet('169.254.0.0', 16, 'ipv4');
  b.addSubnet('224.0.0.0', 3, 'ipv4');
  b.addAddress('::', 'ipv6');
  b.addAddress('::1', 'ipv6');
  b.addSubnet('fe80::', 10, 'ipv6');
  b.addSubnet('ff00::', 8, 'ipv6');
  return b;
})();

/**
 * An IP address in one spelling, so that addresses compare as strings: an IPv4-mapped IPv6 address
 * (`::ffff:10.0.0.1`, `::ffff:a00:1`) as the IPv4 address, an IPv6 address lower-case and
 * compressed (RFC 5952, as the WHATWG URL parser writes it), an IPv4 address unchanged. Undefined
 * for anything addressProblem refuses, an IPv6 address with a zone (`fe80::1%eth0`) too: the URL
 * parser throws on one. Never throws. Tenant input must already be in this spelling (ipProblem);
 * this reads what the mesh did not write (a socket's peer address, a waypoint's status).
 */
export function canonicalIp(ip: string): string | undefined {
  return addressProblem(ip) === undefined ? spelling(ip) : undefined;
}

/** canonicalIp of an address addressProblem takes. */
function spelling(ip: string): string {
  if (isIP(ip) === 4 || plainlyCanonicalV6(ip)) return ip;
  const v6 = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
  if (!mapped) return v6;
  const [hi, lo] = [parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/**
 * Whether an IPv6 address addressProblem takes is already in spelling's form, decided without the
 * URL parse (which costs about as much again as the rest of ipProblem, for every IPv6 address of
 * every config an agent is sent): lower-case hex groups without leading zeros and no embedded IPv4,
 * and either `::` standing for the only zero groups, two or more of them (RFC 5952 4.2.2), or eight
 * groups with no two zero groups side by side (4.2.1: a longer run must be compressed). Then the
 * WHATWG serializer writes it unchanged: its zero groups are the ones written, its longest run of
 * two or more the one compressed. `::ffff:` (maybe IPv4-mapped) and any other string this does not
 * decide are left to the parse: false says "not known", not "not canonical".
 */
function plainlyCanonicalV6(ip: string): boolean {
  if (ip.startsWith('::ffff:')) return false;
  // One pass, no allocation: the parse is what this saves. net.isIP took it, so an empty group is
  // part of the one `::`.
  let groups = 0, zeros = 0, len = 0, zero = false, lastZero = false, adjacentZeros = false, gap = false;
  for (let i = 0; i <= ip.length; i++) {
    const c = i < ip.length ? ip.charCodeAt(i) : 58;
    if (c !== 58) {
      if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false; // upper-case, '.', '%'
      if (len === 1 && zero) return false; // a leading zero
      if (len === 0) zero = c === 48;
      len++;
      continue;
    }
    if (len === 0) {
      gap = true;
      lastZero = false;
      continue;
    }
    if (zero) {
      if (lastZero) adjacentZeros = true;
      zeros++;
    }
    lastZero = zero;
    groups++;
    len = 0;
  }
  return gap ? groups <= 6 && zeros === 0 : groups === 8 && !adjacentZeros;
}

/** Whether `ip` is an address a Service, endpoint, node, waypoint or gateway may have (ipProblem none, and not one of NOT_SERVICE_ADDRESSES). */
export function isServiceAddress(ip: string): boolean {
  const family = isIP(ip);
  return family !== 0 && ipProblem(ip) === undefined && !NOT_SERVICE_ADDRESSES.check(ip, family === 4 ? 'ipv4' : 'ipv6');
}

