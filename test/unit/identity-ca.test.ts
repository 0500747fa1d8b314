// SPIFFE IDs, CSRs and the CA itself (generation, loading from PEM and Secret data, signing rules).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPublicKey, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority, newSerial } from '../../lib/identity/ca.ts';
import { createCsr, generateKeyPair, parseCsr, privateKeyToPem } from '../../lib/identity/csr.ts';
import { CaLoadError, CsrIdentityMismatchError, CsrSignatureError, MalformedCsrError, SpiffeIdError } from '../../lib/identity/errors.ts';
import { formatSpiffeId, nodeId, parseSpiffeId, workloadId } from '../../lib/identity/spiffe.ts';
import { bool, seq, octets } from '../../lib/identity/der.ts';
import { KeyUsage, OID, buildCertificate, buildName, certToPem, extension, keyIdentifier, keyUsageValue } from '../../lib/identity/x509.ts';
import { EchoServer, TD, connectHbone, id, workloadCreds } from './identity-fixtures.ts';

test('parses and formats workload and node SPIFFE IDs', () => {
  const w = parseSpiffeId('spiffe://cluster.local/ns/default/sa/web');
  assert.deepEqual(w, workloadId('cluster.local', 'default', 'web'));
  assert.equal(formatSpiffeId(w), 'spiffe://cluster.local/ns/default/sa/web');
  const n = parseSpiffeId('spiffe://cluster.local/node/worker-1');
  assert.equal(n.kind, 'node');
  assert.equal(formatSpiffeId(n), nodeId('cluster.local', 'worker-1').uri);
});

test('rejects malformed SPIFFE IDs with a message naming the problem', () => {
  for (const bad of ['http://cluster.local/ns/a/sa/b', 'spiffe://Cluster.local/ns/a/sa/b', 'spiffe://cluster.local', 'spiffe://td/ns/a/sa/b/extra',
    'spiffe://td/ns/../sa/b', 'spiffe://td/ns/a/sa/b?x=1', 'spiffe://td/ns//sa/b', 'spiffe://td/foo/a']) {
    assert.throws(() => parseSpiffeId(bad), (err: Error) => err instanceof SpiffeIdError && err.message.length > 20, bad);
  }
});

test('a CSR carries the SPIFFE URI SAN and a verifiable self-signature', async () => {
  const { privateKey, publicKey } = await generateKeyPair();
  const csr = createCsr(id('default', 'web'), privateKey);
  const parsed = parseCsr(csr);
  assert.deepEqual(parsed.uris, [id('default', 'web')]);
  assert.ok(parsed.spki.equals(publicKey.export({ type: 'spki', format: 'der' })));
  // OpenSSL agrees.
  const dir = mkdtempSync(join(tmpdir(), 'weft-csr-'));
  writeFileSync(join(dir, 'csr.pem'), csr);
  const out = execFileSync('openssl', ['req', '-in', join(dir, 'csr.pem'), '-noout', '-verify', '-text'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.match(out, /URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/web/);
});

test('a tampered CSR fails signature verification and garbage is malformed', async () => {
  const { privateKey } = await generateKeyPair();
  const der = Buffer.from(createCsr(id('default', 'web'), privateKey).replace(/-----[^-]+-----|\s/g, ''), 'base64');
  // Flip a byte inside the URI.
  const at = der.indexOf(Buffer.from('default'));
  der[at] = 'D'.charCodeAt(0);
  assert.throws(() => parseCsr(der), CsrSignatureError);
  assert.throws(() => parseCsr('hello'), MalformedCsrError);
  assert.throws(() => parseCsr(Buffer.from([0x30, 0x03, 0x02, 0x01])), MalformedCsrError);
});

test('a generated root is a CA that signs 24 h workload certificates with serverAuth and clientAuth', async () => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const root = new X509Certificate(ca.trustBundle()[0]!);
  assert.ok(root.ca);
  const { privateKey } = await generateKeyPair();
  const issued = ca.signCsr(createCsr(id('default', 'web'), privateKey), id('default', 'web'));
  const leaf = new X509Certificate(issued.certChain[0]!);
  assert.equal(leaf.ca, false);
  assert.equal(leaf.subjectAltName, `URI:${id('default', 'web')}`);
  assert.deepEqual(leaf.keyUsage?.sort(), [OID.serverAuth, OID.clientAuth].sort());
  const lifetime = issued.notAfter.getTime() - Date.now();
  assert.ok(lifetime > 23.9 * 3600_000 && lifetime <= 24 * 3600_000);
  assert.ok(leaf.verify(root.publicKey));
});

test('signing refuses a CSR whose URI SAN is not the authorised identity', async () => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const { privateKey } = await generateKeyPair();
  assert.throws(() => ca.signCsr(createCsr(id('default', 'web'), privateKey), id('default', 'db')), (err: Error) =>
    err instanceof CsrIdentityMismatchError && /asks for URI SAN spiffe:\/\/cluster\.local\/ns\/default\/sa\/web but the request is authorised for spiffe:\/\/cluster\.local\/ns\/default\/sa\/db/.test(err.message));
  assert.throws(() => ca.signCsr(createCsr('spiffe://other.domain/ns/a/sa/b', privateKey), 'spiffe://other.domain/ns/a/sa/b'), CsrIdentityMismatchError);
});

