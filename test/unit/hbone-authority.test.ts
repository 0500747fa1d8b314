import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { OID, buildCertificate, buildName, extension, generalNames, type AltNames } from '../../lib/identity/x509.ts';
import {
  admitWorkloadPeer,
  checkPeer,
  formatForwardedFor,
  forwardedFor,
  parseForwarded,
  formatAuthority,
  HboneAuthorityError,
  parseAuthority,
  spiffeIdFromCert,
} from '../../lib/hbone/index.ts';

/** A certificate carrying these SANs (self-signed; only its SANs are read), as a TLS peer presents it. */
const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
const cert = (sans: AltNames | undefined) => {
  const spki = key.publicKey.export({ type: 'spki', format: 'der' });
  const name = buildName([[OID.commonName, 'peer']]);
  const raw = buildCertificate({
    serial: Buffer.from([1]), issuer: name, subject: name, spki, notBefore: new Date(), notAfter: new Date(Date.now() + 3_600_000),
    extensions: sans ? [extension(OID.subjectAltName, false, generalNames(sans))] : [],
  }, key.privateKey);
  return { raw } as PeerCertificate;
};

test('accepts IPv4 and bracketed IPv6 CONNECT targets', () => {
  assert.deepEqual(parseAuthority('10.1.2.3:8080'), { host: '10.1.2.3', port: 8080, family: 4 });
  assert.deepEqual(parseAuthority('[fd00::1]:443'), { host: 'fd00::1', port: 443, family: 6 });
  assert.equal(formatAuthority('fd00::1', 443), '[fd00::1]:443');
  assert.equal(formatAuthority('10.1.2.3', 80), '10.1.2.3:80');
});

test('rejects names, missing or out-of-range ports, unbracketed IPv6 and zone IDs with a typed error', () => {
  for (const bad of ['svc.ns.svc.cluster.local:80', '10.0.0.1', '10.0.0.1:', '10.0.0.1:0', '10.0.0.1:65536',
    '10.0.0.1:+80', 'fd00::1:80', '[fd00::1]', '[fe80::1%eth0]:80', '[10.0.0.1]:80', '',
    // Spellings of an address other parsers take (inet_aton): short, decimal, octal-looking, hex, a
    // trailing dot, whitespace either side.
    '127.1:80', '2130706433:80', '010.0.0.1:80', '0x7f.0.0.1:80', '10.0.0.1.:80', ' 10.0.0.1:80', '10.0.0.1:80 ', '10.0.0.1: 80']) {
    assert.throws(() => parseAuthority(bad), (err: unknown) =>
      err instanceof HboneAuthorityError && err.code === 'WEFT_HBONE_BAD_AUTHORITY', bad);
  }
});

test('finds the one SPIFFE ID in the SANs (an X.509-SVID carries exactly one URI SAN: SPIFFE X509-SVID 4.1)', () => {
  assert.equal(spiffeIdFromCert(cert({ dnsNames: ['a.example'], uris: ['spiffe://td/ns/a/sa/b'] }))?.uri, 'spiffe://td/ns/a/sa/b');
  assert.equal(spiffeIdFromCert(cert({ uris: ['https://example.com/'] })), undefined);
  assert.equal(spiffeIdFromCert(cert(undefined)), undefined);
  assert.equal(spiffeIdFromCert(undefined), undefined);
  assert.equal(spiffeIdFromCert({} as PeerCertificate), undefined, 'no certificate presented');
});

test('a certificate with two URI SANs has no identity, whatever the second is (an SVID carries exactly one)', () => {
  assert.equal(spiffeIdFromCert(cert({ uris: ['spiffe://td/ns/a/sa/b', 'spiffe://td/ns/a/sa/c'] })), undefined);
  assert.equal(spiffeIdFromCert(cert({ uris: ['https://example.com/', 'spiffe://td/ns/a/sa/b'] })), undefined);
});

test('a URI SAN that is not a SPIFFE ID Weft issues is no identity: odd characters, paths, trust domains', () => {
  for (const uri of ['spiffe://td/ns/a/sa/b,c', 'spiffe://td/ns/a/sa/b?x', 'spiffe://td/other/path', 'spiffe://TD/ns/a/sa/b', 'spiffe://td']) {
    assert.equal(spiffeIdFromCert(cert({ uris: [uri] })), undefined, uri);
  }
});

test('peer expectations: one ID, a set, or a check that explains itself', () => {
  const c = cert({ uris: ['spiffe://td/ns/a/sa/b'] });
  const id = spiffeIdFromCert(c)?.uri;
  assert.equal(checkPeer('spiffe://td/ns/a/sa/b', id, c), undefined);
  assert.equal(checkPeer(['spiffe://td/ns/x/sa/y', 'spiffe://td/ns/a/sa/b'], id, c), undefined);
  assert.match(checkPeer('spiffe://td/ns/x/sa/y', id, c) ?? '', /expected spiffe:\/\/td\/ns\/x\/sa\/y/);
  assert.equal(checkPeer((peer) => (peer?.startsWith('spiffe://td/') ? true : 'wrong trust domain'), id, c), undefined);
  assert.equal(checkPeer(() => 'wrong trust domain', id, c), 'wrong trust domain');
});

