// Raw HTTP/2 frames (RFC 9113 section 4.1) and HPACK literals (RFC 7541 section 6.2.2) for tests that
// play a peer a real client library would not be: one that ignores limits, floods, or stalls.

/** The client connection preface (RFC 9113 section 3.4). */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** Frame types and flags used by the tests. */
export const H2 = { DATA: 0x0, HEADERS: 0x1, RST_STREAM: 0x3, SETTINGS: 0x4, GOAWAY: 0x7, CONTINUATION: 0x9, END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

/** One frame; `declaredLength` lets a test lie about the payload's length. */
export function h2Frame(type: number, flags: number, stream: number, payload: Buffer, declaredLength = payload.length): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(declaredLength, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK literal header field without indexing, new name, no Huffman; a name under 127 bytes, a value of any length. */
export function hpackLiteral(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0x00, name.length]), Buffer.from(name), hpackLength(Buffer.byteLength(value)), Buffer.from(value)]);
}

/** A string length as an HPACK integer with a 7-bit prefix, Huffman bit clear (RFC 7541 section 5.1). */
function hpackLength(n: number): Buffer {
  if (n < 127) return Buffer.from([n]);
  const out = [127];
  for (n -= 127; n >= 128; n = Math.floor(n / 128)) out.push((n % 128) | 0x80);
  out.push(n);
  return Buffer.from(out);
}

/** The complete frames in `buf`, in order (a partial frame at the end is left out). */
export function parseH2Frames(buf: Buffer): Array<{ type: number; flags: number; stream: number; payload: Buffer }> {
  const out: Array<{ type: number; flags: number; stream: number; payload: Buffer }> = [];
  for (let i = 0; i + 9 <= buf.length;) {
    const len = buf.readUIntBE(i, 3);
    if (i + 9 + len > buf.length) break;
    out.push({ type: buf[i + 3]!, flags: buf[i + 4]!, stream: buf.readUInt32BE(i + 5) & 0x7fffffff, payload: buf.subarray(i + 9, i + 9 + len) });
    i += 9 + len;
  }
  return out;
}