/** A root and an intermediate built with the same primitives, as an operator's existing PKI would supply. */
async function rootAndIntermediate(): Promise<{ rootPem: string; interPem: string; interKey: KeyObject }> {
  const mk = async (name: string, issuerName: Buffer, issuerKey: KeyObject | undefined, issuerSpki: Buffer | undefined) => {
    const kp = await generateKeyPair();
    const spki = kp.publicKey.export({ type: 'spki', format: 'der' });
    const subject = buildName([[OID.organization, 'acme'], [OID.commonName, name]]);
    const der = buildCertificate({
      serial: Buffer.from([0x11, name.length]), issuer: issuerKey ? issuerName : subject, subject, spki,
      notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 30 * 86400_000),
      extensions: [
        extension(OID.basicConstraints, true, seq(bool(true))),
        extension(OID.keyUsage, true, keyUsageValue([KeyUsage.keyCertSign, KeyUsage.cRLSign])),
        extension(OID.subjectKeyId, false, octets(keyIdentifier(spki))),
        ...(issuerSpki ? [extension(OID.authorityKeyId, false, seq(Buffer.concat([Buffer.from([0x80, 20]), keyIdentifier(issuerSpki)])))] : []),
      ],
    }, issuerKey ?? kp.privateKey);
    return { der, subject, kp, spki };
  };
  const root = await mk('acme root', Buffer.alloc(0), undefined, undefined);
  const inter = await mk('acme weft intermediate', root.subject, root.kp.privateKey, root.spki);
  return { rootPem: certToPem(root.der), interPem: certToPem(inter.der), interKey: inter.kp.privateKey };
}

test('loads an intermediate with its root from Secret data; chains include the intermediate and verify in TLS', async (t) => {
  const { rootPem, interPem, interKey } = await rootAndIntermediate();
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const ca = CertificateAuthority.fromSecretData({ 'tls.crt': b64(interPem), 'tls.key': b64(privateKeyToPem(interKey)), 'ca.crt': b64(rootPem) }, { trustDomain: TD });
  assert.deepEqual(ca.trustBundle(), [rootPem]);
  const server = await workloadCreds(ca, id('default', 'server'));
  assert.equal(server.certChain.length, 2);
  assert.equal(server.certChain[1], interPem);
  const srv = await EchoServer.start(server);
  t.after(() => srv.close());
  const conn = await connectHbone(srv.port, await workloadCreds(ca, id('default', 'client')), id('default', 'server'));
  conn.socket.destroy();
});

