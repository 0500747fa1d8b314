import { isIPv4, isIPv6 } from 'node:net';
import { HboneAuthorityError } from './errors.ts';

/** A CONNECT target: an IP literal (never a name; the mesh resolves names before tunnelling). */
export interface TunnelTarget {
  host: string;
  port: number;
  family: 4 | 6;
}

const PORT_RE = /^[0-9]{1,5}$/;

/**
 * Parses a CONNECT `:authority` (`10.0.0.1:80`, `[fd00::1]:80`). Throws HboneAuthorityError on host
 * names, missing or out-of-range ports, zone IDs and anything else.
 */
export function parseAuthority(authority: string): TunnelTarget {
  let host: string;
  let portText: string;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0 || authority[close + 1] !== ':') {
      throw new HboneAuthorityError(authority, 'an IPv6 target must look like [addr]:port');
    }
    host = authority.slice(1, close);
    portText = authority.slice(close + 2);
    if (!isIPv6(host) || host.includes('%')) {
      throw new HboneAuthorityError(authority, `${JSON.stringify(host)} is not an IPv6 address`);
    }
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon < 0) throw new HboneAuthorityError(authority, 'the port is missing');
    host = authority.slice(0, colon);
    portText = authority.slice(colon + 1);
    if (!isIPv4(host)) {
      throw new HboneAuthorityError(authority, `${JSON.stringify(host)} is not an IPv4 address ` +
        '(IPv6 targets go in brackets)');
    }
  }
  if (!PORT_RE.test(portText)) throw new HboneAuthorityError(authority, 'the port is not a number');
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new HboneAuthorityError(authority, `port ${port} is out of range`);
  return { host, port, family: isIPv4(host) ? 4 : 6 };
}

/** The `:authority` for an IP and port (brackets IPv6). */
export function formatAuthority(host: string, port: number): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}
