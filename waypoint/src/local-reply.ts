// Replies the waypoint makes itself (denials, limits, errors). gRPC callers get a gRPC status in
// trailers (HTTP 200) as Envoy does, so their client libraries report a proper status code.
import type http from 'node:http';
import type http2 from 'node:http2';
import { FLAGS_HEADER } from './flags.ts';

export type DownstreamResponse = http.ServerResponse | http2.Http2ServerResponse;

/** writeHead on either kind of response (their overloads do not unify). */
export function writeHead(res: DownstreamResponse, status: number, headers: http.OutgoingHttpHeaders): void {
  if ('stream' in res) res.writeHead(status, headers);
  else res.writeHead(status, headers);
}

export function endResponse(res: DownstreamResponse, body?: string): void {
  if ('stream' in res) {
    if (body === undefined) res.end();
    else res.end(body);
  } else if (body === undefined) res.end();
  else res.end(body);
}

/** gRPC's UNKNOWN status: what a `grpc-status` that names none of gRPC's codes is reported as. */
export const GRPC_UNKNOWN = 2;
/** The highest of gRPC's status codes (UNAUTHENTICATED): https://grpc.github.io/grpc/core/md_doc_statuscodes.html */
export const GRPC_MAX_STATUS = 16;

/**
 * The code a `grpc-status` value names (`1*DIGIT`, grpc/doc/PROTOCOL-HTTP2.md) when it is one of
 * gRPC's, 0..16; undefined for any other value (the caller reports UNKNOWN, as grpc-java's
 * Status.fromCodeValue does): an upstream chooses the value, and it becomes a metric label.
 */
export function grpcStatusCode(value: string): number | undefined {
  if (!/^[0-9]+$/.test(value)) return undefined;
  const code = Number(value);
  return code <= GRPC_MAX_STATUS ? code : undefined;
}

/** HTTP status → gRPC status (grpc/doc/http-grpc-status-mapping.md). */
export function grpcStatusForHttp(status: number): number {
  switch (status) {
    case 400: return 13; // INTERNAL
    case 401: return 16; // UNAUTHENTICATED
    case 403: return 7; // PERMISSION_DENIED
    case 404: return 12; // UNIMPLEMENTED
    case 429: case 502: case 503: case 504: return 14; // UNAVAILABLE
    default: return 2; // UNKNOWN
  }
}

export interface LocalReply {
  status: number;
  body: string;
  flags: string;
  headers?: Record<string, string>;
  /** The gRPC status for a gRPC caller, where the Gateway API names one (else from `status`). */
  grpcStatus?: number;
}

/** Sends a local reply; returns the bytes of body written and the gRPC status when one was used. */
export function sendLocalReply(res: DownstreamResponse, reply: LocalReply, grpc: boolean): { bytes: number; grpcStatus?: string } {
  const headers: Record<string, string> = { ...reply.headers };
  if (reply.flags !== '-') headers[FLAGS_HEADER] = reply.flags;
  if (res.headersSent) {
    res.destroy();
    return { bytes: 0 };
  }
  if (grpc && 'stream' in res) {
    const code = reply.grpcStatus ?? grpcStatusForHttp(reply.status);
    writeHead(res, 200, { ...headers, 'content-type': 'application/grpc' });
    res.addTrailers({ 'grpc-status': String(code), 'grpc-message': grpcPercentEncode(reply.body.trim()) });
    res.end();
    return { bytes: 0, grpcStatus: String(code) };
  }
  // An empty body stays empty (a CORS preflight answer); any other ends with a newline.
  const body = reply.body === '' || reply.body.endsWith('\n') ? reply.body : `${reply.body}\n`;
  if (body !== '') headers['content-type'] = 'text/plain; charset=utf-8';
  headers['content-length'] = String(Buffer.byteLength(body));
  writeHead(res, reply.status, headers);
  endResponse(res, body);
  return { bytes: Buffer.byteLength(body) };
}

/** gRPC's percent-encoding of grpc-message: bytes outside 0x20-0x7E, and '%', become %XX. */
export function grpcPercentEncode(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
