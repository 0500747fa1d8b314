import { test } from 'node:test';
import net from 'node:net';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import * as grpc from '@grpc/grpc-js';
import { clusterDebugTokenReader, parseControllerArgs, runController, STOP_GRACE_MS, UsageError, type ControllerMainOptions } from '../../controller/src/main.ts';
import { DEBUG_TOKEN_HEADER } from '../../lib/debug-http.ts';
import { DEBUG_GRANT_HEADER, debugGrantAudience, verifyDebugGrant } from '../../lib/identity/debug-grant.ts';
import { captureLogger, type LogLine } from './controller-harness.ts';
import { silentLogger } from '../../controller/src/log.ts';
import { ConfigClient } from '../../lib/xds/client.ts';
import { CertificateServiceClient } from '../../lib/identity/ca-client.ts';
import { controllerSpiffeId } from '../../lib/defaults.ts';
import { until } from '../lab/wait.ts';
import { inFreshProcess } from '../lab/imports.ts';
import { authz, ns, pod } from './controller-fixtures.ts';

test('parses the controller flags and refuses a source that is not exactly one of --config-dir and --kube', () => {
  assert.deepEqual(parseControllerArgs(['--config-dir', '/etc/weft', '--grpc-port', '0', '--dns-name', 'a', '--dns-name', 'b']), { configDir: '/etc/weft', grpcPort: 0, dnsNames: ['a', 'b'] });
  assert.throws(() => parseControllerArgs(['--kube', '--config-dir', 'x']), UsageError);
  assert.throws(() => parseControllerArgs([]), { code: 'WEFT_USAGE' });
  assert.throws(() => parseControllerArgs(['--kube', '--grpc-port', '70000']), /--grpc-port: "70000" is not a port number/);
});

// The aliases go on to every waypoint's command line (waypoints-kube.ts waypointContainerArgs),
// where an invalid one would stop each waypoint from starting: refused here, at the controller's own flag.
test('refuses an invalid --trust-domain or --trust-domain-alias naming the flag', () => {
  assert.deepEqual(parseControllerArgs(['--kube', '--trust-domain', 'cluster1.local', '--trust-domain-alias', 'cluster2.local']), { kube: true, trustDomain: 'cluster1.local', trustDomainAliases: ['cluster2.local'] });
  assert.throws(() => parseControllerArgs(['--kube', '--trust-domain-alias', 'cluster2.local', '--trust-domain-alias', 'Cluster3 local']), (e: unknown) => e instanceof UsageError && /^--trust-domain-alias: trust domain "Cluster3 local" is invalid/.test(e.message));
  assert.throws(() => parseControllerArgs(['--kube', '--trust-domain', 'a/b']), (e: unknown) => e instanceof UsageError && /^--trust-domain: trust domain "a\/b" is invalid/.test(e.message));
});

