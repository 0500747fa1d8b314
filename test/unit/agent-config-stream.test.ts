// The agent's config stream (agent/src/config-stream.ts) and its node certificate
// (agent/src/certs/signer.ts) across a change of the controller's intermediate under the same root:
// Istio's plug-in CA rotated (https://istio.io/latest/docs/tasks/security/cert-management/plugin-ca-cert/,
// the operator replaces `cacerts` and restarts istiod; workloads keep working since the root is
// unchanged). Weft's controller takes a node certificate only from its own CA (controller/src/xds/authz.ts:
// clusters share the root and name their nodes alike), so after the restart every agent's node
// certificate, from the intermediate before, is refused on the config stream. The agent renews it
// at once, with backoff, and when the CA's trust-bundle stream announces a signer that did not
// issue it; another cluster's node certificate stays refused (test/unit/controller-xds.test.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { ConfigServer, addConfigStreamService } from '../../controller/src/xds/server.ts';
import { spiffeStreamAuthorizer, type NodeCertificateIssuer } from '../../controller/src/xds/authz.ts';
import { StaticTokenAuthenticator, addCertificateService, createControllerCredentials } from '../../controller/src/ca/index.ts';
import { CertificateAuthority, parseCertificate } from '../../lib/identity/index.ts';
import { GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { NodeConfigStream } from '../../agent/src/config-stream.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { validateAgentConfig } from '../../agent/src/state.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import { captureLogger, type LogLine } from './controller-harness.ts';
import { ns, pod } from './controller-fixtures.ts';
import { holds, until } from '../lab/wait.ts';

const TD = 'cluster.local';
const CONTROLLER_ID = `spiffe://${TD}/ns/weft-system/sa/weft-controller`;
const TOKEN = 'node-a-bootstrap-token-0123456789';

async function clusterCa(root: CertificateAuthority, name: string): Promise<CertificateAuthority> {
  const inter = await root.issueIntermediate(name);
  return CertificateAuthority.fromPem({ certPem: inter.certPem, keyPem: inter.keyPem, rootsPem: inter.rootPem }, { trustDomain: TD });
}

function model(pods: string[]) {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  for (const [n, name] of pods.entries()) i.pods.push(pod('shop', name, { ip: `10.3.0.${n + 1}` }));
  return compile(i).model;
}

/**
 * An in-process controller (config stream with client certificates required, certificate service)
 * on `ca`, restartable on another CA at the same port, as the operator restarts it on new cacerts.
 */
function controller() {
  let server: grpc.Server | undefined;
  let close: (() => void) | undefined;
  let port = 0;
  const c = {
    signed: 0,
    publish: (_pods: string[]): void => {},
    get address() {
      return `127.0.0.1:${port}`;
    },
    /** Starts serving; with `pods` null it publishes no config (streams are authorized, never answered) until publish(). */
    async start(ca: CertificateAuthority, pods: string[] | null, issuer: NodeCertificateIssuer = ca): Promise<void> {
      const creds = await createControllerCredentials(ca, { identity: CONTROLLER_ID, ipAddresses: ['127.0.0.1'], dnsNames: ['weft-controller'] });
      const configServer = new ConfigServer({ authorize: spiffeStreamAuthorizer(TD, issuer) });
      c.publish = (p) => configServer.publish(model(p));
      if (pods) c.publish(pods);
      server = new grpc.Server();
      addConfigStreamService(server, { configServer });
      addCertificateService(server, {
        ca, authenticator: new StaticTokenAuthenticator({ 'node-a': TOKEN }), pods: { identitiesOnNode: () => new Set() }, log: () => {},
        onOutcome: (o) => { if (o === 'issued') c.signed++; },
      });
      const s = server;
      port = await new Promise<number>((res, rej) => s.bindAsync(`127.0.0.1:${port}`, creds.credentials, (e, p) => (e ? rej(e) : res(p))));
      close = () => {
        s.forceShutdown();
        creds.close();
      };
    },
    stop(): void {
      close?.();
      close = undefined;
    },
  };
  return c;
}

function agentSide(address: string, root: CertificateAuthority, opts: { onNodeCertificateDue?: () => void } = {}) {
  const logs: LogLine[] = [];
  const metrics = new AgentMetrics();
  const signer = new GrpcCertificateSigner({
    address, trustBundle: root.trustBundle(), serverIdentity: CONTROLLER_ID, token: () => TOKEN, trustDomain: TD, nodeName: 'node-a',
    ...(opts.onNodeCertificateDue ? { onNodeCertificateDue: opts.onNodeCertificateDue } : {}),
  });
  let config: AgentConfig | undefined;
  const stream = new NodeConfigStream({
    node: 'node-a', controller: address, controllerId: CONTROLLER_ID, signer, trustBundle: () => root.trustBundle(),
    validate: (c) => validateAgentConfig(c), onConfig: (c) => { config = c; }, log: captureLogger(logs), renewals: metrics.nodeCertificateRenewals,
  });
  const renewals = async (reason: string) => Number(new RegExp(`^weft_node_certificate_renewals_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(await metrics.registry.metrics())?.[1] ?? 0);
  const pods = () => (config?.workloads ?? []).map((w) => w.name).sort();
  return { logs, signer, stream, renewals, pods, close: () => { stream.close(); signer.close(); } };
}

describe('the agent\'s config stream after the controller moved to a new intermediate under the same root', () => {
  it('renews the node certificate the restarted controller refuses and has config again within seconds; the renewal is counted config-stream-refused and logged with the controller\'s reason', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const ctl = controller();
    await ctl.start(await clusterCa(root, 'cluster-a'), ['web']);
    const agent = agentSide(ctl.address, root);
    try {
      agent.stream.open();
      await until('the agent has its first config', () => agent.pods().join() === 'web', 15_000);
      const before = (await agent.signer.nodeCredentials()).certChain[0]!;

      // The operator replaces cacerts with a new intermediate of the same root and restarts the controller.
      ctl.stop();
      const next = await clusterCa(root, 'cluster-a');
      await ctl.start(next, ['web', 'api']);
      await until('the agent has the restarted controller\'s config', () => agent.pods().join() === 'api,web' && agent.stream.connected, 10_000);

      const now = (await agent.signer.nodeCredentials()).certChain[0]!;
      assert.notEqual(now, before);
      assert.ok(next.issued(parseCertificate(now).der), 'the node certificate is the new intermediate\'s');
      assert.equal(await agent.renewals('config-stream-refused'), 1);
      const line = agent.logs.find((l) => l.msg === 'renewing the node certificate for the config stream');
      assert.equal(line?.level, 'warn');
      assert.equal(line?.fields['reason'], 'config-stream-refused');
      assert.match(String(line?.fields['detail']), /PERMISSION_DENIED.*not issued by this controller's CA/);
    } finally {
      agent.close();
      ctl.stop();
    }
  });

  it('a controller that keeps refusing the node certificate gets renewals with backoff, not one per refused stream', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const ctl = controller();
    // Refuses every node certificate, however new (as a controller still on the intermediate before would).
    await ctl.start(await clusterCa(root, 'cluster-a'), ['web'], { issued: () => false });
    const agent = agentSide(ctl.address, root);
    try {
      agent.stream.open();
      await until('the refused stream asks for a new node certificate', async () => (await agent.renewals('config-stream-refused')) >= 2, 10_000);
      const signed = ctl.signed;
      // Backoff from 250 ms doubling (±20 %): at most 5 more renewals in 6 s (250+500+1000+2000 ms, then 4 s).
      await holds('renewals stay within the backoff', () => ctl.signed - signed <= 5, 6_000, { intervalMs: 100 });
      assert.ok(ctl.signed - signed >= 1, 'still renewing meanwhile');
      assert.equal(agent.stream.connected, false);
    } finally {
      agent.close();
      ctl.stop();
    }
  });
});

describe('the config stream\'s renewals of its node certificate (agent/src/config-stream.ts)', () => {
  it('one announcement of a new signer and new roots is one renewal: counted, logged and the stream opened again once', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const ctl = controller();
    await ctl.start(await clusterCa(root, 'cluster-a'), ['web']);
    const agent = agentSide(ctl.address, root);
    try {
      agent.stream.open();
      await until('the agent has its first config', () => agent.pods().join() === 'web' && agent.stream.connected, 15_000);
      const before = (await agent.signer.nodeCredentials()).certChain[0]!;
      const signed = ctl.signed;
      // As agent.ts calls them for one WatchTrustBundle message: the signer's check, then the roots.
      agent.stream.renew('signer-changed');
      agent.stream.renew('roots-changed');
      await until('the stream is up again with a new node certificate', async () => agent.stream.connected && (await agent.signer.nodeCredentials()).certChain[0] !== before, 10_000);
      assert.equal(await agent.renewals('signer-changed'), 1);
      assert.equal(await agent.renewals('roots-changed'), 0, 'the second ask joined the renewal on its way');
      assert.equal(ctl.signed - signed, 1);
      assert.equal(agent.logs.filter((l) => l.msg === 'renewing the node certificate for the config stream').length, 1);
    } finally {
      agent.close();
      ctl.stop();
    }
  });

  it('renews nothing: the stream being replaced refused again while the new node certificate was on its way, and the new one is not renewed for it', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const ctl = controller();
    const leaves: string[] = [];
    const ca = await clusterCa(root, 'cluster-a');
    // Refuses the first node certificate only, as a restarted controller refuses the one from the intermediate before.
    // It publishes no config until the test does: the new stream is up and not yet answered (an answer clears a pending renewal too).
    await ctl.start(ca, null, { issued: (der) => ca.issued(der) && (leaves[0] === undefined || !parseCertificate(leaves[0]).der.equals(der)) });
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const logs: LogLine[] = [];
    let renewalAsked = -1;
    const metrics = new AgentMetrics();
    const real = new GrpcCertificateSigner({ address: ctl.address, trustBundle: root.trustBundle(), serverIdentity: CONTROLLER_ID, token: () => TOKEN, trustDomain: TD, nodeName: 'node-a' });
    // The renewal's answer waits for the test: the stream being replaced keeps being refused meanwhile.
    const signer = {
      async nodeCredentials() {
        if (leaves.length > 0) {
          renewalAsked = logs.length;
          await gate;
        }
        const c = await real.nodeCredentials();
        leaves.push(c.certChain[0]!);
        return c;
      },
      renewNodeCertificate: (leaf: string) => real.renewNodeCertificate(leaf),
    };
    // The first refusal renews at once; the second waits a minute, far past the test: the new stream must clear it, not outrun it.
    const refusedBackoff = { initialMs: 50, multiplier: 1_200, maxMs: 60_000, jitter: 0 };
    const stream = new NodeConfigStream({
      node: 'node-a', controller: ctl.address, controllerId: CONTROLLER_ID, signer, trustBundle: () => root.trustBundle(),
      validate: (c) => validateAgentConfig(c), onConfig: () => {}, log: captureLogger(logs), renewals: metrics.nodeCertificateRenewals, refusedBackoff,
    });
    const renewals = async () => Number(/^weft_node_certificate_renewals_total\{reason="config-stream-refused"\} (\d+)$/m.exec(await metrics.registry.metrics())?.[1] ?? 0);
    try {
      stream.open();
      await until('the refused stream asks for a new node certificate', () => renewalAsked >= 0, 10_000);
      await until('the stream being replaced is refused again meanwhile', () => logs.slice(renewalAsked).some((l) => l.msg === 'config stream disconnected; serving the last good config'), 10_000);
      // That refusal's renewal waits its turn (the second wait, armed when the refusal was seen).
      assert.equal(stream.refusalRenewalWaiting, true, 'the stale refusal armed a renewal');
      release();
      await until('the stream is opened with the new node certificate', () => leaves.length === 2, 10_000);
      await until('the new stream clears the stale refusal\'s waiting renewal', () => !stream.refusalRenewalWaiting, 10_000);
      assert.deepEqual([leaves.length, await renewals()], [2, 1], 'the new node certificate is not renewed for the stale refusal');
      ctl.publish(['web']);
      await until('the new stream is answered', () => stream.connected, 10_000);
      assert.equal(leaves.length, 2);
    } finally {
      release();
      stream.close();
      real.close();
      ctl.stop();
    }
  });
});

describe('the node certificate when the CA announces another signer (agent/src/certs/signer.ts)', () => {
  it('is renewed once per announcement of a signer that did not issue it, and the holder is told', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const ctl = controller();
    await ctl.start(await clusterCa(root, 'cluster-a'), []);
    let due = 0;
    const agent = agentSide(ctl.address, root, { onNodeCertificateDue: () => due++ });
    const before = (await agent.signer.nodeCredentials()).certChain[0]!;
    // The signer is told before the watcher (signer.ts watchTrustBundle).
    const seen: (string | undefined)[] = [];
    const stop = agent.signer.watchTrustBundle((_roots, signer) => seen.push(signer));
    try {
      await until('the CA announced the signer that issued the node certificate', () => seen.length >= 1, 10_000);
      assert.equal(due, 0, 'an announcement of the signer that issued it renews nothing');
      assert.equal((await agent.signer.nodeCredentials()).certChain[0], before);
      ctl.stop();
      const next = await clusterCa(root, 'cluster-a');
      await ctl.start(next, []);
      await until('the holder is told its node certificate is due', () => due === 1, 10_000);
      const now = (await agent.signer.nodeCredentials()).certChain[0]!;
      assert.notEqual(now, before);
      assert.ok(next.issued(parseCertificate(now).der));
      assert.equal((await agent.signer.nodeCredentials()).certChain[0], now, 'renewed once');
    } finally {
      stop();
      agent.close();
      ctl.stop();
    }
  });
});
