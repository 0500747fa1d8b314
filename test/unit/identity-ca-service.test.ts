// The certificate service over a real gRPC TLS server on 127.0.0.1: authentication (bootstrap
// token, node certificate over mTLS), authorization by pod placement, CSR validation, logging.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPublicKey } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { CertificateAuthority, DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS } from '../../lib/identity/ca.ts';
import { CertificateServiceClient } from '../../lib/identity/ca-client.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from '../../lib/identity/csr.ts';
import { KeyUsage, OID, buildName, extension, generalNames, keyUsageValue, signStructure } from '../../lib/identity/x509.ts';
import { bool, ctx, oid, seq, set, smallInt, toPem } from '../../lib/identity/der.ts';
import { CaAuthenticationError, CaUnavailableError, CertificateRefusedError, IdentityError } from '../../lib/identity/errors.ts';
import { addCertificateService, createControllerCredentials, StaticTokenAuthenticator, type CaLogRecord, type CertificateServiceDeps, type ControllerCredentials } from '../../controller/src/ca/index.ts';
import type { NodeAuthenticator } from '../../controller/src/ca/authn.ts';
import { CertManager, GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { until } from '../lab/wait.ts';
import { TD, id } from './identity-fixtures.ts';

const CONTROLLER = id('weft-system', 'weft-controller');
const TOKENS = { 'node-a': 'token-a-0123456789abcdef', 'node-b': 'token-b-0123456789abcdef' };
/** Local mode's workload token: the east-west gateway's ServiceAccount (cli/local/multicluster.ts). */
const GATEWAY_TOKEN = 'token-gw-0123456789abcdef';
const placement = new Map<string, Set<string>>([
  ['node-a', new Set([id('default', 'web')])],
  ['node-b', new Set([id('default', 'db')])],
]);

/** False: the directory has not loaded its pods yet (a controller just started). */
let podsLoaded = true;
let ca: CertificateAuthority;
let server: grpc.Server;
let creds: ControllerCredentials;
let address: string;
const logs: CaLogRecord[] = [];

before(async () => {
  ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  creds = await createControllerCredentials(ca, { identity: CONTROLLER, ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] });
  server = new grpc.Server();
  addCertificateService(server, {
    ca,
    authenticator: new StaticTokenAuthenticator({ ...TOKENS, 'system:serviceaccount:weft-system:weft-eastwest': GATEWAY_TOKEN }),
    pods: { identitiesOnNode: (node) => (podsLoaded ? (placement.get(node) ?? new Set()) : undefined) },
    log: (r) => logs.push(r),
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds.credentials, (err, p) => (err ? reject(err) : resolve(p))));
  address = `127.0.0.1:${port}`;
});

after(() => {
  creds.close();
  server.forceShutdown();
});

const tokenClient = (token: string) => new CertificateServiceClient({ address, trustBundle: ca.trustBundle(), serverIdentity: CONTROLLER, credentials: { kind: 'token', token: () => token } });

async function csrFor(identity: string) {
  const { privateKey } = await generateKeyPair();
  return { csr: createCsr(identity, privateKey), keyPem: privateKeyToPem(privateKey) };
}

function grpcCode(err: unknown): string {
  assert.ok(err instanceof IdentityError, `expected an IdentityError, got ${String(err)}`);
  const cause = err.cause as grpc.ServiceError | undefined;
  return grpc.status[cause?.code ?? -1] ?? 'none';
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail('request was expected to fail');
}

/** Bootstraps node-a: token → node certificate; returns an mTLS client authenticated as node-a. */
async function nodeClient(node: keyof typeof TOKENS): Promise<CertificateServiceClient> {
  const nodeIdentity = `spiffe://${TD}/node/${node}`;
  const { csr, keyPem } = await csrFor(nodeIdentity);
  const bootstrap = tokenClient(TOKENS[node]);
  const res = await bootstrap.createCertificate(nodeIdentity, csr);
  bootstrap.close();
  return new CertificateServiceClient({ address, trustBundle: res.trustBundle, serverIdentity: CONTROLLER, credentials: { kind: 'mtls', key: keyPem, certChain: res.certChain } });
}

