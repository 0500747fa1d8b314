// OBJECT IDENTIFIER encoding and reading (lib/identity/der.ts), X.690 section 8.19, against the
// encodings OpenSSL writes for the OIDs Weft uses and for the rules' edge cases.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DerError, oid, readDer, readOid } from '../../lib/identity/der.ts';
import { OID } from '../../lib/identity/x509.ts';

// Content octets as X.690 gives them (the first two arcs share one subidentifier: 40 * X + Y).
const CASES: ReadonlyArray<[string, string]> = [
  ['1.2.840.10045.4.3.2', '2a8648ce3d040302'], // ecdsa-with-SHA256: 840 = 0x86 0x48
  ['1.2.840.113549.1.1.11', '2a864886f70d01010b'], // sha256WithRSAEncryption
  ['2.5.29.17', '551d11'], // subjectAltName
  ['1.3.6.1.5.5.7.3.1', '2b06010505070301'], // serverAuth
  ['0.0', '00'],
  ['0.39', '27'],
  ['1.0', '28'],
  ['2.999.3', '8837' + '03'], // X.690 8.19.5's example: 2.999 is the subidentifier 1079
  ['2.25.329800735698586629295641978511506172918', '6983f09da7ebcfdee0c7a1a7b2c0948cc8f9d776'], // a UUID arc beyond 2^53 (as openssl asn1parse -genstr writes it)
  ['1.2.268435455', '2affffff7f'], // 28 bits in four octets
];

test('oid() encodes as X.690 section 8.19 says and readOid reads it back', () => {
  for (const [dotted, hex] of CASES) {
    const der = oid(dotted);
    assert.equal(der.subarray(2).toString('hex'), hex, dotted);
    assert.equal(der[0], 0x06, `${dotted}: tag`);
    assert.equal(der[1], hex.length / 2, `${dotted}: length`);
    assert.equal(readOid(readDer(der)), dotted, `${dotted}: read back`);
  }
});

test('every OID Weft writes round-trips', () => {
  for (const dotted of Object.values(OID)) assert.equal(readOid(readDer(oid(dotted))), dotted);
});

test('readOid refuses an empty, a truncated and a non-minimal OBJECT IDENTIFIER (a leading 0x80 octet, X.690 8.19.2)', () => {
  const der = (hex: string) => readDer(Buffer.from(`06${(hex.length / 2).toString(16).padStart(2, '0')}${hex}`, 'hex'));
  assert.throws(() => readOid(der('')), (e: Error) => e instanceof DerError && /empty/.test(e.message));
  assert.throws(() => readOid(der('2a86')), (e: Error) => e instanceof DerError && /truncated/.test(e.message));
  assert.throws(() => readOid(der('2a808648')), (e: Error) => e instanceof DerError && /leading 0x80/.test(e.message));
  assert.throws(() => readOid(der('802a')), (e: Error) => e instanceof DerError && /leading 0x80/.test(e.message));
});

test('oid() refuses what is not an OID, naming it', () => {
  for (const bad of ['', '1', '1.', '3.1', '1.40', '0.40', '1.2.-3', '1.02', 'a.b']) {
    assert.throws(() => oid(bad), (e: Error) => e instanceof DerError && e.message.includes(`"${bad}"`), bad);
  }
});
