/**
 * Test PKI for the HBONE tests (a CA and leaf certificates with SPIFFE URI SANs, made with
 * node-forge) and the loopback fixtures the hbone-*.test.ts files share.
 */
import { generateKeyPairSync } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import forge from 'node-forge';
import { HboneServer } from '../../lib/hbone/index.ts';
import { newSerial } from '../../lib/identity/index.ts';
import type { HboneConnectHandler, HboneConnectOptions, HboneServerOptions } from '../../lib/hbone/index.ts';

export interface TestLeaf {
  key: string;
  cert: string;
  /** The issuing CA's certificate (the trust bundle). */
  ca: string;
  spiffeId: string | undefined;
}

export interface TestCa {
  cert: string;
  key: string;
  /** A leaf for `spiffeId` (or without a URI SAN when undefined), usable as client and server; `ips` as IP SANs (an https server on loopback). */
  issue(spiffeId: string | undefined, ips?: readonly string[]): TestLeaf;
}

function newKey(): { pem: string; forgeKey: forge.pki.rsa.PrivateKey; forgePub: forge.pki.rsa.PublicKey } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(pem) as forge.pki.rsa.PrivateKey;
  const forgePub = forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e);
  return { pem, forgeKey, forgePub };
}

// node-forge writes the serial's hex as given: the product's serial is positive and minimal in DER.
const serial = (): string => newSerial().toString('hex');

export function createTestCa(commonName = 'Weft Test CA'): TestCa {
  const caKey = newKey();
  const caCert = forge.pki.createCertificate();
  caCert.publicKey = caKey.forgePub;
  caCert.serialNumber = serial();
  caCert.validity.notBefore = new Date(Date.now() - 60_000);
  caCert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  const caName = [{ name: 'commonName', value: commonName }, { name: 'organizationName', value: 'weft' }];
  caCert.setSubject(caName);
  caCert.setIssuer(caName);
  caCert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  caCert.sign(caKey.forgeKey, forge.md.sha256.create());
  const caPem = forge.pki.certificateToPem(caCert);

  return {
    cert: caPem,
    key: caKey.pem,
    issue(spiffeId, ips = []) {
      const k = newKey();
      const c = forge.pki.createCertificate();
      c.publicKey = k.forgePub;
      c.serialNumber = serial();
      c.validity.notBefore = new Date(Date.now() - 60_000);
      c.validity.notAfter = new Date(Date.now() + 3600_000);
      c.setSubject([{ name: 'organizationName', value: 'weft' }]);
      c.setIssuer(caCert.subject.attributes);
      const extensions: object[] = [
        { name: 'basicConstraints', cA: false, critical: true },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
        { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
        { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
      ];
      const altNames: object[] = [...(spiffeId !== undefined ? [{ type: 6, value: spiffeId }] : []), ...ips.map((ip) => ({ type: 7, ip }))];
      if (altNames.length > 0) extensions.push({ name: 'subjectAltName', critical: true, altNames });
      c.setExtensions(extensions);
      c.sign(caKey.forgeKey, forge.md.sha256.create());
      return { key: k.pem, cert: forge.pki.certificateToPem(c), ca: caPem, spiffeId };
    },
  };
}

// ---- Fixtures shared by the hbone-*.test.ts files ----

export const SERVER_ID = 'spiffe://test.local/ns/dest/sa/server';
export const CLIENT_ID = 'spiffe://test.local/ns/src/sa/client';

/** A connect handler that dials the target over loopback TCP (half-open allowed). */
export function dialTarget(): HboneConnectHandler {
  return async (req) => {
    const up = connect({ host: req.target.host, port: req.target.port, allowHalfOpen: true, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      up.once('connect', resolve);
      up.once('error', reject);
    });
    return { upstream: up };
  };
}

/** Starts a TCP server on 127.0.0.1 with `onConnection`; returns it and its port. */
export async function tcpServer(onConnection: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

export interface HboneFixture {
  ca: TestCa;
  server: HboneServer;
  port: number;
  serverLeaf: TestLeaf;
  clientLeaf: TestLeaf;
  /** Connect options for the default client identity to `target`. */
  to(target: string, overrides?: Partial<HboneConnectOptions>): HboneConnectOptions;
  close(): Promise<void>;
}

/** An HboneServer with SERVER_ID on 127.0.0.1, plus a client leaf CLIENT_ID from the same CA. */
export async function startHbone(opts: Partial<HboneServerOptions> = {}, ca: TestCa = createTestCa()): Promise<HboneFixture> {
  const serverLeaf = ca.issue(SERVER_ID);
  const clientLeaf = ca.issue(CLIENT_ID);
  const server = new HboneServer({ tls: serverLeaf, handler: dialTarget(), ...opts });
  const { port } = await server.listen(0, '127.0.0.1');
  return {
    ca,
    server,
    port,
    serverLeaf,
    clientLeaf,
    to: (target, overrides = {}) => ({
      sourceKey: CLIENT_ID,
      tls: clientLeaf,
      dest: { host: '127.0.0.1', port },
      target,
      expectPeer: SERVER_ID,
      ...overrides,
    }),
    close: async () => { await server.close(200); },
  };
}

/** Reads a stream to its end. */
export function readAll(s: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}