test('a bad bootstrap token is refused with UNAUTHENTICATED', async () => {
  const client = tokenClient('not-a-valid-token-at-all');
  const { csr } = await csrFor(`spiffe://${TD}/node/node-a`);
  const err = await rejection(client.createCertificate(`spiffe://${TD}/node/node-a`, csr));
  client.close();
  assert.ok(err instanceof CaAuthenticationError);
  assert.equal(grpcCode(err), 'UNAUTHENTICATED');
});

test('a request without any credentials is refused with UNAUTHENTICATED', async () => {
  const client = new CertificateServiceClient({ address, trustBundle: ca.trustBundle(), serverIdentity: CONTROLLER, credentials: { kind: 'token', token: () => '' } });
  const err = await rejection(client.createCertificate(id('default', 'web'), (await csrFor(id('default', 'web'))).csr));
  client.close();
  assert.equal(grpcCode(err), 'UNAUTHENTICATED');
});

test('token → node certificate → mTLS-authenticated signing of a workload identity works end to end', async () => {
  const client = await nodeClient('node-a');
  const web = id('default', 'web');
  const { csr } = await csrFor(web);
  const res = await client.createCertificate(web, csr, 3600);
  client.close();
  const leaf = new X509Certificate(res.certChain[0]!);
  const root = new X509Certificate(res.trustBundle[0]!);
  assert.equal(leaf.subjectAltName, `URI:${web}`);
  assert.ok(leaf.verify(root.publicKey));
  const lifetime = Date.parse(leaf.validTo) - Date.now();
  assert.ok(lifetime > 3500_000 && lifetime <= 3600_000, `lifetime ${lifetime} ms`);
  assert.ok(logs.some((l) => l.msg === 'certificate issued' && l.node === 'node-a' && l.identity === web && l.via === 'mtls'));
});

test('a node asking for the identity of a pod on another node is refused and the refusal is logged with both names', async () => {
  const client = await nodeClient('node-a');
  const db = id('default', 'db');
  const err = await rejection(client.createCertificate(db, (await csrFor(db)).csr));
  client.close();
  assert.ok(err instanceof CertificateRefusedError);
  assert.equal(grpcCode(err), 'PERMISSION_DENIED');
  assert.match((err as Error).message, /node node-a may not obtain identity spiffe:\/\/cluster\.local\/ns\/default\/sa\/db/);
  const entry = logs.find((l) => l.msg === 'certificate refused' && l.identity === db);
  assert.ok(entry, 'refusal was not logged');
  assert.equal(entry.node, 'node-a');
  assert.equal(entry.code, 'PERMISSION_DENIED');
  assert.doesNotThrow(() => JSON.parse(JSON.stringify(entry)));
});

test('before the controller has loaded its pods, a workload certificate is refused as UNAVAILABLE (retry), not denied; once loaded it is issued', async () => {
  const client = await nodeClient('node-a');
  const web = id('default', 'web');
  podsLoaded = false;
  try {
    const err = await rejection(client.createCertificate(web, (await csrFor(web)).csr));
    assert.equal(grpcCode(err), 'UNAVAILABLE');
    assert.match((err as Error).message, /has not loaded its pods/);
    assert.ok(!(err instanceof CertificateRefusedError), 'not a refusal the agent would take as final');
  } finally {
    podsLoaded = true;
  }
  const res = await client.createCertificate(web, (await csrFor(web)).csr);
  client.close();
  assert.equal(new X509Certificate(res.certChain[0]!).subjectAltName, `URI:${web}`);
});

test('a node cannot obtain another node\'s node identity with its bootstrap token', async () => {
  const client = tokenClient(TOKENS['node-a']);
  const other = `spiffe://${TD}/node/node-b`;
  const err = await rejection(client.createCertificate(other, (await csrFor(other)).csr));
  client.close();
  assert.equal(grpcCode(err), 'PERMISSION_DENIED');
});

