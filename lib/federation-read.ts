// One read of a cluster's federation export (lib/model/federation.ts) over mutual TLS: by the
// other clusters' controllers (controller/src/federation.ts, polled remotes) and by the cluster's
// own east-west gateway (eastwest/src/gateway.ts). Bounded, whoever answers (lib/bounded-get.ts):
// the peer must present the identity the caller expects, stay silent at most `idleMs` at a time,
// send the whole export within `deadlineMs` (one that answers a byte at a time fails here) and no
// more than `maxBytes`.
import { boundedGetAnswer } from './bounded-get.ts';
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
  /** The ETag of the export last read: the exporter answers 304 if it is still its export's (RFC 9110 13.1.2). */
  ifNoneMatch?: string;
}

/**
 * An export read: its text and the ETag it was served with (a strong validator of that text; none
 * from an exporter that sends none), or `unchanged` (a 304 to ifNoneMatch: the export is the one
 * read with that ETag; nothing was transferred).
 */
export type ExportRead = { text: string; etag: string | undefined } | 'unchanged';

/**
 * Reads the export at `base` (`https://<ip>:<port>`; spoken over TLS whatever its scheme); resolves
 * with the text and ETag of its 200 answer, or `unchanged` for a 304 to `ifNoneMatch` (a 304 asked
 * for by nothing is an error); rejects (a BoundedGetError) naming what went wrong, an answer of
 * another status by that status (a 204 is no export), quoting the start of its body (the peer is a
 * controller of the mesh).
 */
export async function readExport(base: string, o: ExportReadOptions): Promise<ExportRead> {
  const url = new URL(FEDERATION_PATH, base);
  url.protocol = 'https:';
  const answer = await boundedGetAnswer(url, {
    what: 'export',
    deadlineMs: o.deadlineMs ?? DEFAULT_EXPORT_READ_DEADLINE_MS,
    maxBytes: o.maxBytes ?? MAX_EXPORT_BYTES,
    idleMs: EXPORT_READ_IDLE_MS,
    okStatuses: o.ifNoneMatch !== undefined ? [200, 304] : [200],
    errorBodyChars: 200,
    ...(o.ifNoneMatch !== undefined ? { headers: { 'if-none-match': o.ifNoneMatch } } : {}),
    tls: {
      key: o.tls.key, cert: o.tls.cert, ca: [...o.tls.ca], minVersion: 'TLSv1.3',
      checkServerIdentity: (_host, cert) => o.checkPeer(spiffeIdFromCert(cert)?.uri),
    },
  });
  if (answer.status === 304) return 'unchanged';
  const etag = answer.headers.etag;
  return { text: answer.text, etag: typeof etag === 'string' && etag !== '' ? etag : undefined };
}
