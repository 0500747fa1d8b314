// Double HBONE (Istio's multi-network data path): the caller's tunnel to a workload on another
// network runs *inside* an outer HBONE tunnel to that network's east-west gateway. The gateway
// terminates only the outer TLS, reads the outer CONNECT's authority (the endpoint), and pipes the
// inner bytes to the endpoint's node agent: it never sees the workload's plaintext, and the
// destination agent authenticates the caller's own certificate and applies its own policy.
//
// The outer tunnel comes from the pool (one session per caller identity and gateway); the inner
// one is a TLS 1.3 + HTTP/2 session of its own over that stream, closed with its one CONNECT.
import { connect as h2connect, constants as h2, type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { HboneConnectTimeoutError, HbonePeerIdentityError, HboneRefusedError, HboneSessionError, HboneStreamError } from './errors.ts';
import { checkPeer, spiffeIdFromCert, type ExpectedPeer } from './peer.ts';
import type { ClientTlsMaterial } from './pool.ts';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_STREAM_WINDOW, HBONE_REASON_HEADER, MAX_HEADER_LIST_SIZE } from './tuning.ts';

export interface InnerTunnelOptions {
  /** The outer tunnel (an open HBONE stream to the gateway). Closed with the inner tunnel. */
  outer: Duplex;
  /** The caller's TLS material; `servername` names the destination identity (lib/hbone/sni.ts). */
  tls: ClientTlsMaterial;
  /** For messages: the destination agent the inner session ends at (`ip:15008`). */
  dest: string;
  /** CONNECT target (`ip:port` of the workload). */
  target: string;
  expectPeer: ExpectedPeer;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

/**
 * Opens the inner HBONE tunnel over `outer`: TLS with the caller's certificate, the destination
 * agent's identity checked, HTTP/2 CONNECT to `target`. Resolves with the CONNECT stream once the
 * destination answered 200; rejects with the pool's error kinds (HboneRefusedError for a 403).
 */
export function connectInner(o: InnerTunnelOptions): Promise<ClientHttp2Stream> {
  const timeoutMs = o.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  let identityError: HbonePeerIdentityError | undefined;
  const socket = tlsConnect({
    socket: o.outer,
    key: o.tls.key,
    cert: o.tls.cert,
    ca: o.tls.ca,
    ...(o.tls.servername ? { servername: o.tls.servername } : {}),
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ALPNProtocols: ['h2'],
    rejectUnauthorized: true,
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      const reason = checkPeer(o.expectPeer, cert);
      if (reason === undefined) return undefined;
      identityError = new HbonePeerIdentityError(o.dest, spiffeIdFromCert(cert), reason);
      return identityError;
    },
  });
  const session = h2connect(`https://${o.dest}`, {
    createConnection: () => socket,
    settings: { enablePush: false, initialWindowSize: DEFAULT_STREAM_WINDOW, maxHeaderListSize: MAX_HEADER_LIST_SIZE },
  });
  const end = (): void => {
    if (!session.destroyed) session.destroy();
    o.outer.destroy();
  };
  return new Promise<ClientHttp2Stream>((resolve, reject) => {
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      end();
      reject(err);
    };
    const timer = setTimeout(() => fail(new HboneConnectTimeoutError(o.dest, o.target, timeoutMs)), timeoutMs);
    session.on('error', (err: Error) => fail(identityError ?? new HboneSessionError(o.dest, `inner session: ${err.message}`, err)));
    session.once('close', () => fail(identityError ?? new HboneSessionError(o.dest, 'the inner session closed during setup (the destination refused our certificate, or the gateway closed the outer tunnel)')));
    socket.on('error', (err: Error) => fail(identityError ?? new HboneSessionError(o.dest, `inner TLS: ${err.message}`, err)));
    const headers: OutgoingHttpHeaders = { ':method': 'CONNECT', ':authority': o.target };
    for (const [name, value] of Object.entries(o.headers ?? {})) if (!name.startsWith(':')) headers[name.toLowerCase()] = value;
    let stream: ClientHttp2Stream;
    try {
      stream = session.request(headers, { endStream: false });
    } catch (err) {
      fail(new HboneStreamError(o.dest, o.target, `inner session unusable: ${(err as Error).message}`, undefined, err));
      return;
    }
    stream.once('response', (h: IncomingHttpHeaders) => {
      const status = Number(h[':status']);
      if (status !== 200) {
        const reason = h[HBONE_REASON_HEADER];
        fail(new HboneRefusedError(o.dest, o.target, status, Array.isArray(reason) ? reason.join(', ') : reason ?? ''));
        return;
      }
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // One CONNECT per inner session: the session (and the outer tunnel) end with the stream.
      stream.once('close', () => session.close(() => o.outer.destroy()));
      resolve(stream);
    });
    stream.on('error', (err: Error) => {
      if (!settled) fail(new HboneStreamError(o.dest, o.target, err.message, stream.rstCode, err));
    });
    stream.once('close', () => {
      if (!settled) fail(new HboneStreamError(o.dest, o.target, `inner stream closed with HTTP/2 code ${stream.rstCode ?? h2.NGHTTP2_NO_ERROR}`, stream.rstCode));
    });
  });
}