test('a malformed CSR is refused with INVALID_ARGUMENT', async () => {
  const client = await nodeClient('node-a');
  const web = id('default', 'web');
  const garbage = '-----BEGIN CERTIFICATE REQUEST-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END CERTIFICATE REQUEST-----\n';
  const err1 = await rejection(client.createCertificate(web, garbage));
  assert.equal(grpcCode(err1), 'INVALID_ARGUMENT');
  const err2 = await rejection(client.createCertificate(web, 'not a csr'));
  assert.equal(grpcCode(err2), 'INVALID_ARGUMENT');
  // A well-formed CSR for a different identity than the one requested.
  const err3 = await rejection(client.createCertificate(web, (await csrFor(id('default', 'other'))).csr));
  assert.equal(grpcCode(err3), 'INVALID_ARGUMENT');
  assert.match((err3 as Error).message, /authorised for spiffe:\/\/cluster\.local\/ns\/default\/sa\/web/);
  // One carrying the requested identity and another's beside it.
  const { privateKey } = await generateKeyPair();
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const san = extension(OID.subjectAltName, true, generalNames({ uris: [web, id('kube-system', 'admin')] }));
  const two = toPem('CERTIFICATE REQUEST', signStructure(seq(smallInt(0), seq(), spki, ctx(0, true, seq(oid(OID.extensionRequest), set(seq(san))))), privateKey));
  const err4 = await rejection(client.createCertificate(web, two));
  assert.equal(grpcCode(err4), 'INVALID_ARGUMENT');
  assert.match((err4 as Error).message, /exactly one URI SAN/);
  client.close();
});

test('the client refuses a controller whose SPIFFE ID is not the expected one', async () => {
  const client = new CertificateServiceClient({ address, trustBundle: ca.trustBundle(), serverIdentity: id('weft-system', 'someone-else'), credentials: { kind: 'token', token: () => TOKENS['node-a'] }, deadlineMs: 2000 });
  const err = await rejection(client.createCertificate(`spiffe://${TD}/node/node-a`, (await csrFor(`spiffe://${TD}/node/node-a`)).csr));
  client.close();
  assert.ok(err instanceof IdentityError);
  assert.equal(grpcCode(err), 'UNAVAILABLE');
});

test('the agent cert manager bootstraps with its token and obtains workload certificates over mTLS', async () => {
  const signer = new GrpcCertificateSigner({ address, trustBundle: ca.trustBundle(), serverIdentity: CONTROLLER, token: () => TOKENS['node-a'], trustDomain: TD, nodeName: 'node-a' });
  const manager = new CertManager({ signer, trustBundle: ca.trustBundle() });
  const web = id('default', 'web');
  const got = await manager.get(web);
  assert.equal(new X509Certificate(got.certChain[0]!).subjectAltName, `URI:${web}`);
  const [info] = manager.list();
  assert.equal(info?.identity, web);
  assert.match(info?.issuer ?? '', /weft root CA/);
  assert.ok(logs.some((l) => l.msg === 'certificate issued' && l.identity === `spiffe://${TD}/node/node-a` && l.via === 'token'));
  assert.ok(logs.some((l) => l.msg === 'certificate issued' && l.identity === web && l.via === 'mtls'));
  // Refusals are not retried: the caller learns at once.
  await assert.rejects(manager.get(id('default', 'db')), CertificateRefusedError);
  manager.close();
});

test('the trust bundle stream sends the roots and the certificate the CA signs with, and every change during a rotation', async () => {
  const client = tokenClient(TOKENS['node-a']);
  const seen: string[][] = [];
  const signers: Array<string | undefined> = [];
  const cancel = await client.watchTrustBundle((roots, signer) => { seen.push(roots); signers.push(signer); }, () => undefined);
  const until = async (n: number) => {
    for (let i = 0; i < 200 && seen.length < n; i++) await new Promise((r) => setTimeout(r, 10));
  };
  await until(1);
  assert.deepEqual(seen[0], ca.trustBundle());
  assert.equal(signers[0], ca.signingCertificate());
  const standalone = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const probe = await CertificateAuthority.generateRoot({ trustDomain: TD });
  // Rotate a separate CA handle's roots into view: rotateTo on the served CA, then back.
  const before = ca.trustBundle();
  ca.rotateTo(standalone);
  await until(2);
  assert.equal(seen[1]?.length, 2);
  assert.equal(signers[1], standalone.signingCertificate(), 'the new signer with the roots');
  ca.rotateTo(probe);
  ca.retirePreviousRoots();
  await until(4);
  assert.deepEqual(seen.at(-1), probe.trustBundle());
  assert.notDeepEqual(seen.at(-1), before);
  cancel();
  client.close();
});

