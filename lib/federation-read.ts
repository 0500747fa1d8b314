// One read of a cluster's federation export (lib/model/federation.ts) over mutual TLS: by the
// other clusters' controllers (controller/src/federation.ts, polled remotes) and by the cluster's
// own east-west gateway (eastwest/src/gateway.ts). Bounded, whoever answers: the peer must
// present the identity the caller expects, stay silent at most `idleMs` at a time, send the whole
// export within `deadlineMs` (one that answers a byte at a time fails here) and no more than
// `maxBytes`.
import { request } from 'node:https';
import type { ClientRequest } from 'node:http';
import { spiffeIdFromCert } from './hbone/peer.ts';
import { FEDERATION_PATH } from './model/federation.ts';

/** The peer may stay silent this long at a time. */
export const EXPORT_READ_IDLE_MS = 2_000;
/** A whole export must be read within this. */
export const DEFAULT_EXPORT_READ_DEADLINE_MS = 10_000;
/** An export larger than this is refused. */
export const MAX_EXPORT_BYTES = 16 * 1024 * 1024;

export interface ExportReadOptions {
  /** This side's identity and the trust bundle. */
  tls: { key: string; cert: string; ca: readonly string[] };
  /** Whether the peer's SPIFFE ID is the one expected: undefined if so, else the error to fail with. */
  checkPeer: (spiffeId: string | undefined) => Error | undefined;
  deadlineMs?: number;
  maxBytes?: number;
}

/** Reads the export at `base` (`https://<ip>:<port>`); resolves with its text, rejects naming what went wrong. */
export function readExport(base: string, o: ExportReadOptions): Promise<string> {
  const url = new URL(FEDERATION_PATH, base);
  const deadlineMs = o.deadlineMs ?? DEFAULT_EXPORT_READ_DEADLINE_MS;
  const maxBytes = o.maxBytes ?? MAX_EXPORT_BYTES;
  let req: ClientRequest | undefined;
  const deadline = setTimeout(() => req?.destroy(new Error(`no complete export within ${deadlineMs} ms`)), deadlineMs);
  deadline.unref();
  return new Promise<string>((resolve, reject) => {
    req = request({
      host: url.hostname, port: Number(url.port), path: url.pathname, method: 'GET',
      key: o.tls.key, cert: o.tls.cert, ca: [...o.tls.ca], minVersion: 'TLSv1.3', agent: false,
      timeout: EXPORT_READ_IDLE_MS,
      checkServerIdentity: (_host, cert) => o.checkPeer(spiffeIdFromCert(cert)),
    }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > maxBytes) req!.destroy(new Error(`export larger than ${maxBytes} bytes`));
        else chunks.push(c);
      });
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode}: ${body.trim().slice(0, 200)}`));
        else resolve(body);
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req!.destroy(new Error(`no answer within ${EXPORT_READ_IDLE_MS} ms`)));
    req.on('error', reject);
    req.end();
  }).finally(() => clearTimeout(deadline));
}
