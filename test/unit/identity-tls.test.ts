// HBONE TLS verification with real handshakes over node:tls on 127.0.0.1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tlsConnect } from 'node:tls';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { IdentityError } from '../../lib/identity/errors.ts';
import { hboneClientOptions, workloadInTrustDomain } from '../../lib/identity/tls.ts';
import { EchoServer, TD, connectHbone, id, workloadCreds } from './identity-fixtures.ts';

const DAY = 24 * 3600 * 1000;
const client = id('default', 'client');
const server = id('default', 'server');

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) assert.fail('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function refused(p: Promise<unknown>): Promise<IdentityError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof IdentityError, `expected a typed IdentityError, got ${String(err)}`);
    return err;
  }
  assert.fail('handshake was expected to be refused but succeeded');
}

test('mutual TLS between two workloads of one CA succeeds and both sides see the peer SPIFFE ID', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const srv = await EchoServer.start(await workloadCreds(ca, server));
  t.after(() => srv.close());
  const conn = await connectHbone(srv.port, await workloadCreds(ca, client), server);
  assert.equal(conn.serverId, server);
  assert.deepEqual(srv.peers, [client]);
  assert.equal(conn.socket.getProtocol(), 'TLSv1.3');
  assert.equal(conn.socket.alpnProtocol, 'h2');
  conn.socket.destroy();
});

test('client refuses a server whose certificate was signed by a different CA', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const other = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const srv = await EchoServer.start(await workloadCreds(other, server));
  t.after(() => srv.close());
  const err = await refused(connectHbone(srv.port, await workloadCreds(ca, client), server));
  assert.equal(err.code, 'WEFT_TLS_PEER_UNTRUSTED');
});

test('server refuses a client whose certificate was signed by a different CA and reports it to the hook', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const other = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const srv = await EchoServer.start(await workloadCreds(ca, server));
  t.after(() => srv.close());
  const clientCreds = { ...(await workloadCreds(other, client)), trustBundle: ca.trustBundle() };
  // Node's TLS server closes without an alert, so only the server knows why.
  await refused(connectHbone(srv.port, clientCreds, server));
  await waitFor(() => srv.failures.length > 0);
  assert.equal(srv.failures[0]?.code, 'WEFT_TLS_PEER_UNTRUSTED');
  assert.deepEqual(srv.peers, []);
});

test('expired certificates are refused on both sides', async (t) => {
  let offset = -2 * DAY;
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD, clock: () => Date.now() + offset });
  const expiredServer = await workloadCreds(ca, server, { lifetimeMs: 3600_000 });
  const expiredClient = await workloadCreds(ca, client, { lifetimeMs: 3600_000 });
  offset = 0;
  const freshServer = await workloadCreds(ca, server);
  const freshClient = await workloadCreds(ca, client);

  const srvExpired = await EchoServer.start(expiredServer);
  t.after(() => srvExpired.close());
  const e1 = await refused(connectHbone(srvExpired.port, freshClient, server));
  assert.equal(e1.code, 'WEFT_TLS_PEER_EXPIRED');

  const srv = await EchoServer.start(freshServer);
  t.after(() => srv.close());
  await refused(connectHbone(srv.port, expiredClient, server));
  await waitFor(() => srv.failures.length > 0);
  assert.equal(srv.failures[0]?.code, 'WEFT_TLS_PEER_EXPIRED');
});

test('client refuses a trusted server whose SPIFFE ID is not the expected peer', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const srv = await EchoServer.start(await workloadCreds(ca, id('default', 'impostor')));
  t.after(() => srv.close());
  const hooked: string[] = [];
  const creds = await workloadCreds(ca, client);
  const err = await refused(connectHbone(srv.port, creds, server));
  assert.equal(err.code, 'WEFT_TLS_PEER_ID_MISMATCH');
  assert.match(err.message, /impostor.*server/s);
  // The counter hook sees the same refusal.
  await new Promise<void>((resolve) => {
    const s = tlsConnect({ host: '127.0.0.1', port: srv.port, ...hboneClientOptions(creds, server, (e, side) => hooked.push(`${side}:${e.code}`)) });
    s.on('error', () => resolve());
  });
  assert.deepEqual(hooked, ['client:WEFT_TLS_PEER_ID_MISMATCH']);
});