test('a local workload token (system:serviceaccount:<ns>:<sa> in the token file) obtains exactly that ServiceAccount\'s identity: the east-west gateway\'s, not a pod\'s or a node\'s', async () => {
  const client = tokenClient(GATEWAY_TOKEN);
  try {
    const gw = id('weft-system', 'weft-eastwest');
    const { csr } = await csrFor(gw);
    const res = await client.createCertificate(gw, csr);
    assert.ok(new X509Certificate(res.certChain[0]!).subjectAltName?.includes(gw));
    for (const other of [id('default', 'web'), `spiffe://${TD}/node/node-a`, id('weft-system', 'weft-controller')]) {
      const err = await rejection(client.createCertificate(other, (await csrFor(other)).csr));
      assert.ok(err instanceof CertificateRefusedError, `${other}: ${String(err)}`);
      assert.equal(grpcCode(err), 'PERMISSION_DENIED');
    }
    assert.ok(logs.some((r) => r.msg === 'certificate refused' && r.identity === id('default', 'web') && /workload token obtains only its own identity/.test(String(r.reason))));
  } finally {
    client.close();
  }
});

/** A certificate service of its own over `served`, counting outcomes (as weft_ca_certificate_requests_total does). */
async function serveCa(served: CertificateAuthority, onNode: Map<string, Set<string>>, opts: Partial<Pick<CertificateServiceDeps, 'limits' | 'clock' | 'authenticator' | 'onWatchRefused'>> = {}) {
  const own = { logs: [] as CaLogRecord[], outcomes: [] as string[] };
  const c = await createControllerCredentials(served, { identity: CONTROLLER, ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] });
  const s = new grpc.Server();
  addCertificateService(s, {
    ca: served, authenticator: new StaticTokenAuthenticator(TOKENS), pods: { identitiesOnNode: (node) => onNode.get(node) ?? new Set() },
    log: (r) => own.logs.push(r), onOutcome: (o) => own.outcomes.push(o), ...opts,
  });
  const port = await new Promise<number>((resolve, reject) => s.bindAsync('127.0.0.1:0', c.credentials, (err, p) => (err ? reject(err) : resolve(p))));
  const at = `127.0.0.1:${port}`;
  const mtls = (key: string, certChain: readonly string[]) => new CertificateServiceClient({ address: at, trustBundle: served.trustBundle(), serverIdentity: CONTROLLER, credentials: { kind: 'mtls', key, certChain } });
  const token = (t: string) => new CertificateServiceClient({ address: at, trustBundle: served.trustBundle(), serverIdentity: CONTROLLER, credentials: { kind: 'token', token: () => t } });
  return { ...own, mtls, token, close: () => { c.close(); s.forceShutdown(); } };
}

