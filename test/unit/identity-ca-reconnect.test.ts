// The certificate service client when the controller goes away and comes back on the same
// address: a call that found no connection drops its channel, so the first call after the return
// connects at once. gRPC's own reconnect backoff (1 s, then 1.6× more each time) would otherwise
// fail every call without trying until it ran out, on top of the caller's retry schedule.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { CertificateServiceClient } from '../../lib/identity/ca-client.ts';
import { createCsr, generateKeyPair } from '../../lib/identity/csr.ts';
import { CaUnavailableError } from '../../lib/identity/errors.ts';
import { addCertificateService, createControllerCredentials, StaticTokenAuthenticator } from '../../controller/src/ca/index.ts';
import { TD, id } from './identity-fixtures.ts';

const CONTROLLER = id('weft-system', 'weft-controller');
const TOKEN = 'token-a-0123456789abcdef';
const NODE = `spiffe://${TD}/node/node-a`;

const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
const creds = await createControllerCredentials(ca, { identity: CONTROLLER, ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] });
after(() => creds.close());

/** A certificate service on 127.0.0.1:`port` (0: any). */
async function startService(port = 0): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  addCertificateService(server, { ca, authenticator: new StaticTokenAuthenticator({ 'node-a': TOKEN }), pods: { identitiesOnNode: () => new Set() } });
  const bound = await new Promise<number>((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, creds.credentials, (err, p) => (err ? reject(err) : resolve(p))));
  return { server, port: bound };
}

async function sign(client: CertificateServiceClient): Promise<{ ok: true } | { ok: false; error: unknown }> {
  const { privateKey } = await generateKeyPair();
  try {
    await client.createCertificate(NODE, createCsr(NODE, privateKey));
    return { ok: true };
  } catch (error) {
    return { ok: false, error };
  }
}

test('calls fail as unavailable while the controller is down, and the first call after it is back succeeds at once', async () => {
  let svc = await startService();
  const client = new CertificateServiceClient({ address: `127.0.0.1:${svc.port}`, trustBundle: ca.trustBundle(), serverIdentity: CONTROLLER, credentials: { kind: 'token', token: () => TOKEN } });
  after(() => client.close());
  assert.deepEqual(await sign(client), { ok: true });

  svc.server.forceShutdown();
  // Two failed calls in a row: the second one used to find the channel in gRPC's reconnect backoff.
  for (let i = 0; i < 2; i++) {
    const r = await sign(client);
    assert.equal(r.ok, false, 'nothing listens');
    assert.ok(!r.ok && r.error instanceof CaUnavailableError, `a retryable CaUnavailableError, not ${String(!r.ok && r.error)}`);
    assert.match((r.error as Error).message, /UNAVAILABLE/);
  }

  svc = await startService(svc.port);
  after(() => svc.server.forceShutdown());
  const started = performance.now();
  const r = await sign(client);
  const ms = performance.now() - started;
  assert.ok(r.ok, `the first call after the controller returned succeeds: ${r.ok ? '' : (r.error as Error).message}`);
  console.log(`# first call after the return: signed in ${ms.toFixed(0)} ms`);
  assert.ok(ms < 800, `without waiting for a reconnect backoff (${ms.toFixed(0)} ms)`);
});

test('the trust bundle stream can be reopened at once after the controller returns', async () => {
  let svc = await startService();
  const client = new CertificateServiceClient({ address: `127.0.0.1:${svc.port}`, trustBundle: ca.trustBundle(), serverIdentity: CONTROLLER, credentials: { kind: 'token', token: () => TOKEN } });
  after(() => client.close());
  const watch = () => new Promise<{ roots?: string[]; error?: Error }>((resolve) => {
    void client.watchTrustBundle((roots) => resolve({ roots }), (error) => resolve({ error })).then((cancel) => after(cancel));
  });
  assert.ok((await watch()).roots?.length, 'the stream delivers the roots');

  svc.server.forceShutdown();
  for (let i = 0; i < 2; i++) {
    const r = await watch();
    assert.ok(r.error instanceof CaUnavailableError, `the stream fails as unavailable while nothing listens (${r.error?.message ?? 'roots?'})`);
  }

  svc = await startService(svc.port);
  after(() => svc.server.forceShutdown());
  const started = performance.now();
  const r = await watch();
  const ms = performance.now() - started;
  assert.deepEqual(r.roots, ca.trustBundle(), `reopened after the return: ${r.error?.message ?? ''}`);
  assert.ok(ms < 800, `at once (${ms.toFixed(0)} ms)`);
});
