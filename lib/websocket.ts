// What makes an HTTP/1.1 request a WebSocket opening handshake, for every server that takes one
// (the waypoint proxies it; the sample echo app answers it).
import type http from 'node:http';

/**
 * RFC 6455 section 4.1: a GET whose Upgrade field is `websocket` (case-insensitive), the whole value,
 * as Envoy matches an Upgrade against its upgrade_configs: a list that also names another protocol
 * (`websocket, h2c`) leaves the server free to switch to that one instead. node:http has already
 * checked that Connection lists `upgrade` before it asks.
 */
export function isWebSocketHandshake(req: http.IncomingMessage): boolean {
  if (req.method !== 'GET') return false;
  const v = req.headers.upgrade;
  return typeof v === 'string' && v.trim().toLowerCase() === 'websocket';
}