// Rule: DESIGN.md Identity, "the controller signs only identities of pods scheduled on the
// requesting node"; node names are per cluster (docs/ARCHITECTURE.md Multi-cluster: one root, one
// intermediate per cluster, one trust domain), so only this controller's CA makes a node its node.
test('another cluster\'s node certificate for a node name this cluster also has is refused UNAUTHENTICATED, counted and logged: it obtains none of the pods of this cluster\'s node of that name (DESIGN.md Identity)', async () => {
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const [i1, i2] = [await root.issueIntermediate('cluster1'), await root.issueIntermediate('cluster2')];
  const ca1 = CertificateAuthority.fromPem({ certPem: i1.certPem, keyPem: i1.keyPem, rootsPem: i1.rootPem }, { trustDomain: TD });
  const ca2 = CertificateAuthority.fromPem({ certPem: i2.certPem, keyPem: i2.keyPem, rootsPem: i2.rootPem }, { trustDomain: TD });
  const payments = id('payments', 'api');
  const cluster1 = await serveCa(ca1, new Map([['node-a', new Set([payments])]]));
  const nodeA = `spiffe://${TD}/node/node-a`;
  const theirs = await csrFor(nodeA);
  const ours = await csrFor(nodeA);
  const foreign = cluster1.mtls(theirs.keyPem, ca2.signCsr(theirs.csr, nodeA).certChain);
  const own = cluster1.mtls(ours.keyPem, ca1.signCsr(ours.csr, nodeA).certChain);
  try {
    const err = await rejection(foreign.createCertificate(payments, (await csrFor(payments)).csr));
    assert.equal(grpcCode(err), 'UNAUTHENTICATED');
    assert.deepEqual(cluster1.outcomes, ['unauthenticated']);
    const entry = cluster1.logs.find((l) => l.msg === 'certificate refused');
    assert.match(String(entry?.reason), /node certificate for spiffe:\/\/cluster\.local\/node\/node-a was not issued by this controller's CA/);
    assert.equal(entry?.identity, payments);
    // This cluster's own node-a, with a certificate from the same root, is served as before.
    const res = await own.createCertificate(payments, (await csrFor(payments)).csr);
    assert.ok(new X509Certificate(res.certChain[0]!).subjectAltName?.includes(payments));
    assert.deepEqual(cluster1.outcomes, ['unauthenticated', 'issued']);
  } finally {
    foreign.close();
    own.close();
    cluster1.close();
  }
});

// Rule: CA/Browser Forum Baseline Requirements 6.1.5 and NIST SP 800-131A: RSA of at least 2048
// bits, ECDSA on P-256/P-384/P-521 (Istio's CA, through Go's crypto/x509, refuses the others).
test('a CSR whose key is weak or off-profile (RSA 512 and 1024, EC P-192, secp256k1) is refused INVALID_ARGUMENT, counted invalid and logged with the key; P-256, P-384, P-521 and RSA 2048 are signed (BR 6.1.5, NIST SP 800-131A)', async () => {
  const { generateKeyPairSync } = await import('node:crypto');
  const web = id('default', 'web');
  const h = await serveCa(ca, placement);
  const key = (type: 'rsa' | 'ec', param: number | string) => (type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: param as number }) : generateKeyPairSync('ec', { namedCurve: param as string })).privateKey;
  const nodeA = await (async () => {
    const k = await csrFor(`spiffe://${TD}/node/node-a`);
    return h.mtls(k.keyPem, ca.signCsr(k.csr, `spiffe://${TD}/node/node-a`).certChain);
  })();
  try {
    const refused: Array<[string, ReturnType<typeof key>, RegExp]> = [
      ['RSA 512', key('rsa', 512), /RSA key of 512 bits is too weak/],
      ['RSA 1024', key('rsa', 1024), /RSA key of 1024 bits is too weak/],
      ['EC P-192', key('ec', 'prime192v1'), /EC curve prime192v1 is not accepted/],
      ['EC secp256k1', key('ec', 'secp256k1'), /EC curve secp256k1 is not accepted/],
    ];
    for (const [label, k, reason] of refused) {
      const err = await rejection(nodeA.createCertificate(web, createCsr(web, k)));
      assert.equal(grpcCode(err), 'INVALID_ARGUMENT', label);
      assert.match(String(h.logs.at(-1)?.reason), reason, label);
      assert.equal(h.outcomes.at(-1), 'invalid', label);
    }
    assert.deepEqual(h.outcomes, ['invalid', 'invalid', 'invalid', 'invalid']);
    for (const [label, k] of [['EC P-256', key('ec', 'prime256v1')], ['EC P-384', key('ec', 'secp384r1')], ['EC P-521', key('ec', 'secp521r1')], ['RSA 2048', key('rsa', 2048)]] as const) {
      const res = await nodeA.createCertificate(web, createCsr(web, k));
      assert.ok(new X509Certificate(res.certChain[0]!).subjectAltName?.includes(web), label);
    }
    assert.deepEqual(h.outcomes.slice(4), ['issued', 'issued', 'issued', 'issued']);
  } finally {
    nodeA.close();
    h.close();
  }
});