test('loads a root from PEM files', async () => {
  const gen = await CertificateAuthority.generateRoot({ trustDomain: TD });
  void gen;
  const { rootPem, interPem, interKey } = await rootAndIntermediate();
  const dir = mkdtempSync(join(tmpdir(), 'weft-ca-'));
  writeFileSync(join(dir, 'tls.crt'), interPem + rootPem);
  writeFileSync(join(dir, 'tls.key'), privateKeyToPem(interKey));
  writeFileSync(join(dir, 'ca.crt'), rootPem);
  const ca = await CertificateAuthority.fromFiles({ certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key'), rootsFile: join(dir, 'ca.crt') }, { trustDomain: TD });
  const creds = await workloadCreds(ca, id('a', 'b'));
  assert.deepEqual(creds.certChain.slice(1), [interPem], 'the root is not sent in the chain');
});

test('loading refuses a key that does not match, a non-CA certificate, an intermediate without its root, and missing files', async () => {
  const { rootPem, interPem, interKey } = await rootAndIntermediate();
  const other = await generateKeyPair();
  assert.throws(() => CertificateAuthority.fromPem({ certPem: interPem, keyPem: privateKeyToPem(other.privateKey), rootsPem: rootPem }, { trustDomain: TD }),
    (err: Error) => err instanceof CaLoadError && /does not belong/.test(err.message));
  assert.throws(() => CertificateAuthority.fromPem({ certPem: interPem, keyPem: privateKeyToPem(interKey) }, { trustDomain: TD }),
    (err: Error) => err instanceof CaLoadError && /no root bundle/.test(err.message));
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const leaf = await workloadCreds(ca, id('a', 'b'));
  assert.throws(() => CertificateAuthority.fromPem({ certPem: leaf.certChain[0]!, keyPem: leaf.key }, { trustDomain: TD }),
    (err: Error) => err instanceof CaLoadError && /not a CA/.test(err.message));
  assert.throws(() => CertificateAuthority.fromSecretData({ 'ca.crt': 'eA==' }, { trustDomain: TD }), (err: Error) => err instanceof CaLoadError && /tls\.crt/.test(err.message));
  await assert.rejects(CertificateAuthority.fromFiles({ certFile: '/nonexistent/tls.crt', keyFile: '/nonexistent/tls.key' }, { trustDomain: TD }), CaLoadError);
  assert.ok(createPublicKey(leaf.key));
});

test('certificate serials are positive, 16 octets and minimal in DER (a leading 0x00 before a byte below 0x80 is refused by OpenSSL)', () => {
  for (let i = 0; i < 4096; i++) {
    const s = newSerial();
    assert.equal(s.length, 16);
    assert.ok(s[0]! >= 0x40 && s[0]! < 0x80, `serial ${s.toString('hex')} starts with 0x${s[0]!.toString(16)}`);
  }
});

// Rule: a node certificate is this controller's only if its own signer issued it (DESIGN.md
// Identity; clusters share the root), and a rotation keeps the retiring signer's certificates
// until it ends, as it keeps the retiring roots (agents move their node certificates over).
test('issued(): this CA\'s signer and, during a rotation, the retiring one; not a sibling intermediate under the same root', async () => {
  const root = await CertificateAuthority.generateRoot({ trustDomain: 'cluster.local' });
  const load = async (name: string) => {
    const i = await root.issueIntermediate(name);
    return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: 'cluster.local' });
  };
  const [ca1, ca2] = [await load('cluster1'), await load('cluster2')];
  const nodeA = 'spiffe://cluster.local/node/node-a';
  const leafOf = async (ca: CertificateAuthority) => {
    const { privateKey } = await generateKeyPair();
    return new X509Certificate(ca.signCsr(createCsr(nodeA, privateKey), nodeA).certChain[0]!);
  };
  const mine = await leafOf(ca1);
  const theirs = await leafOf(ca2);
  assert.equal(ca1.issued(mine), true);
  assert.equal(ca1.issued(mine.raw), true);
  assert.equal(ca1.issued(theirs), false);
  assert.equal(ca1.issued(Buffer.from('not a certificate')), false);
  ca1.rotateTo(await load('cluster1-next'));
  assert.equal(ca1.issued(mine), true, 'the retiring signer\'s node certificates hold until the rotation ends');
  assert.equal(ca1.issued(await leafOf(ca1)), true);
  ca1.retirePreviousRoots();
  assert.equal(ca1.issued(mine), false);
});
