// One read of a cluster's federation export (lib/model/federation.ts) over mutual TLS: by the
// other clusters' controllers (controller/src/federation.ts, polled remotes) and by the cluster's
// own east-west gateway (eastwest/src/gateway.ts). Bounded, whoever answers (lib/bounded-get.ts):
// the peer must present the identity the caller expects, stay silent at most `idleMs` at a time,
// send the whole export within `deadlineMs` (one that answers a byte at a time fails here) and no
// more than `maxBytes`.
import { boundedGet } from './bounded-get.ts';
import { spiffeIdFromCert } from './hbone/peer.ts';
import { FEDERATION_PATH, MAX_EXPORT_BYTES } from './model/federation.ts';

/** The peer may stay silent this long at a time. */
export const EXPORT_READ_IDLE_MS = 2_000;
/** A whole export must be read within this. */
export const DEFAULT_EXPORT_READ_DEADLINE_MS = 10_000;

export interface ExportReadOptions {
  /** This side's identity and the trust bundle. */
  tls: { key: string; cert: string; ca: readonly string[] };
  /** Whether the peer's SPIFFE ID is the one expected: undefined if so, else the error to fail with. */
  checkPeer: (spiffeId: string | undefined) => Error | undefined;
  deadlineMs?: number;
  /** Most bytes of the export (MAX_EXPORT_BYTES: the exporter keeps within it, exportSelection). */
  maxBytes?: number;
}

/**
 * Reads the export at `base` (`https://<ip>:<port>`; spoken over TLS whatever its scheme); resolves
 * with the text of its 200 answer, rejects (a BoundedGetError) naming what went wrong, an answer of
 * another status by that status (a 204 is no export), quoting the start of its body (the peer is a
 * controller of the mesh).
 */
export function readExport(base: string, o: ExportReadOptions): Promise<string> {
  const url = new URL(FEDERATION_PATH, base);
  url.protocol = 'https:';
  return boundedGet(url, {
    what: 'export',
    deadlineMs: o.deadlineMs ?? DEFAULT_EXPORT_READ_DEADLINE_MS,
    maxBytes: o.maxBytes ?? MAX_EXPORT_BYTES,
    idleMs: EXPORT_READ_IDLE_MS,
    okStatuses: [200],
    errorBodyChars: 200,
    tls: {
      key: o.tls.key, cert: o.tls.cert, ca: [...o.tls.ca], minVersion: 'TLSv1.3',
      checkServerIdentity: (_host, cert) => o.checkPeer(spiffeIdFromCert(cert)?.uri),
    },
  });
}