// What a CSR asks for beyond its key and its one URI SAN is not the requester's to decide (Istio's CA
// builds the certificate from the key and the authorised identity alone, pkg/security/pkg/pki/util
// GenCertFromCSR): a node that asks for CA:TRUE and keyCertSign (RFC 5280 4.2.1.9, 4.2.1.3), a DNS
// or IP SAN, or a subject naming the API server gets a leaf for its identity only. And an identity
// spelt otherwise than the SPIFFE ID spec's one form (an upper-case trust domain, percent-encoding,
// an empty or trailing segment, a path past /sa/<name>) is refused, not matched loosely.
test('a CSR asking for CA:TRUE, keyCertSign, DNS and IP SANs and a subject gets a leaf with only its URI SAN; identities spelt otherwise are refused INVALID_ARGUMENT, counted invalid and logged', async () => {
  const web = id('default', 'web');
  const h = await serveCa(ca, placement);
  const nodeA = await (async () => {
    const k = await csrFor(`spiffe://${TD}/node/node-a`);
    return h.mtls(k.keyPem, ca.signCsr(k.csr, `spiffe://${TD}/node/node-a`).certChain);
  })();
  try {
    const { privateKey } = await generateKeyPair();
    const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
    const asked = seq(
      extension(OID.subjectAltName, true, generalNames({ uris: [web], dnsNames: ['kubernetes.default.svc'], ipAddresses: ['10.96.0.1'] })),
      extension(OID.basicConstraints, true, seq(bool(true))),
      extension(OID.keyUsage, true, keyUsageValue([KeyUsage.digitalSignature, KeyUsage.keyCertSign, KeyUsage.cRLSign])),
    );
    const subject = buildName([[OID.organization, 'system:masters'], [OID.commonName, 'kube-apiserver']]);
    const greedy = toPem('CERTIFICATE REQUEST', signStructure(seq(smallInt(0), subject, spki, ctx(0, true, seq(oid(OID.extensionRequest), set(asked)))), privateKey));
    const leaf = new X509Certificate((await nodeA.createCertificate(web, greedy)).certChain[0]!);
    assert.equal(leaf.ca, false, 'not a CA');
    assert.equal(leaf.subjectAltName, `URI:${web}`, 'its URI SAN only');
    assert.equal(leaf.subject, '', 'no subject');
    assert.ok(!leaf.checkIssued(leaf), 'not self-issued');
    assert.deepEqual(h.outcomes, ['issued']);
    for (const spelt of [`spiffe://CLUSTER.LOCAL/ns/default/sa/web`, `spiffe://${TD}/ns/default/sa/web/`, `spiffe://${TD}/ns/default/sa/web/extra`,
      `spiffe://${TD}/ns/default%2Fsa/web`, `spiffe://${TD}//ns/default/sa/web`, `SPIFFE://${TD}/ns/default/sa/web`]) {
      const err = await rejection(nodeA.createCertificate(spelt, (await csrFor(spelt)).csr));
      assert.equal(grpcCode(err), 'INVALID_ARGUMENT', spelt);
      assert.equal(h.outcomes.at(-1), 'invalid', spelt);
      assert.match(String(h.logs.at(-1)?.reason), /requested identity is invalid/, spelt);
    }
  } finally {
    nodeA.close();
    h.close();
  }
});

// Istio's CA refuses a requested TTL past its maximum (pkg/security/pkg/pki/ca/ca.go: "requested TTL
// ... is greater than the max allowed TTL"); Weft's cut it silently to the maximum.
test('a request for a longer lifetime than the CA grants (validitySeconds past the maximum) is refused INVALID_ARGUMENT naming validitySeconds, counted invalid and logged; the maximum itself and 0 (the default) are signed', async () => {
  const web = id('default', 'web');
  const h = await serveCa(ca, placement);
  const nodeA = await nodeCertClient(h, ca, 'node-a');
  try {
    const max = DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS / 1000;
    const err = await rejection(nodeA.createCertificate(web, (await csrFor(web)).csr, max + 1));
    assert.equal(grpcCode(err), 'INVALID_ARGUMENT');
    assert.match(String(h.logs.at(-1)?.reason), new RegExp(`validitySeconds ${max + 1} .* greater than the ${max} s this CA grants`));
    assert.deepEqual(h.outcomes, ['invalid']);
    for (const asked of [max, 0]) {
      const res = await nodeA.createCertificate(web, (await csrFor(web)).csr, asked);
      const cert = new X509Certificate(res.certChain[0]!);
      const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
      assert.ok(asked === 0 ? days < 1.1 : days > 6.9 && days < 7.1, `${asked}: ${cert.validTo}`);
    }
    assert.deepEqual(h.outcomes, ['invalid', 'issued', 'issued']);
  } finally {
    nodeA.close();
    h.close();
  }
});

