// HTTP field values as the waypoint holds them: node hands over each byte of a received value
// (HTTP/1.1 or HTTP/2) as one character (latin1), and writes each character of a value it sends as
// one byte. Envoy's matchers compare a field's bytes with the UTF-8 bytes of the configured string
// (StringMatcher on the raw header value; RE2 reads those bytes as UTF-8), so a configured string is
// compared in that form: `José` in a policy is the five characters `J o s 0xC3 0xA9`. ASCII is the
// same in both forms, which keeps the common case free.

import { isUtf8 } from 'node:buffer';

const ASCII = /^[\x00-\x7f]*$/;

/** A configured string in the form a received field value holds its UTF-8 bytes. */
export function fieldBytes(s: string): string {
  return ASCII.test(s) ? s : Buffer.from(s, 'utf8').toString('latin1');
}

/**
 * A character a field value held as bytes (one character a byte) may not hold (RFC 9110 section
 * 5.5: field-vchar is VCHAR or obs-text, SP and HTAB between): a control but HTAB (CR, LF, NUL...),
 * DEL, or anything past U+00FF, which is no byte. node refuses the same set when a header is set.
 */
export const FIELD_BYTES_BAD = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * The first character of a configured value that no field may carry once written as its UTF-8
 * bytes (fieldBytes): a control but HTAB, or DEL. Undefined for none.
 */
export function badFieldChar(configured: string): string | undefined {
  return FIELD_BYTES_BAD.exec(fieldBytes(configured))?.[0];
}

/** A received field value's bytes read as UTF-8, for a regular expression (RE2 reads text). */
export function fieldText(v: string): string {
  return ASCII.test(v) ? v : Buffer.from(v, 'latin1').toString('utf8');
}

/** Whether a received field value's bytes are valid UTF-8 (ASCII is). */
export function fieldIsUtf8(v: string): boolean {
  return ASCII.test(v) || isUtf8(Buffer.from(v, 'latin1'));
}