test('server refuses a client outside the accepted identities right after the handshake', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const srv = await EchoServer.start(await workloadCreds(ca, server), (peer) => peer.kind === 'workload' && peer.namespace === 'prod');
  t.after(() => srv.close());
  const err = await refused(connectHbone(srv.port, await workloadCreds(ca, client), server));
  assert.ok(err instanceof IdentityError);
  assert.equal(srv.failures[0]?.code, 'WEFT_TLS_PEER_ID_MISMATCH');
  const ok = await connectHbone(srv.port, await workloadCreds(ca, id('prod', 'client')), workloadInTrustDomain(TD));
  ok.socket.destroy();
});

test('a TLS 1.2 client is refused', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const srv = await EchoServer.start(await workloadCreds(ca, server));
  t.after(() => srv.close());
  const creds = await workloadCreds(ca, client);
  const err = await new Promise<Error>((resolve) => {
    const s = tlsConnect({ host: '127.0.0.1', port: srv.port, ...hboneClientOptions(creds, server), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
    s.on('error', resolve);
    s.on('secureConnect', () => resolve(new Error('unexpectedly connected')));
  });
  assert.match(String((err as Error & { code?: string }).code), /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|VERSION/);
});

test('root rotation: every handshake succeeds while trusting old+new roots and then only the new root', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const a = id('default', 'a');
  const b = id('default', 'b');

  // Phase 1: everything on the old root.
  let credsA = await workloadCreds(ca, a);
  let credsB = await workloadCreds(ca, b);
  const straggler = await workloadCreds(ca, id('default', 'straggler'));
  const srvA = await EchoServer.start(credsA);
  const srvB = await EchoServer.start(credsB);
  t.after(() => srvA.close());
  t.after(() => srvB.close());
  const longLived = await connectHbone(srvB.port, credsA, b);

  // Phase 2: sign with the new root, trust both. A moves to a new-root certificate, B not yet.
  const next = await CertificateAuthority.generateRoot({ trustDomain: TD });
  ca.rotateTo(next);
  assert.equal(ca.trustBundle().length, 2);
  credsB = { ...credsB, trustBundle: ca.trustBundle() };
  srvB.update(credsB);
  credsA = await workloadCreds(ca, a);
  srvA.update(credsA);
  (await connectHbone(srvB.port, credsA, b)).socket.destroy(); // new-root client → old-root server
  (await connectHbone(srvA.port, credsB, a)).socket.destroy(); // old-root client → new-root server
  assert.equal(await longLived.echo('phase2'), 'phase2');

  // B moves too.
  credsB = await workloadCreds(ca, b);
  srvB.update(credsB);
  (await connectHbone(srvB.port, credsA, b)).socket.destroy();

  // Phase 3: only the new root.
  ca.retirePreviousRoots();
  assert.deepEqual(ca.trustBundle(), next.trustBundle());
  credsA = { ...credsA, trustBundle: ca.trustBundle() };
  credsB = { ...credsB, trustBundle: ca.trustBundle() };
  srvA.update(credsA);
  srvB.update(credsB);
  (await connectHbone(srvB.port, credsA, b)).socket.destroy();
  (await connectHbone(srvA.port, credsB, a)).socket.destroy();
  assert.equal(await longLived.echo('phase3'), 'phase3');
  longLived.socket.destroy();

  // And a straggler still holding an old-root certificate is now refused.
  await refused(connectHbone(srvA.port, { ...straggler, trustBundle: ca.trustBundle() }, a));
  await waitFor(() => srvA.failures.length > 0);
  assert.equal(srvA.failures[0]?.code, 'WEFT_TLS_PEER_UNTRUSTED');
});