/** A node certificate of `served`'s for `node`, in an mTLS client of `h`. */
async function nodeCertClient(h: Awaited<ReturnType<typeof serveCa>>, served: CertificateAuthority, node: string) {
  const nodeId = `spiffe://${TD}/node/${node}`;
  const k = await csrFor(nodeId);
  return h.mtls(k.keyPem, served.signCsr(k.csr, nodeId).certChain);
}

// A compromised node, or a pod with any token, must not make the CA sign or ask the API server
// without bound: the budget is checked before the TokenReview or the signature it would cost.
test('a node past its certificate budget is refused RESOURCE_EXHAUSTED, counted rate_limited and logged, other nodes are still served, and the budget refills after its interval', async () => {
  let now = 1_000_000;
  const web = id('default', 'web');
  const db = id('default', 'db');
  const h = await serveCa(ca, placement, { limits: { perNode: { requests: 3, intervalMs: 10_000 } }, clock: () => now });
  const nodeA = await nodeCertClient(h, ca, 'node-a');
  const nodeB = await nodeCertClient(h, ca, 'node-b');
  try {
    for (let i = 0; i < 3; i++) await nodeA.createCertificate(web, (await csrFor(web)).csr);
    const err = await rejection(nodeA.createCertificate(web, (await csrFor(web)).csr));
    assert.equal(grpcCode(err), 'RESOURCE_EXHAUSTED');
    assert.ok(err instanceof CaUnavailableError, 'the agent retries it with backoff, as it retries an unavailable CA');
    assert.deepEqual(h.outcomes, ['issued', 'issued', 'issued', 'rate_limited']);
    const entry = h.logs.find((l) => l.msg === 'certificate refused');
    assert.equal(entry?.node, 'node-a');
    assert.match(String(entry?.reason), /node node-a sent more than 3 certificate requests in 10 s; retry in 10 s/);
    await nodeB.createCertificate(db, (await csrFor(db)).csr);
    now += 10_000;
    await nodeA.createCertificate(web, (await csrFor(web)).csr);
    assert.deepEqual(h.outcomes.slice(4), ['issued', 'issued']);
  } finally {
    nodeA.close();
    nodeB.close();
    h.close();
  }
});

test('bearer-token requests past the per-address budget are refused before the token is checked (no TokenReview spent), counted rate_limited', async () => {
  const checked: string[] = [];
  const inner = new StaticTokenAuthenticator(TOKENS);
  const authenticator: NodeAuthenticator = { authenticate: (t) => (checked.push(t), inner.authenticate(t)) };
  const h = await serveCa(ca, placement, { authenticator, limits: { perTokenAddress: { requests: 2, intervalMs: 60_000 } } });
  const forged = h.token('forged-token-0123456789');
  try {
    const nodeA = `spiffe://${TD}/node/node-a`;
    for (let i = 0; i < 2; i++) assert.equal(grpcCode(await rejection(forged.createCertificate(nodeA, (await csrFor(nodeA)).csr))), 'UNAUTHENTICATED');
    for (let i = 0; i < 5; i++) assert.equal(grpcCode(await rejection(forged.createCertificate(nodeA, (await csrFor(nodeA)).csr))), 'RESOURCE_EXHAUSTED');
    assert.equal(checked.length, 2, 'only the requests within the budget reached the authenticator');
    assert.deepEqual(h.outcomes, ['unauthenticated', 'unauthenticated', 'rate_limited', 'rate_limited', 'rate_limited', 'rate_limited', 'rate_limited']);
    assert.ok(h.logs.some((l) => l.msg === 'certificate refused' && /client 127\.0\.0\.1 \(bearer token\) sent more than 2 certificate requests in 60 s/.test(String(l.reason))));
  } finally {
    forged.close();
    h.close();
  }
});

