import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { PeerCertificate } from 'node:tls';
import {
  checkPeer,
  forwardedFor,
  formatAuthority,
  HboneAuthorityError,
  parseAuthority,
  spiffeIdFromCert,
} from '../../lib/hbone/index.ts';

const cert = (san: string | undefined) => ({ subjectaltname: san }) as PeerCertificate;

test('accepts IPv4 and bracketed IPv6 CONNECT targets', () => {
  assert.deepEqual(parseAuthority('10.1.2.3:8080'), { host: '10.1.2.3', port: 8080, family: 4 });
  assert.deepEqual(parseAuthority('[fd00::1]:443'), { host: 'fd00::1', port: 443, family: 6 });
  assert.equal(formatAuthority('fd00::1', 443), '[fd00::1]:443');
  assert.equal(formatAuthority('10.1.2.3', 80), '10.1.2.3:80');
});

test('rejects names, missing or out-of-range ports, unbracketed IPv6 and zone IDs with a typed error', () => {
  for (const bad of ['svc.ns.svc.cluster.local:80', '10.0.0.1', '10.0.0.1:', '10.0.0.1:0', '10.0.0.1:65536',
    '10.0.0.1:+80', 'fd00::1:80', '[fd00::1]', '[fe80::1%eth0]:80', '[10.0.0.1]:80', '']) {
    assert.throws(() => parseAuthority(bad), (err: unknown) =>
      err instanceof HboneAuthorityError && err.code === 'WEFT_HBONE_BAD_AUTHORITY', bad);
  }
});

test('finds the one SPIFFE ID among the SANs, including quoted ones', () => {
  assert.equal(spiffeIdFromCert(cert('DNS:a.example, URI:spiffe://td/ns/a/sa/b')), 'spiffe://td/ns/a/sa/b');
  assert.equal(spiffeIdFromCert(cert('URI:"spiffe://td/ns/a/sa/b,c", DNS:x')), 'spiffe://td/ns/a/sa/b,c');
  assert.equal(spiffeIdFromCert(cert('URI:https://example.com/')), undefined);
  assert.equal(spiffeIdFromCert(cert(undefined)), undefined);
});

test('a certificate with two SPIFFE IDs has none (an SVID carries exactly one)', () => {
  assert.equal(spiffeIdFromCert(cert('URI:spiffe://td/ns/a/sa/b, URI:spiffe://td/ns/a/sa/c')), undefined);
});

test('peer expectations: one ID, a set, or a check that explains itself', () => {
  const c = cert('URI:spiffe://td/ns/a/sa/b');
  assert.equal(checkPeer('spiffe://td/ns/a/sa/b', c), undefined);
  assert.equal(checkPeer(['spiffe://td/ns/x/sa/y', 'spiffe://td/ns/a/sa/b'], c), undefined);
  assert.match(checkPeer('spiffe://td/ns/x/sa/y', c) ?? '', /expected spiffe:\/\/td\/ns\/x\/sa\/y/);
  assert.equal(checkPeer((id) => (id?.startsWith('spiffe://td/') ? true : 'wrong trust domain'), c), undefined);
  assert.equal(checkPeer(() => 'wrong trust domain', c), 'wrong trust domain');
});

test('reads the client address from a Forwarded header', () => {
  assert.equal(forwardedFor('for=10.0.0.5'), '10.0.0.5');
  assert.equal(forwardedFor('for=10.0.0.5:4711;proto=tcp'), '10.0.0.5');
  assert.equal(forwardedFor('for="[fd00::5]:4711"'), 'fd00::5');
  assert.equal(forwardedFor('proto=tcp'), undefined);
});
