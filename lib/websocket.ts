// What an HTTP/1.1 request's Upgrade asks for, for every server that takes one (the waypoint proxies
// a WebSocket handshake and refuses any other upgrade; the sample echo app answers the handshake).
import type http from 'node:http';

/** An upgrade a server took (upgradeOf): a WebSocket handshake, or another it refuses. */
export type UpgradeKind = 'websocket' | 'other';

/**
 * The upgrade `req` asks for:
 * - `websocket`: a WebSocket opening handshake (RFC 6455 section 4.1), a GET whose Upgrade field is
 *   `websocket` (case-insensitive), the whole value, as Envoy matches an Upgrade against its
 *   upgrade_configs: a list that also names another protocol (`websocket, h2c`) leaves the server
 *   free to switch to that one instead;
 * - `other`: an Upgrade to anything else (such a list included), which a server that does not speak
 *   it should take as an upgrade all the same, so that node stops reading the connection after the
 *   head, and refuse (Envoy: 403 upgrade_failed);
 * - undefined: no upgrade; nor is `h2c` alone (Envoy's codec strips it: an ordinary request), nor
 *   `websocket` on another method than GET.
 * node:http has already checked that Connection lists `upgrade` before it asks.
 */
export function upgradeOf(req: http.IncomingMessage): UpgradeKind | undefined {
  const v = req.headers.upgrade;
  if (typeof v !== 'string') return undefined;
  const value = v.trim().toLowerCase();
  if (value === 'websocket') return req.method === 'GET' ? 'websocket' : undefined;
  return value === 'h2c' ? undefined : 'other';
}