test('token checks waited on at once are capped: one past the cap is refused RESOURCE_EXHAUSTED at once, the others complete', async () => {
  const waiting: Array<() => void> = [];
  const inner = new StaticTokenAuthenticator(TOKENS);
  const authenticator: NodeAuthenticator = { authenticate: (t) => new Promise<void>((r) => waiting.push(r)).then(() => inner.authenticate(t)) };
  const h = await serveCa(ca, placement, { authenticator, limits: { tokenChecksInFlight: 2 } });
  const client = h.token(TOKENS['node-a']);
  const nodeA = `spiffe://${TD}/node/node-a`;
  try {
    const slow = [client.createCertificate(nodeA, (await csrFor(nodeA)).csr), client.createCertificate(nodeA, (await csrFor(nodeA)).csr)];
    await until('two token checks waiting', () => waiting.length === 2, 5_000);
    assert.equal(grpcCode(await rejection(client.createCertificate(nodeA, (await csrFor(nodeA)).csr))), 'RESOURCE_EXHAUSTED');
    assert.match(String(h.logs.find((l) => l.msg === 'certificate refused')?.reason), /2 token checks are already in progress; retry/);
    for (const release of waiting) release();
    for (const res of await Promise.all(slow)) assert.equal(res.certChain.length, 1);
    assert.deepEqual(h.outcomes.sort(), ['issued', 'issued', 'rate_limited']);
  } finally {
    client.close();
    h.close();
  }
});

test('refusal log lines are capped at 50 a second and the rest summed up in one line; every refusal is counted', async () => {
  let now = 5_000_000;
  const h = await serveCa(ca, placement, { clock: () => now, limits: { perTokenAddress: { requests: 1_000, intervalMs: 10_000 } } });
  const forged = h.token('forged-token-0123456789');
  const nodeA = `spiffe://${TD}/node/node-a`;
  const { csr } = await csrFor(nodeA);
  try {
    await Promise.all(Array.from({ length: 60 }, () => rejection(forged.createCertificate(nodeA, csr))));
    assert.equal(h.outcomes.length, 60);
    assert.equal(h.logs.filter((l) => l.msg === 'certificate refused').length, 50);
    now += 1_000;
    await rejection(forged.createCertificate(nodeA, csr));
    assert.equal(h.logs.find((l) => l.msg === 'certificate refusals not logged')?.count, 10);
    assert.equal(h.logs.filter((l) => l.msg === 'certificate refused').length, 51);
  } finally {
    forged.close();
    h.close();
  }
});

test('trust bundle watches are bounded per client address: one past the bound ends RESOURCE_EXHAUSTED, counted and logged; closing one makes room', async () => {
  let refused = 0;
  const h = await serveCa(ca, placement, { limits: { watchesPerAddress: 3 }, onWatchRefused: () => refused++ });
  const client = h.token('any-caller-0123456789');
  const cancels: Array<() => void> = [];
  try {
    const roots: string[][] = [];
    for (let i = 0; i < 3; i++) cancels.push(await client.watchTrustBundle((r) => roots.push(r), () => undefined));
    await until('three watches served their roots', () => roots.length === 3, 5_000);
    let ended: IdentityError | undefined;
    cancels.push(await client.watchTrustBundle(() => assert.fail('a watch past the bound got roots'), (err) => (ended = err)));
    await until('the fourth watch ended', () => ended !== undefined, 5_000);
    assert.equal(grpcCode(ended), 'RESOURCE_EXHAUSTED');
    assert.equal(refused, 1);
    assert.match(String(h.logs.find((l) => l.msg === 'trust bundle watch refused')?.reason), /client 127\.0\.0\.1 already holds 3 trust bundle watches/);
    cancels.shift()!();
    await until('the server let the cancelled watch go', async () => {
      let got = false;
      const cancel = await client.watchTrustBundle(() => (got = true), () => undefined);
      const deadline = Date.now() + 500;
      while (!got && Date.now() < deadline) await new Promise((r) => setImmediate(r));
      cancel();
      return got;
    }, 5_000);
  } finally {
    for (const c of cancels) c();
    client.close();
    h.close();
  }
});