// RFC 7239 section 4 (syntax) and section 6 (node names, ports, quoting).
test('reads the client address and port from the last element of a Forwarded header (RFC 7239)', () => {
  const table: Array<[string | undefined, { ip: string; port: number | undefined } | undefined]> = [
    ['for=10.0.0.5', { ip: '10.0.0.5', port: undefined }],
    ['for="10.0.0.5:4711";proto=tcp', { ip: '10.0.0.5', port: 4711 }],
    ['For="[fd00::5]:4711"', { ip: 'fd00::5', port: 4711 }],
    ['for="[2001:db8:cafe::17]"', { ip: '2001:db8:cafe::17', port: undefined }],
    ['for="10.0.0.5:_hidden"', { ip: '10.0.0.5', port: undefined }],
    // Proxies append: the last element is what our peer added itself; earlier ones it only relayed.
    ['for=192.0.2.43, for="198.51.100.17:99"', { ip: '198.51.100.17', port: 99 }],
    ['for="10.0.0.\\5:1"', { ip: '10.0.0.5', port: 1 }], // a quoted-pair stands for its character (RFC 7230)
    ['for="10.0.0.5:4711"; by=10.0.0.1 ; proto=tcp', { ip: '10.0.0.5', port: 4711 }],
    // No address: unknown, obfuscated, absent, malformed, quoting required but missing, duplicates.
    ['for=unknown', undefined],
    ['for=_hidden', undefined],
    ['proto=tcp', undefined],
    [undefined, undefined],
    ['', undefined],
    ['for=10.0.0.5:4711', undefined],
    ['for=[fd00::5]', undefined],
    ['for="10.0.0.5:4711', undefined],
    ['for=10.0.0.5;for=10.0.0.6', undefined],
    ['for="10.0.0.5:0"', undefined],
    ['for="10.0.0.5:65536"', undefined],
    ['for="10.0.0.256"', undefined],
    ['for="example.com:80"', undefined],
    ['for', undefined],
    ['for=10.0.0.5 x=1', undefined],
  ];
  for (const [header, want] of table) assert.deepEqual(forwardedFor(header), want, String(header));
  assert.deepEqual(parseForwarded('for=a;proto=http, ;, for="b, c"'), [{ for: 'a', proto: 'http' }, { for: 'b, c' }]);
});

test('writes for= with the quotes RFC 7239 requires for ports and IPv6, and reads it back', () => {
  assert.equal(formatForwardedFor('10.0.0.5', 4711), 'for="10.0.0.5:4711"');
  assert.equal(formatForwardedFor('10.0.0.5'), 'for=10.0.0.5');
  assert.equal(formatForwardedFor('fd00::5', 80), 'for="[fd00::5]:80"');
  assert.equal(formatForwardedFor('fd00::5'), 'for="[fd00::5]"');
  for (const [ip, port] of [['10.0.0.5', 4711], ['fd00::5', 80], ['10.0.0.5', undefined]] as const) {
    assert.deepEqual(forwardedFor(formatForwardedFor(ip, port)), { ip, port });
  }
});

test('the data port admits workload identities of the mesh and its aliases only', () => {
  const tds = ['cluster.local', 'old.example'];
  // The ID as the handshake reads it from the client's certificate (once: spiffeIdFromCert).
  const admit = (uri: string | undefined) => admitWorkloadPeer(spiffeIdFromCert(cert(uri === undefined ? undefined : { uris: [uri] })), tds);
  assert.equal(admit('spiffe://cluster.local/ns/demo/sa/client'), undefined);
  assert.equal(admit('spiffe://old.example/ns/demo/sa/client'), undefined);
  assert.equal(admit('spiffe://cluster.local/node/node1')?.kind, 'peer-not-workload');
  assert.match(admit('spiffe://cluster.local/node/node1')?.reason ?? '', /node identity/);
  assert.equal(admit('spiffe://evil.example/ns/demo/sa/client')?.kind, 'peer-trust-domain');
  assert.equal(admit('spiffe://evil.example/node/node1')?.kind, 'peer-trust-domain');
  assert.equal(admit(undefined)?.kind, 'peer-identity');
  assert.equal(admit('spiffe://cluster.local/ns/demo')?.kind, 'peer-identity');
  assert.equal(admit('spiffe://Cluster.Local/ns/demo/sa/x')?.kind, 'peer-identity');
});
