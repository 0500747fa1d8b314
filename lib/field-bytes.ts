// HTTP field values as the waypoint holds them: node hands over each byte of a received value
// (HTTP/1.1 or HTTP/2) as one character (latin1), and writes each character of a value it sends as
// one byte. Envoy's matchers compare a field's bytes with the UTF-8 bytes of the configured string
// (StringMatcher on the raw header value; RE2 reads those bytes as UTF-8), so a configured string is
// compared in that form: `José` in a policy is the five characters `J o s 0xC3 0xA9`. ASCII is the
// same in both forms, which keeps the common case free.

const ASCII = /^[\x00-\x7f]*$/;

/** A configured string in the form a received field value holds its UTF-8 bytes. */
export function fieldBytes(s: string): string {
  return ASCII.test(s) ? s : Buffer.from(s, 'utf8').toString('latin1');
}

/** A received field value's bytes read as UTF-8, for a regular expression (RE2 reads text). */
export function fieldText(v: string): string {
  return ASCII.test(v) ? v : Buffer.from(v, 'latin1').toString('utf8');
}
