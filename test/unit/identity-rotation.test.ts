// Root rotation through the whole chain: controller CA + gRPC certificate service, an agent cert
// manager following the trust bundle stream, and HBONE handshakes between its workloads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { addCertificateService, createControllerCredentials, StaticTokenAuthenticator } from '../../controller/src/ca/index.ts';
import { CertManager, GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { EchoServer, TD, connectHbone, id } from './identity-fixtures.ts';

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('agents follow a root rotation pushed by the CA and every HBONE handshake along the way succeeds', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const controller = id('weft-system', 'weft-controller');
  const creds = await createControllerCredentials(ca, { identity: controller, ipAddresses: ['127.0.0.1'] });
  const server = new grpc.Server();
  const web = id('default', 'web');
  const api = id('default', 'api');
  addCertificateService(server, {
    ca,
    authenticator: new StaticTokenAuthenticator({ 'node-a': 'node-a-bootstrap-token-000' }),
    pods: { identitiesOnNode: () => new Set([web, api, id('default', 'late')]) },
    log: () => undefined,
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds.credentials, (e, p) => (e ? reject(e) : resolve(p))));
  t.after(() => {
    creds.close();
    server.forceShutdown();
  });
  const signer = new GrpcCertificateSigner({
    address: `127.0.0.1:${port}`, trustBundle: ca.trustBundle(), serverIdentity: controller, token: () => 'node-a-bootstrap-token-000',
    trustDomain: TD, nodeName: 'node-a',
  });
  const m = new CertManager({ signer, trustBundle: ca.trustBundle() });
  t.after(() => m.close());
  const oldRoot = new X509Certificate(ca.trustBundle()[0]!);
  const issuedBy = async (identity: string) => new X509Certificate((await m.get(identity)).certChain[0]!).verify(oldRoot.publicKey) ? 'old' : 'new';

  // Phase 1: old root.
  const srv = await EchoServer.start(await m.get(api));
  t.after(() => srv.close());
  const refreshServer = async () => srv.update(await m.get(api));
  const longLived = await connectHbone(srv.port, await m.get(web), api);
  assert.equal(await issuedBy(web), 'old');

  // Phase 2: the CA signs with a new root and publishes old+new; the agent renews everything.
  const rotated = new Set<string>();
  m.on('rotated', (info) => rotated.add(info.identity));
  const next = await CertificateAuthority.generateRoot({ trustDomain: TD });
  ca.rotateTo(next);
  await until(() => m.trustBundle().length === 2, 'the agent to learn the new bundle');
  // The inbound server takes the new bundle (the agent does this on 'trustBundleChanged'); its
  // certificate may still be the old-root one while renewals are in flight.
  await refreshServer();
  (await connectHbone(srv.port, await m.get(web), api)).socket.destroy();
  await until(() => rotated.has(web) && rotated.has(api), 'both identities to renew');
  assert.equal(await issuedBy(web), 'new');
  // New-root client, server still on its old-root certificate with old+new trusted.
  (await connectHbone(srv.port, await m.get(web), api)).socket.destroy();
  await refreshServer();
  (await connectHbone(srv.port, await m.get(web), api)).socket.destroy();
  assert.equal(await longLived.echo('during'), 'during');

  // Phase 3: only the new root.
  rotated.clear();
  ca.retirePreviousRoots();
  await until(() => m.trustBundle().length === 1, 'the agent to drop the old root');
  assert.deepEqual(m.trustBundle(), next.trustBundle());
  await until(() => rotated.has(web) && rotated.has(api), 'renewal after the bundle change');
  await refreshServer();
  (await connectHbone(srv.port, await m.get(web), api)).socket.destroy();
  assert.equal(await longLived.echo('after'), 'after');
  longLived.socket.destroy();
  // The agent still reaches the CA (controller now serves a new-root certificate).
  const late = await m.get(id('default', 'late'));
  assert.ok(new X509Certificate(late.certChain[0]!).verify(new X509Certificate(next.trustBundle()[0]!).publicKey));
});
