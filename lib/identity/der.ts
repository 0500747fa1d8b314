// Minimal DER reading and writing for the parts of X.509 and PKCS#10 Weft builds itself.
//
// node-forge's certificate and CSR code only understands RSA keys, and Weft uses ECDSA P-256
// (key generation in node:crypto takes well under a millisecond; RSA-2048 in forge takes
// hundreds). So certificates and CSRs are assembled here as DER and signed with node:crypto, OIDs
// included (X.690 section 8.19; they were node-forge's last use outside tests, and loading it cost
// every Weft process its whole library: docs/PERFORMANCE.md, agent memory). The reader keeps byte
// offsets so that signed regions (TBSCertificate, CertificationRequestInfo) and embedded structures
// (SubjectPublicKeyInfo, issuer Name) are used byte for byte as received, never re-encoded.

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

export class DerError extends Error {
  readonly code = 'WEFT_DER_MALFORMED';
}

// ---- writing ----

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function tlv(tag: number, content: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), lengthBytes(content.length), content]);
}

export const seq = (...items: Buffer[]): Buffer => tlv(TAG.SEQUENCE, Buffer.concat(items));
export const set = (...items: Buffer[]): Buffer => tlv(TAG.SET, Buffer.concat(items));
export const octets = (b: Buffer): Buffer => tlv(TAG.OCTET_STRING, b);
export const bool = (v: boolean): Buffer => tlv(TAG.BOOLEAN, Buffer.from([v ? 0xff : 0x00]));
export const nul = (): Buffer => tlv(TAG.NULL, Buffer.alloc(0));
export const utf8 = (s: string): Buffer => tlv(TAG.UTF8_STRING, Buffer.from(s, 'utf8'));
/** BIT STRING with no unused bits. */
export const bits = (b: Buffer): Buffer => tlv(TAG.BIT_STRING, Buffer.concat([Buffer.from([0]), b]));
/** Context-specific tag [n]; constructed for EXPLICIT tagging or IMPLICIT SET/SEQUENCE. */
export const ctx = (n: number, constructed: boolean, content: Buffer): Buffer => tlv(0x80 | (constructed ? 0x20 : 0) | n, content);

/** Base-128 digits, most significant first, the high bit set on all but the last (X.690 8.19.2). */
function base128(v: bigint): number[] {
  const out = [Number(v & 0x7fn)];
  for (v >>= 7n; v > 0n; v >>= 7n) out.unshift(Number(v & 0x7fn) | 0x80);
  return out;
}

/** OBJECT IDENTIFIER from its dotted form; the first two arcs share one subidentifier (X.690 8.19.4). */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split('.');
  if (arcs.length < 2 || !arcs.every((a) => /^(0|[1-9][0-9]*)$/.test(a))) throw new DerError(`OID "${dotted}" is not at least two dot-separated decimal arcs`);
  const [first, second, ...rest] = arcs.map(BigInt) as [bigint, bigint, ...bigint[]];
  if (first > 2n || (first < 2n && second > 39n)) throw new DerError(`OID "${dotted}": the first arc is 0, 1 or 2, and under 0 or 1 the second is at most 39`);
  return tlv(TAG.OID, Buffer.from([first * 40n + second, ...rest].flatMap(base128)));
}

/** A non-negative INTEGER from big-endian magnitude bytes (minimal encoding). */
export function uint(magnitude: Buffer): Buffer {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  let b = magnitude.subarray(i);
  if (b.length === 0) b = Buffer.from([0]);
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return tlv(TAG.INTEGER, b);
}

export const smallInt = (n: number): Buffer => uint(Buffer.from([n]));

/** UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5280 4.1.2.5); second precision. */
export function time(d: Date): Buffer {
  const y = d.getUTCFullYear();
  const p = (n: number) => String(n).padStart(2, '0');
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(`${p(y % 100)}${rest}`, 'ascii'));
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(`${String(y).padStart(4, '0')}${rest}`, 'ascii'));
}

// ---- reading ----

export interface DerNode {
  tag: number;
  /** The whole TLV. */
  bytes: Buffer;
  /** The value part. */
  content: Buffer;
}

/** Reads one TLV at `offset`; with `whole`, the TLV must span the rest of the buffer. */
export function readDer(buf: Buffer, offset = 0, whole = true): DerNode {
  if (offset + 2 > buf.length) throw new DerError('truncated DER: no room for a tag and length');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError('multi-byte DER tags are not supported');
  let len = buf[offset + 1]!;
  let header = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new DerError('indefinite or oversized DER length');
    if (offset + 2 + n > buf.length) throw new DerError('truncated DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i]!;
    header += n;
  }
  const end = offset + header + len;
  if (end > buf.length) throw new DerError(`truncated DER: element needs ${len} bytes, ${buf.length - offset - header} remain`);
  if (whole && end !== buf.length) throw new DerError('trailing bytes after DER element');
  return { tag, bytes: buf.subarray(offset, end), content: buf.subarray(offset + header, end) };
}

/** The elements inside a constructed node's content. */
export function children(node: DerNode): DerNode[] {
  const out: DerNode[] = [];
  let off = 0;
  while (off < node.content.length) {
    const child = readDer(node.content, off, false);
    out.push(child);
    off += child.bytes.length;
  }
  return out;
}

export function expectTag(node: DerNode | undefined, tag: number, what: string): DerNode {
  if (!node) throw new DerError(`${what} is missing`);
  if (node.tag !== tag) throw new DerError(`${what} has tag 0x${node.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  return node;
}

export function readOid(node: DerNode): string {
  expectTag(node, TAG.OID, 'OBJECT IDENTIFIER');
  const c = node.content;
  if (c.length === 0) throw new DerError('empty OBJECT IDENTIFIER');
  const subs: bigint[] = [];
  let v = 0n;
  for (let i = 0; i < c.length; i++) {
    const byte = c[i]!;
    // A subidentifier's first octet is never 0x80 (X.690 8.19.2: minimal encoding).
    if (byte === 0x80 && (i === 0 || (c[i - 1]! & 0x80) === 0)) throw new DerError('OBJECT IDENTIFIER subidentifier with a leading 0x80 octet');
    v = (v << 7n) | BigInt(byte & 0x7f);
    if ((byte & 0x80) === 0) {
      subs.push(v);
      v = 0n;
    }
  }
  if ((c[c.length - 1]! & 0x80) !== 0) throw new DerError('truncated OBJECT IDENTIFIER (its last octet continues)');
  const head = subs[0]!;
  const first = head < 40n ? 0n : head < 80n ? 1n : 2n;
  return [first, head - first * 40n, ...subs.slice(1)].join('.');
}

/** The payload of a BIT STRING with no unused bits. */
export function readBits(node: DerNode): Buffer {
  expectTag(node, TAG.BIT_STRING, 'BIT STRING');
  if (node.content[0] !== 0) throw new DerError('BIT STRING with unused bits where whole bytes were expected');
  return node.content.subarray(1);
}

// ---- PEM ----

export function toPem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}-----END ${label}-----\n`;
}

/** All PEM blocks with the given label, in order. */
export function pemBlocks(text: string, label: string): Buffer[] {
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]*?)-----END ${label}-----`, 'g');
  return [...text.matchAll(re)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}