test('the controller serves config, /healthz/ready and /metrics on its ports', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-main-'));
  writeFileSync(join(dir, 'mesh.yaml'), [ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web')].map((o) => stringify(o)).join('---\n'));
  const running = await runController({ configDir: dir, insecure: true, listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: silentLogger });
  const client = new ConfigClient({ target: `127.0.0.1:${running.grpcPort}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a' });
  try {
    const ready = await fetch(`http://127.0.0.1:${running.readyPort}/healthz/ready`);
    assert.equal(ready.status, 200);
    client.start();
    const cfg = await client.ready();
    assert.deepEqual(cfg.workloads.map((w) => w.name), ['web']);
    const metrics = await (await fetch(`http://127.0.0.1:${running.metricsPort}/metrics`)).text();
    assert.match(metrics, /weft_xds_pushes_total\{type="Workload"\} [1-9]/);
    assert.match(metrics, /weft_controller_compiles_total [1-9]/);
    const dump = await (await fetch(`http://127.0.0.1:${running.adminPort}/debug/model`)).json() as { workloads: Array<{ name: string }> };
    assert.deepEqual(dump.workloads.map((w) => w.name), ['web']);
    const clients = await (await fetch(`http://127.0.0.1:${running.adminPort}/debug/clients`)).json() as { clients: Array<{ id: string }> };
    assert.deepEqual(clients.clients.map((c) => c.id), ['node-a']);
  } finally {
    client.close();
    await running.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

// Istio's trust-domain migration (https://istio.io/latest/docs/tasks/security/authorization/authz-td-migration/,
// pilot trustdomain.Bundle): the controller compiles principals for its --trust-domain and each
// --trust-domain-alias, so every agent and waypoint receives them expanded.
test('the controller compiles AuthorizationPolicy principals for its --trust-domain and --trust-domain-alias', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-main-td-'));
  const policy = authz('shop', 'from-client', { action: 'ALLOW', rules: [{ from: [{ source: { principals: ['old-td/ns/other/sa/client'] } }] }] });
  writeFileSync(join(dir, 'mesh.yaml'), [ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), policy].map((o) => stringify(o)).join('---\n'));
  const running = await runController({ configDir: dir, insecure: true, trustDomain: 'new-td', trustDomainAliases: ['old-td'], listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: silentLogger });
  try {
    const dump = await (await fetch(`http://127.0.0.1:${running.adminPort}/debug/model`)).json() as { policies: Array<{ name: string; rules: Array<{ from: Array<{ principals?: string[] }> }> }> };
    assert.deepEqual(dump.policies.find((p) => p.name === 'from-client')?.rules[0]?.from[0]?.principals, ['new-td/ns/other/sa/client', 'old-td/ns/other/sa/client']);
  } finally {
    await running.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A controller over TLS with the certificate service (bootstrap token `TOKEN` for node-a) on a config directory of `objects`; `cleanup` removes its folders (after its stop). */
const TOKEN = '0123456789abcdef0123';
async function tlsController(objects: object[], extra: Partial<Pick<ControllerMainOptions, 'requireClientIdentity' | 'debugEndpoints' | 'debugToken' | 'logger'>> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'weft-main-tls-'));
  writeFileSync(join(dir, 'mesh.yaml'), objects.map((o) => stringify(o)).join('---\n'));
  const secrets = mkdtempSync(join(tmpdir(), 'weft-main-secrets-'));
  writeFileSync(join(secrets, 'tokens.yaml'), `node-a: ${TOKEN}\n`);
  const running = await runController({
    configDir: dir, bootstrapTokensFile: join(secrets, 'tokens.yaml'),
    listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: silentLogger, ...extra,
  });
  return {
    running,
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
      rmSync(secrets, { recursive: true, force: true });
    },
  };
}

test('over TLS the config stream verifies against the controller CA and can require node certificates', async () => {
  const { running, cleanup } = await tlsController([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web')], { requireClientIdentity: true });
  const roots = Buffer.from(running.ca!.trustBundle().join(''));
  const node = await running.ca!.issueServingCertificate({ uris: ['spiffe://cluster.local/node/node-a'], dnsNames: [], ipAddresses: [] });
  const withCert = new ConfigClient({
    target: `127.0.0.1:${running.grpcPort}`, kind: 'agent', id: 'node-a',
    credentials: grpc.credentials.createSsl(roots, Buffer.from(node.keyPem), Buffer.from(node.certChain.join(''))),
  });
  const without = new ConfigClient({ target: `127.0.0.1:${running.grpcPort}`, kind: 'agent', id: 'node-a', credentials: grpc.credentials.createSsl(roots), backoff: { initialMs: 5000 } });
  try {
    withCert.start();
    assert.deepEqual((await withCert.ready()).workloads.map((w) => w.name), ['web']);
    const refused = new Promise<Error | undefined>((r) => without.once('disconnected', r));
    without.start();
    assert.match(String((await refused)?.message), /PERMISSION_DENIED/);
  } finally {
    withCert.close();
    without.close();
    await running.stop();
    cleanup();
  }
});

test('over TLS the config stream refuses a client without a certificate by default (secure by default: no flag needed); --allow-anonymous-clients is the explicit opt-out', async () => {
  const { running, cleanup } = await tlsController([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web')]);
  const roots = Buffer.from(running.ca!.trustBundle().join(''));
  const anonymous = new ConfigClient({ target: `127.0.0.1:${running.grpcPort}`, kind: 'agent', id: 'node-a', credentials: grpc.credentials.createSsl(roots), backoff: { initialMs: 5000 } });
  try {
    const refused = new Promise<Error | string>((r) => {
      anonymous.once('disconnected', (err?: Error) => r(err ?? 'disconnected without an error'));
      anonymous.once('snapshot', () => r('an anonymous client was served config'));
      setTimeout(() => r('no refusal within 10 s'), 10_000).unref();
    });
    anonymous.start();
    assert.match(String((await refused as Error).message ?? await refused), /PERMISSION_DENIED/);
  } finally {
    anonymous.close();
    await running.stop();
    cleanup();
  }
  assert.equal(parseControllerArgs(['--config-dir', '/x', '--allow-anonymous-clients']).requireClientIdentity, false);
  assert.equal(parseControllerArgs(['--config-dir', '/x']).requireClientIdentity, undefined);
  assert.throws(() => parseControllerArgs(['--config-dir', '/x', '--allow-anonymous-clients', '--require-client-identity']), /give one of --require-client-identity or --allow-anonymous-clients/);
});

// The controller's /debug paths on its metrics port (every pod reaches it) want the install's
// debug token, checked as the agents check it (lib/debug-http.ts admitDebugRequest), as istiod's
// debug endpoints on its HTTP port want a credential unless asked from localhost (port-forward)
// (https://istio.io/latest/docs/ops/integrations/integration-guide/debug-endpoints/, "Authentication
// requirements", ENABLE_DEBUG_ENDPOINT_AUTH on by default): what they show (every client's
// identity and versions) is no tenant's to read. A waypoint's debug grant is signed only for a
// holder of the token.
test('the controller\'s debug paths on its metrics port answer only the install\'s debug token; a waypoint debug grant is signed for it alone; each refusal counted and logged', async () => {
  let token: string | undefined = 'install-debug-token-0123456789abcdef';
  const logs: LogLine[] = [];
  const { running, cleanup } = await tlsController([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' })], { debugEndpoints: true, debugToken: () => token, logger: captureLogger(logs) });
  const at = (path: string, headers: Record<string, string> = {}) => fetch(`http://127.0.0.1:${running.metricsPort}${path}`, { headers }).then(async (r) => ({ status: r.status, body: await r.text() }));
  const refused = async (why: string) => Number(new RegExp(`^weft_controller_listener_refused_total\\{listener="metrics",reason="debug-token-${why}"\\} (\\d+)$`, 'm').exec((await at('/metrics')).body)?.[1] ?? 0);
  try {
    // Another pod: no token, a wrong one.
    for (const headers of [{}, { [DEBUG_TOKEN_HEADER]: 'guess' }] as Array<Record<string, string>>) {
      const r = await at('/debug/clients', headers);
      assert.equal(r.status, 403, r.body);
      assert.match(r.body, /wants the install's debug token in the weft-debug-token header/);
      assert.doesNotMatch(r.body, /systemVersion/);
    }
    const grantPath = '/debug/waypoint-grant?waypoint=shop%2Fwaypoint&pod=waypoint-7d9f-x2x4z';
    const noGrant = await at(grantPath);
    assert.equal(noGrant.status, 403, 'no grant without the token');
    assert.doesNotMatch(noGrant.body, /grant"/);
    // Labelled debug-token-<why>, as a waypoint's are debug-grant-<why>.
    assert.equal(await refused('missing'), 2);
    assert.equal(await refused('wrong'), 1);
    const lines = logs.filter((l) => l.msg === 'status listener refused a request' && String(l.fields['reason']).startsWith('debug-token-'));
    assert.deepEqual(lines.map((l) => `${String(l.fields['detail']).split(':')[0]} ${String(l.fields['reason'])}`), ['/debug/clients debug-token-missing', '/debug/clients debug-token-wrong', `${grantPath} debug-token-missing`]);
    // weftctl, with the token through the pod proxy.
    const ok = await at('/debug/clients', { [DEBUG_TOKEN_HEADER]: token! });
    assert.equal(ok.status, 200, ok.body);
    assert.ok('systemVersion' in JSON.parse(ok.body));
    const signed = await at(grantPath, { [DEBUG_TOKEN_HEADER]: token! });
    assert.equal(signed.status, 200, signed.body);
    const g = JSON.parse(signed.body) as { grant: string; audience: string; header: string; expires: string };
    assert.equal(g.audience, debugGrantAudience('shop', 'waypoint', 'waypoint-7d9f-x2x4z'));
    assert.equal(g.header, DEBUG_GRANT_HEADER);
    assert.equal(verifyDebugGrant(g.grant, g.audience, [new X509Certificate(running.ca!.signingCertificate()).publicKey]).expires.toISOString(), g.expires);
    assert.ok(Date.parse(g.expires) - Date.now() <= 5 * 60_000, 'for minutes');
    // A waypoint that is not <namespace>/<name>, or no pod name, is named.
    for (const bad of ['shop', 'shop/waypoint/x', 'Shop/waypoint', '../x']) {
      const r = await at(`/debug/waypoint-grant?waypoint=${encodeURIComponent(bad)}&pod=waypoint-0`, { [DEBUG_TOKEN_HEADER]: token! });
      assert.equal(r.status, 400, bad);
      assert.match(r.body, /^\{"error":"waypoint: .* is not <namespace>\/<name>/);
    }
    for (const bad of ['', '../x', 'Pod', 'a'.repeat(254)]) {
      const r = await at(`/debug/waypoint-grant?waypoint=shop%2Fwaypoint&pod=${encodeURIComponent(bad)}`, { [DEBUG_TOKEN_HEADER]: token! });
      assert.equal(r.status, 400, bad);
      assert.match(r.body, /^\{"error":"pod: .* is not the name of one of the waypoint's pods/);
    }
    // Until the Secret could be read, every request is refused.
    token = undefined;
    assert.equal((await at('/debug/clients', { [DEBUG_TOKEN_HEADER]: 'install-debug-token-0123456789abcdef' })).status, 403);
    assert.equal(await refused('unset'), 1);
  } finally {
    await running.stop();
    cleanup();
  }
  // A local mesh's controller (no token): /debug/clients and grants to anyone, as that mesh's agents
  // answer their /debug paths; without --debug-endpoints neither.
  const local = await tlsController([], { debugEndpoints: true });
  try {
    assert.equal((await fetch(`http://127.0.0.1:${local.running.metricsPort}/debug/clients`)).status, 200);
    const g = await fetch(`http://127.0.0.1:${local.running.metricsPort}/debug/waypoint-grant?waypoint=shop%2Fwaypoint&pod=waypoint-0`);
    assert.equal(g.status, 200);
    assert.equal(((await g.json()) as { audience: string }).audience, 'waypoint-debug:shop/waypoint/waypoint-0');
  } finally {
    await local.running.stop();
    local.cleanup();
  }
  const closed = await tlsController([], {});
  try {
    for (const path of ['/debug/clients', '/debug/waypoint-grant?waypoint=shop%2Fwaypoint&pod=waypoint-0']) {
      assert.equal((await fetch(`http://127.0.0.1:${closed.running.metricsPort}${path}`)).status, 404, path);
    }
  } finally {
    await closed.running.stop();
    closed.cleanup();
  }
});

test('the controller reads its debug token at start and again at most every minute, in the background and only when asked: a rotated token is taken, a failed read keeps the one held, and no request waits on the API server', async () => {
  let t = 0;
  let reads = 0;
  let answer: Promise<{ token: string | undefined }> = Promise.resolve({ token: 'tok-0' });
  const read = () => { reads++; return answer; };
  const held = await clusterDebugTokenReader(read, silentLogger, () => t);
  for (t = 0; t < 60_000; t += 10_000) assert.equal(held(), 'tok-0');
  assert.equal(reads, 1, 'read once within the first minute');
  // Rotated by the operator: taken at the next read, a minute on.
  answer = Promise.resolve({ token: 'tok-rotated' });
  t = 60_001;
  assert.equal(held(), 'tok-0', 'the request is answered with what is held');
  await until('the rotated token read in the background', () => held() === 'tok-rotated', 5_000);
  assert.equal(reads, 2);
  // The API server down: the token held stays.
  answer = Promise.reject(new Error('connection refused'));
  t = 2 * 60_000 + 2;
  assert.equal(held(), 'tok-rotated');
  await until('the failed read done', () => { t += 1; return reads === 3; }, 5_000);
  assert.equal(held(), 'tok-rotated', 'kept after a failed read');
  // The API server did not answer at start: every /debug request refused meanwhile, asked again after a minute.
  t = 0;
  const none = await clusterDebugTokenReader(read, silentLogger, () => t);
  assert.equal(none(), undefined);
  answer = Promise.resolve({ token: 'tok-1' });
  t = 60_001;
  assert.equal(none(), undefined);
  await until('the token read in the background', () => none() === 'tok-1', 5_000);
});

test('SIGTERM\'s stop ends within its grace even when a client never finishes its TLS handshake (it once held the controller open for good)', async () => {
  const { running, cleanup } = await tlsController([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' })]);
  // A TCP connection to the TLS port that sends no ClientHello: a connection, not yet an HTTP/2
  // session, so grpc-js's forced shutdown does not cut it and the server's close waits on it.
  const stalled = net.connect(running.grpcPort, '127.0.0.1');
  await once(stalled, 'connect');
  try {
    const started = Date.now();
    await running.stop();
    const ms = Date.now() - started;
    assert.ok(ms < STOP_GRACE_MS + 2_000, `stopped ${ms} ms after it was asked (grace ${STOP_GRACE_MS} ms)`);
  } finally {
    stalled.destroy();
    cleanup();
  }
});

test('the stop ends the agents\' trust bundle watches itself (the watcher hears it and reconnects elsewhere) instead of waiting out its grace', async () => {
  const { running, cleanup } = await tlsController([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' })]);
  const client = new CertificateServiceClient({
    address: `127.0.0.1:${running.grpcPort}`, trustBundle: running.ca!.trustBundle(), serverIdentity: controllerSpiffeId('cluster.local', 'weft-system'),
    credentials: { kind: 'token', token: () => TOKEN },
  });
  try {
    let roots = 0;
    const ended = new Promise<Error>((resolve) => {
      void client.watchTrustBundle((r) => { roots = r.length; }, resolve);
    });
    await until('the watch got the roots', () => roots > 0, 5_000);
    const started = Date.now();
    await running.stop();
    const ms = Date.now() - started;
    assert.ok(ms < STOP_GRACE_MS, `stopped in ${ms} ms, within the grace of ${STOP_GRACE_MS} ms it used to wait out`);
    assert.match((await ended).message, /trust bundle stream .* ended; reconnect|unavailable/);
  } finally {
    client.close();
    cleanup();
  }
});

test('--waypoint-service-accounts and --waypoint-images set the Waypoint allow-list; "default" is refused', () => {
  assert.deepEqual(parseControllerArgs(['--kube', '--waypoint-service-accounts', 'a,b', '--waypoint-images', 'r/x:1', '--waypoint-images', 'r/y*']).waypointAllowList, { serviceAccounts: ['a', 'b'], images: ['r/x:1', 'r/y*'] });
  assert.throws(() => parseControllerArgs(['--kube', '--waypoint-service-accounts', 'default']), /"default" is never allowed/);
});

test('a controller serving a config directory never loads @kubernetes/client-node (about 88 MB); Kubernetes mode loads it through kube-mode.ts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-main-nokube-'));
  writeFileSync(join(dir, 'mesh.yaml'), stringify(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' })));
  const tokens = join(dir, '..', `${dir.split('/').pop()}-tokens.yaml`);
  writeFileSync(tokens, `node-a: ${TOKEN}\n`);
  // A fresh process (test/lab/imports.ts) records every import of client-node and who asked,
  // around a full start and stop with the CA.
  const main = new URL('../../controller/src/main.ts', import.meta.url).href;
  const kubeMode = new URL('../../controller/src/kube-mode.ts', import.meta.url).href;
  const body = `
    const { runController } = await import(${JSON.stringify(main)});
    const running = await runController({ configDir: ${JSON.stringify(dir)}, bootstrapTokensFile: ${JSON.stringify(tokens)}, listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: { debug() {}, info() {}, warn() {}, error() {} } });
    await running.stop();
    const configDir = [...seen];
    await import(${JSON.stringify(kubeMode)});
    console.log(JSON.stringify({ configDir, kubeMode: seen.length > configDir.length }));
    process.exit(0);
  `;
  try {
    const r = await inFreshProcess<{ configDir: string[]; kubeMode: boolean }>(body, ['@kubernetes/client-node']);
    assert.deepEqual(r.configDir, [], 'modules that imported client-node in config-directory mode');
    assert.equal(r.kubeMode, true, 'the hook sees client-node when kube-mode.ts loads (the control)');
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(tokens, { force: true });
  }
});
