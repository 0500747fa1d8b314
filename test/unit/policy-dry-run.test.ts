// Istio's `istio.io/dry-run` annotation on an AuthorizationPolicy
// (https://istio.io/latest/docs/tasks/security/authorization/authz-dry-run/; the annotation:
// https://istio.io/latest/docs/reference/config/annotations/#IstioDryRun): the policy is not
// enforced, its would-be verdict is logged and counted. Istio builds two shadow engines, the dry-run
// DENY policies and the dry-run ALLOW policies, each with its own result ("Limitations": "two
// separate dry-run results ... for ALLOW and DENY policies"), under the access-log keys
// istio_dry_run_{allow,deny}_shadow_{engine_result,effective_policy_id} and the stat tags
// authz_dry_run_action / authz_dry_run_result. Values are read as Go's strconv.ParseBool, and
// Istio's validation (pkg/config/validation checkDryRunAnnotation) refuses any other value, and the
// annotation on an action other than ALLOW and DENY. ztunnel (src/state.rs assert_rbac) judges
// dry-run policies apart from the enforced ones and only logs their matches.
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';
import { connect as h2connect } from 'node:http2';
import { PassThrough } from 'node:stream';
import { createSecureContext } from 'node:tls';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { Registry } from 'prom-client';
import { connectTcp } from '../../agent/src/connect.ts';
import { Inbound } from '../../agent/src/inbound.ts';
import { silentLogger } from '../../lib/log.ts';
import { createTestCa, tcpServer } from './hbone-certs.ts';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import type { AgentConfig, AuthorizationPolicy as CompiledPolicy, Workload } from '../../lib/model/mesh.ts';
import type { AuthorizationPolicy } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { CompiledPolicies, dryRunLabels, dryRunOf, evaluate, type DryRunResult } from '../../lib/policy/authz.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { CALLER, config, echo, endpoint, metricSamples, request, service, startHttpBackend, startTunnelListener, type Backend, type Listener } from '../../waypoint/testing/harness.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';
import { describePod } from '../../cli/commands/describe.ts';
import { compileObjects } from '../../cli/mesh-view.ts';
import { buildGraph } from '../../cli/dashboard/graph.ts';
import type { RawObject } from '../../controller/src/sources/source.ts';
import { startHarness, until } from './controller-harness.ts';

const TASK = 'https://istio.io/latest/docs/tasks/security/authorization/authz-dry-run/';
const FRONTEND = 'spiffe://cluster.local/ns/web/sa/frontend';
const OTHER = 'spiffe://cluster.local/ns/other/sa/client';
const DB_IP = '10.1.8.8';
const SEL = { matchLabels: { app: 'db' } };
const DRY = 'istio.io/dry-run';
const ANNOTATION_PATH = `metadata.annotations["${DRY}"]`;

function annotated(p: AuthorizationPolicy, value: string | undefined): AuthorizationPolicy {
  const { annotations: _old, ...meta } = p.metadata;
  return { ...p, metadata: { ...meta, ...(value === undefined ? {} : { annotations: { [DRY]: value } }) } };
}
const denyCaller = (name: string, principal: string, namespace = 'shop') =>
  authz(namespace, name, { selector: SEL, action: 'DENY', rules: [{ from: [{ source: { principals: [principal.replace('spiffe://', '')] } }] }] });
const allowCaller = (name: string, principal: string, namespace = 'shop') =>
  authz(namespace, name, { selector: SEL, action: 'ALLOW', rules: [{ from: [{ source: { principals: [principal.replace('spiffe://', '')] } }] }] });

/** shop/db under `policies`, compiled as the agent of its node receives it. */
function meshOf(policies: AuthorizationPolicy[]): { config: AgentConfig; policies: Map<string, CompiledPolicy> } {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('weft-system'), ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('other', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: DB_IP }), pod('other', 'db', { labels: { app: 'db' }, ip: '10.1.9.9' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.60'));
  inputs.authorizationPolicies.push(...policies);
  const { model } = compile(inputs);
  return {
    config: { node: 'node-a', workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [...model.policies.values()], peerAuthentications: [...model.peerAuthentications.values()], waypoints: [] },
    policies: model.policies,
  };
}

interface Judged { verdict: 'allowed' | 'denied'; dryRun: DryRunResult[] | undefined; metrics: AgentMetrics; lines: Array<{ msg: string; fields: Record<string, unknown> }>; policy?: string | undefined }

/** The agent's judgement of `principal` (through a waypoint carrying `caller`, if given) to shop/db. */
function judge(config: AgentConfig, principal: string | undefined, caller?: string): Judged {
  const state = new AgentState('node-a');
  state.apply(config);
  const lines: Judged['lines'] = [];
  const at = (msg: string, fields: Record<string, unknown> = {}) => { lines.push({ msg, fields }); };
  const log = { debug: at, info: at, warn: at, error: at };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const db = state.localWorkload(DB_IP)!;
  try {
    const dryRun = principal === undefined ? delivery.authorizePlaintext(db, 8080, '10.1.0.1') : delivery.authorize(db, 8080, { sourcePrincipal: principal, sourceIp: '10.1.0.1' }, caller);
    return { verdict: 'allowed', dryRun, metrics, lines };
  } catch (err) {
    if (!(err instanceof DeniedError)) throw err;
    return { verdict: 'denied', dryRun: err.dryRun, metrics, lines, policy: err.policy };
  }
}

async function dryRunCount(m: AgentMetrics | Registry, labels: Record<string, string>): Promise<number> {
  const registry = m instanceof Registry ? m : m.registry;
  const values = (await registry.getSingleMetric('weft_authz_dry_run_total')?.get())?.values ?? [];
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((n, v) => n + v.value, 0);
}

async function deniedCount(m: AgentMetrics): Promise<number> {
  const values = (await m.registry.getSingleMetric('weft_connections_denied_total')?.get())?.values ?? [];
  return values.filter((v) => v.labels.reason === 'policy').reduce((n, v) => n + v.value, 0);
}

describe(`a dry-run policy at an agent is judged in shadow, never enforced (${TASK})`, () => {
  it('a dry-run DENY naming the caller does not refuse it, and is counted and logged as a shadow deny naming the policy', async () => {
    const { config } = meshOf([annotated(denyCaller('deny-other', OTHER), 'true')]);
    const j = judge(config, OTHER);
    assert.equal(j.verdict, 'allowed');
    assert.deepEqual(j.dryRun?.map(({ action, result, policy }) => ({ action, result, policy })), [{ action: 'DENY', result: 'denied', policy: 'shop/deny-other' }]);
    assert.equal(await dryRunCount(j.metrics, { policy: 'shop/deny-other', authz_dry_run_action: 'deny', authz_dry_run_result: 'denied' }), 1);
    assert.equal(await deniedCount(j.metrics), 0);
    const line = j.lines.find((l) => l.msg === 'connection dry-run denied');
    assert.equal(line?.fields.policy, 'shop/deny-other');
    assert.equal(line?.fields.allowed, true);
    // Another caller: the shadow engine would have allowed it.
    const f = judge(config, FRONTEND);
    assert.equal(f.verdict, 'allowed');
    assert.deepEqual(f.dryRun?.map(({ action, result }) => ({ action, result })), [{ action: 'DENY', result: 'allowed' }]);
    assert.equal(await dryRunCount(f.metrics, { authz_dry_run_action: 'deny', authz_dry_run_result: 'allowed' }), 1);
  });

  it('a dry-run ALLOW that would not admit the caller does not refuse it (with no enforced ALLOW, nothing is required), and says it would have', async () => {
    const { config } = meshOf([annotated(allowCaller('only-frontend', FRONTEND), 'true')]);
    for (const principal of [OTHER, undefined]) {
      const j = judge(config, principal);
      assert.equal(j.verdict, 'allowed', `${principal ?? 'plaintext'} is delivered`);
      assert.deepEqual(j.dryRun?.map(({ action, result, policy, policies }) => ({ action, result, policy, policies })), [{ action: 'ALLOW', result: 'denied', policy: undefined, policies: 1 }]);
      // No dry-run ALLOW matched: Envoy's shadow_effective_policy_id is empty, so is the label.
      assert.equal(await dryRunCount(j.metrics, { policy: '', authz_dry_run_action: 'allow', authz_dry_run_result: 'denied' }), 1);
      assert.ok(j.lines.some((l) => l.msg === 'connection dry-run denied' && l.fields.engine === 'ALLOW' && l.fields.policy === undefined && l.fields.dryRunPolicies === 1));
    }
    const f = judge(config, FRONTEND);
    assert.deepEqual(f.dryRun?.map(({ result, policy }) => ({ result, policy })), [{ result: 'allowed', policy: 'shop/only-frontend' }]);
  });

  it('a dry-run DENY naming the caller a waypoint carries does not refuse it either, and the shadow engine judges the caller as the enforced DENYs do', () => {
    const waypoint = 'spiffe://cluster.local/ns/shop/sa/waypoint';
    const { config } = meshOf([annotated(denyCaller('deny-other', OTHER), 'true')]);
    const j = judge(config, waypoint, OTHER);
    assert.equal(j.verdict, 'allowed');
    assert.deepEqual(j.dryRun?.map(({ result, policy }) => ({ result, policy })), [{ result: 'denied', policy: 'shop/deny-other' }]);
  });

  it('enforced policies beside dry-run ones keep deciding: an enforced DENY still refuses (counted, named), an enforced ALLOW still refuses whom it does not name', async () => {
    const { config } = meshOf([
      denyCaller('deny-other', OTHER),
      annotated(allowCaller('dry-allow-other', OTHER), 'true'),
      annotated(denyCaller('dry-deny-frontend', FRONTEND), 'true'),
    ]);
    const other = judge(config, OTHER);
    assert.equal(other.verdict, 'denied');
    assert.equal(other.policy, 'shop/deny-other');
    assert.equal(await deniedCount(other.metrics), 1);
    const line = other.lines.find((l) => l.msg === 'connection denied');
    assert.equal(line?.fields.policy, 'shop/deny-other');
    assert.equal(line?.fields.istio_dry_run_allow_shadow_engine_result, 'allowed');
    assert.equal(line?.fields.istio_dry_run_allow_shadow_effective_policy_id, 'shop/dry-allow-other');
    assert.equal(judge(config, FRONTEND).verdict, 'allowed');

    const allowOnly = meshOf([allowCaller('only-frontend', FRONTEND), annotated(allowCaller('dry-allow-all', OTHER), 'true')]).config;
    const o = judge(allowOnly, OTHER);
    assert.equal(o.verdict, 'denied', 'a dry-run ALLOW admits no one');
    assert.equal(o.policy, 'shop/only-frontend', 'the refusal names the enforced ALLOW only');
    assert.deepEqual(o.dryRun?.map(({ result, policy }) => ({ result, policy })), [{ result: 'allowed', policy: 'shop/dry-allow-all' }]);
  });

  it('the annotation is read as Go\'s strconv.ParseBool reads it: 1, t, T, TRUE, true, True are dry run; 0, f, F, FALSE, false, False enforce', () => {
    for (const v of ['1', 't', 'T', 'TRUE', 'true', 'True']) {
      const { policies, config } = meshOf([annotated(denyCaller('d', OTHER), v)]);
      assert.equal(policies.get('shop/d')?.dryRun, 'DENY', v);
      assert.equal(judge(config, OTHER).verdict, 'allowed', v);
    }
    for (const v of ['0', 'f', 'F', 'FALSE', 'false', 'False']) {
      const { policies, config } = meshOf([annotated(denyCaller('d', OTHER), v)]);
      assert.equal(policies.get('shop/d')?.dryRun, undefined, v);
      assert.equal(judge(config, OTHER).verdict, 'denied', v);
      assert.deepEqual(validateObject(annotated(denyCaller('d', OTHER), v)), [], v);
    }
  });

  it('no dry-run policy: no shadow result, nothing counted', async () => {
    const j = judge(meshOf([denyCaller('d', OTHER)]).config, FRONTEND);
    assert.equal(j.dryRun, undefined);
    assert.equal(await dryRunCount(j.metrics, {}), 0);
    assert.equal(evaluate(new CompiledPolicies([]), { destinationPort: 80 }).dryRun, undefined);
  });
});

test('the policy label names the dry-run policy that matched, and is empty when none did (Envoy\'s shadow_effective_policy_id): adding or removing a dry-run policy makes no new series, and a thousand make no long label or log line', async () => {
  const r: DryRunResult = { action: 'ALLOW', result: 'denied', policies: 1000, reason: 'x' };
  assert.deepEqual(dryRunLabels(r), { policy: '', authz_dry_run_action: 'allow', authz_dry_run_result: 'denied' });
  assert.equal(dryRunLabels({ ...r, policies: 2 }).policy, '', 'the same series with fewer dry-run policies');
  assert.equal(dryRunLabels({ ...r, result: 'allowed', policy: 'shop/dry-7' }).policy, 'shop/dry-7');
  const many = Array.from({ length: 50 }, (_, i) => annotated(allowCaller(`dry-${i}`, FRONTEND), 'true'));
  const j = judge(meshOf(many).config, OTHER);
  assert.equal(j.verdict, 'allowed');
  assert.equal(await dryRunCount(j.metrics, { policy: '', authz_dry_run_action: 'allow', authz_dry_run_result: 'denied' }), 1, 'counted once, under policy=""');
  const lines = j.lines.filter((l) => l.msg === 'connection dry-run denied');
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.fields.dryRunPolicies, 50, 'the log line counts the dry-run policies, not lists them');
  assert.ok(JSON.stringify(lines[0]!.fields).length < 1000);
});

// Attacker side: the annotation weakens only the policy it is on. A tenant's dry-run policy in its
// own namespace (even one named like another namespace's policy) leaves every other namespace's
// policies enforced; the refusal they make is counted and named.
test('a tenant cannot use dry-run to weaken another namespace\'s enforced policy: only the annotated policy itself is in dry run', async () => {
  const { config, policies } = meshOf([
    denyCaller('deny-other', OTHER),
    annotated(denyCaller('deny-other', OTHER, 'other'), 'true'),
    annotated(allowCaller('admit-all', OTHER, 'other'), 'true'),
  ]);
  assert.equal(policies.get('shop/deny-other')?.dryRun, undefined);
  assert.equal(policies.get('other/deny-other')?.dryRun, 'DENY');
  const j = judge(config, OTHER);
  assert.equal(j.verdict, 'denied');
  assert.equal(j.policy, 'shop/deny-other');
  assert.equal(j.dryRun, undefined, 'other namespace\'s dry-run policies do not apply to shop/db');
  assert.equal(await deniedCount(j.metrics), 1);
  assert.equal(j.lines.find((l) => l.msg === 'connection denied')?.fields.policy, 'shop/deny-other');
});

// pkg/config/validation checkDryRunAnnotation: a value strconv.ParseBool does not read, and the
// annotation on an action other than ALLOW or DENY, are validation errors (the webhook refuses the
// object, so the version before it stays in force).
test('a dry-run value Istio does not read, or the annotation on AUDIT, is refused at metadata.annotations["istio.io/dry-run"] (Istio checkDryRunAnnotation)', () => {
  for (const v of ['yes', 'on', '', ' true', 'TRUE ', 'tRUE', '2']) {
    const issues = validateObject(annotated(denyCaller('d', OTHER), v));
    assert.deepEqual(issues.map((i) => i.path), [ANNOTATION_PATH], JSON.stringify(v));
    assert.match(issues[0]!.message, /is not a boolean/);
  }
  const audit = authz('shop', 'watch', { selector: SEL, action: 'AUDIT', rules: [{}] });
  for (const v of ['true', 'false']) {
    const issues = validateObject(annotated(audit, v));
    assert.deepEqual(issues.map((i) => i.path), [ANNOTATION_PATH], v);
    assert.match(issues[0]!.message, /only action ALLOW or DENY/);
  }
  assert.deepEqual(validateObject(annotated(authz('shop', 'default-action', { selector: SEL, rules: [{}] }), 'true')), [], 'no action is ALLOW');
  // Istio refuses the annotation on its other kinds (validateAnnotationDryRun).
  const pa = { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'shop', annotations: { [DRY]: 'true' } }, spec: { mtls: { mode: 'STRICT' } } };
  assert.deepEqual(validateObject(pa).map((i) => i.path), [ANNOTATION_PATH]);
});

test('with the controller: a bad dry-run value keeps the last good version in force and is named in status; removing the annotation makes the policy enforced', async () => {
  const dry = annotated(denyCaller('deny-other', OTHER), 'true');
  const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'db', { labels: { app: 'db' }, ip: DB_IP }), dry]);
  const registry = new Registry();
  const h = await startHarness(source, undefined, { registry });
  try {
    const agent = h.agent('node-a');
    await until('the dry-run policy reaches the agent', () => agent.snapshot?.policies.some((p) => p.name === 'deny-other' && p.dryRun === 'DENY') === true);
    assert.equal(judge(agent.snapshot!, OTHER).verdict, 'allowed');

    const bad = { ...annotated(dry, 'maybe'), metadata: { ...annotated(dry, 'maybe').metadata, generation: 2 } };
    source.upsert(bad);
    await until('the bad value refused in the status', () => source.statuses.get('AuthorizationPolicy/shop/deny-other')?.reason === 'Invalid');
    assert.equal(source.statuses.get('AuthorizationPolicy/shop/deny-other')?.path, ANNOTATION_PATH);
    await h.controller.settled();
    assert.equal(judge(agent.snapshot!, OTHER).verdict, 'allowed', 'the last good version (dry run) stays');
    const rejected = await registry.getSingleMetric('weft_controller_rejected_objects_total')?.get();
    assert.equal(rejected?.values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value, 1);
    assert.ok(h.logs.some((l) => l.msg.startsWith('invalid object refused') && l.fields.object === 'AuthorizationPolicy/shop/deny-other'));

    // The task's last step: remove the annotation (or set it false) to enforce the policy.
    source.upsert({ ...annotated(dry, undefined), metadata: { ...annotated(dry, undefined).metadata, generation: 3 } });
    await until('the policy reaches the agent enforced', () => agent.snapshot?.policies.some((p) => p.name === 'deny-other' && p.dryRun === undefined) === true);
    const j = judge(agent.snapshot!, OTHER);
    assert.equal(j.verdict, 'denied');
    assert.equal(j.policy, 'shop/deny-other');
  } finally {
    await h.close();
  }
});

describe(`a dry-run policy at a waypoint is judged in shadow, never enforced (${TASK})`, () => {
  let b: Backend;
  let engine: WaypointEngine;
  let l: Listener;
  const lines: string[] = [];
  const spans = new InMemorySpanExporter();
  const policy = (name: string, action: 'ALLOW' | 'DENY', rules: CompiledPolicy['rules'], dryRun: boolean): CompiledPolicy =>
    ({ name, namespace: 'shop', action, scope: 'service', targetServices: ['shop/reviews'], rules, layer: 'L7', ...(dryRun ? { action: 'AUDIT' as const, dryRun: action } : {}) });

  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: (x) => lines.push(x), tracing: { exporter: spans } } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      policies: [
        // The task's policy: DENY /headers, in dry run.
        policy('deny-path-headers', 'DENY', [{ from: [], to: [{ paths: ['/headers'] }], when: [], layer: 'L7' }], true),
        policy('only-get', 'ALLOW', [{ from: [], to: [{ methods: ['GET'] }], when: [], layer: 'L7' }], true),
        policy('deny-admin', 'DENY', [{ from: [], to: [{ paths: ['/admin'] }], when: [], layer: 'L7' }], false),
      ],
    }));
    l = await startTunnelListener(engine, '10.96.0.10:80', CALLER);
  });

  after(async () => {
    await l.close();
    await engine.close();
    await b.close();
  });

  const entryFor = (path: string, method = 'GET') => lines.map((x) => JSON.parse(x) as Record<string, unknown>).find((e) => e.path === path && e.method === method);
  /** The shadow results counted so far under these labels: each `it` reads it before and asserts its own, whatever ran first. */
  const shadowCount = async (policy: string, action: string, result: string): Promise<number> =>
    (await metricSamples(engine, 'weft_authz_dry_run_total')).find((s) => s.labels.policy === policy && s.labels.authz_dry_run_action === action && s.labels.authz_dry_run_result === result)?.value ?? 0;

  it('a request the dry-run DENY matches is served; the access log names the policy with Istio\'s keys; the counter counts a shadow deny', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const before = await shadowCount('shop/deny-path-headers', 'deny', 'denied');
    const r = await request(l.port, { path: '/headers', headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` } });
    assert.equal(r.status, 200);
    const e = entryFor('/headers');
    assert.equal(e?.istio_dry_run_deny_shadow_engine_result, 'denied');
    assert.equal(e?.istio_dry_run_deny_shadow_effective_policy_id, 'shop/deny-path-headers');
    assert.equal(e?.istio_dry_run_allow_shadow_engine_result, 'allowed');
    assert.equal(e?.istio_dry_run_allow_shadow_effective_policy_id, 'shop/only-get');
    assert.equal(await shadowCount('shop/deny-path-headers', 'deny', 'denied') - before, 1);
    // The task's "Check dry-run result in tracing": Istio's span tags.
    await until('the span is exported', () => spans.getFinishedSpans().some((x) => x.spanContext().traceId === traceId));
    const span = spans.getFinishedSpans().find((x) => x.spanContext().traceId === traceId)!;
    assert.equal(span.attributes['istio.authorization.dry_run.deny_policy.name'], 'shop/deny-path-headers');
    assert.equal(span.attributes['istio.authorization.dry_run.deny_policy.result'], 'denied');
    assert.equal(span.attributes['istio.authorization.dry_run.allow_policy.result'], 'allowed');
  });

  it('a request the dry-run ALLOW would not admit is served, and logged as the ALLOW engine\'s denial', async () => {
    const before = await shadowCount('', 'allow', 'denied');
    const r = await request(l.port, { method: 'POST', path: '/orders', body: 'x' });
    assert.equal(r.status, 200);
    const e = entryFor('/orders', 'POST');
    assert.equal(e?.istio_dry_run_allow_shadow_engine_result, 'denied');
    assert.equal(e?.istio_dry_run_allow_shadow_effective_policy_id, undefined);
    assert.equal(e?.istio_dry_run_deny_shadow_engine_result, 'allowed');
    // No dry-run ALLOW matched: the policy label is empty, as Envoy's shadow_effective_policy_id.
    assert.equal(await shadowCount('', 'allow', 'denied') - before, 1);
  });

  it('an enforced DENY beside the dry-run policies still refuses, with its name', async () => {
    const r = await request(l.port, { path: '/admin' });
    assert.equal(r.status, 403);
    assert.match(r.body, /shop\/deny-admin/);
  });
});

test('weftctl describe pod names a dry-run policy as enforced by nothing, judged in shadow, with what it would have done', () => {
  const c = compileObjects([
    ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'db', { labels: { app: 'db' }, ip: DB_IP }),
    annotated(denyCaller('dry-deny', OTHER), 'true'), denyCaller('real-deny', FRONTEND),
  ] as unknown as RawObject[]);
  const d = describePod(c, 'shop', 'db')!;
  const byName = new Map(d.policies.map((p) => [p.name, p]));
  assert.equal(byName.get('shop/dry-deny')?.dryRun, true);
  assert.equal(byName.get('shop/dry-deny')?.enforcedBy, 'nothing: dry run (istio.io/dry-run), judged in shadow by node agent (workload scope)');
  assert.match(byName.get('shop/dry-deny')!.effect, /^would have denied connections matching 1 rule\(s\)/);
  assert.equal(byName.get('shop/real-deny')?.dryRun, undefined);
  assert.equal(byName.get('shop/real-deny')?.enforcedBy, 'node agent (workload scope)');
});

// The agent's access-log line of an HBONE delivery carries the shadow results under Istio's keys,
// for a delivered connection and for one an enforced policy refused.
test('the agent\'s access log names the shadow results with Istio\'s keys (istio_dry_run_deny_shadow_*), delivered or refused', async () => {
  const TD = 'test.local';
  const dest: Workload = {
    uid: 'shop/db', name: 'db', namespace: 'shop', node: 'node2', nodeIp: '127.0.0.1', ip: '127.0.0.1', serviceAccount: 'db', spiffeId: `spiffe://${TD}/ns/shop/sa/db`,
    labels: { app: 'db' }, enrolled: true, mode: 'STRICT', services: [], workloadName: 'db', canonicalService: 'db', canonicalRevision: 'v1', cluster: 'Kubernetes',
  };
  const client = { ...dest, uid: 'web/frontend', name: 'frontend', namespace: 'web', node: 'node1', ip: '10.0.0.7', serviceAccount: 'frontend', spiffeId: `spiffe://${TD}/ns/web/sa/frontend`, workloadName: 'frontend' };
  const shadow: DryRunResult[] = [{ action: 'DENY', result: 'denied', policy: 'shop/dry-deny', policies: 1, reason: 'denied by shop/dry-deny' }];
  const ca = createTestCa();
  const pod = await tcpServer((s) => { s.on('error', () => {}); s.on('end', () => s.end()); s.resume(); });
  const state = new AgentState('node2');
  state.apply({ node: 'node2', workloads: [dest, client], services: [], policies: [], peerAuthentications: [], waypoints: [] } as AgentConfig);
  const lines: Array<Record<string, unknown>> = [];
  let refuse = false;
  const serverLeaf = ca.issue(dest.spiffeId);
  const inbound = new Inbound({
    node: 'node2', trustDomain: TD, state, metrics: new AgentMetrics(), log: silentLogger, accessLog: (e) => lines.push(e),
    delivery: {
      authorize() {
        if (refuse) throw new DeniedError('denied by shop/real-deny: matched a DENY rule', 403, 'shop/real-deny', 'policy', shadow);
        return shadow;
      },
      track() {},
      connectToPod: (_d: Workload, p: number, _c: unknown, timeoutMs: number) => connectTcp(`127.0.0.1:${p}`, { timeoutMs }),
    } as never,
    serverTls: { SNICallback: (_n: string, cb: (e: Error | null, c?: unknown) => void) => cb(null, createSecureContext({ key: serverLeaf.key, cert: serverLeaf.cert, ca: ca.cert })) } as never,
    trustBundle: () => [ca.cert],
  });
  const { hbone: port } = await inbound.listen({ hbone: 0, gateway: 0 }, '127.0.0.1');
  const leaf = ca.issue(client.spiffeId);
  const session = h2connect(`https://127.0.0.1:${port}`, { key: leaf.key, cert: leaf.cert, ca: leaf.ca, checkServerIdentity: () => undefined, servername: 'hbone.test' } as never);
  session.on('error', () => {});
  try {
    await new Promise<void>((resolve, reject) => { session.once('connect', () => resolve()); session.once('error', reject); });
    const tunnel = (): Promise<number> => new Promise((resolve) => {
      const r = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${pod.port}` }, { endStream: false });
      r.on('response', (h) => { resolve(Number(h[':status'])); r.close(); });
      r.on('error', () => resolve(0));
      r.resume();
    });
    assert.equal(await tunnel(), 200);
    await until('the delivered connection\'s line', () => lines.some((l) => l.msg === 'connection complete' && l.error === undefined));
    const ok = lines.find((l) => l.msg === 'connection complete')!;
    assert.equal(ok.istio_dry_run_deny_shadow_engine_result, 'denied');
    assert.equal(ok.istio_dry_run_deny_shadow_effective_policy_id, 'shop/dry-deny');
    refuse = true;
    lines.length = 0;
    assert.equal(await tunnel(), 403);
    await until('the refused connection\'s line', () => lines.some((l) => l.msg === 'connection complete'));
    const denied = lines.find((l) => l.msg === 'connection complete')!;
    assert.match(String(denied.error), /shop\/real-deny/);
    assert.equal(denied.istio_dry_run_deny_shadow_effective_policy_id, 'shop/dry-deny');
  } finally {
    session.destroy();
    await inbound.server.close(100);
    pod.server.close();
  }
});

// The task's last step, for connections already open: once the annotation is removed (or set
// false) the policy is enforced, and a policy change judges open deliveries again (as ztunnel
// closes connections a new policy denies). A re-judgement counts no second shadow result.
test('an open connection a dry-run DENY names is closed once the annotation is removed, and re-judging counts no shadow result again', async () => {
  const state = new AgentState('node-a');
  state.apply(meshOf([annotated(denyCaller('deny-other', OTHER), 'true')]).config);
  const lines: Judged['lines'] = [];
  const at = (msg: string, fields: Record<string, unknown> = {}) => { lines.push({ msg, fields }); };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log: { debug: at, info: at, warn: at, error: at }, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const db = state.localWorkload(DB_IP)!;
  const source = { sourcePrincipal: OTHER, sourceIp: '10.1.0.1' };
  delivery.authorize(db, 8080, source);
  const upstream = new PassThrough();
  delivery.track({ dest: db, port: 8080, source, upstream, judgedAt: state.version });
  assert.equal(delivery.reauthorize(), 0, 'still in dry run: kept open');
  assert.equal(await dryRunCount(metrics, { authz_dry_run_result: 'denied' }), 1, 'counted once, at the connection');
  state.apply(meshOf([annotated(denyCaller('deny-other', OTHER), 'false')]).config);
  assert.equal(delivery.reauthorize(), 1);
  assert.equal(upstream.destroyed, true);
  assert.equal(await deniedCount(metrics), 1);
  assert.equal(lines.find((l) => l.msg === 'open connection closed: the policies no longer allow it')?.fields.policy, 'shop/deny-other');
});

test('shadow judgement never throws into the real decision: a judge that throws gives its engine the result error, with the reason', () => {
  const p = (action: 'ALLOW' | 'DENY'): CompiledPolicy => ({ name: `dry-${action}`, namespace: 'shop', action: 'AUDIT', scope: 'namespace', rules: [], layer: 'L4', dryRun: action });
  const results = dryRunOf(new CompiledPolicies([p('DENY'), p('ALLOW')]), (engine) => { if (engine === 'DENY') throw new Error('boom'); return { allowed: true, policy: 'shop/dry-ALLOW', reason: 'allowed by shop/dry-ALLOW' }; });
  assert.deepEqual(results?.map(({ action, result, reason }) => ({ action, result, reason })), [
    { action: 'DENY', result: 'error', reason: 'shadow evaluation failed: boom' },
    { action: 'ALLOW', result: 'allowed', reason: 'allowed by shop/dry-ALLOW' },
  ]);
  assert.equal(dryRunOf(new CompiledPolicies([{ ...p('DENY'), dryRun: undefined }]), () => { throw new Error('not called'); }), undefined, 'no dry-run policy: no judge called');
});

test('version skew: a dry-run policy is sent as AUDIT naming the action it shadows, so a data plane older than dryRun only logs it, never enforces it; a current one judges it in shadow and does not count it as AUDIT', async () => {
  const { config, policies } = meshOf([annotated(denyCaller('deny-other', OTHER), 'true'), annotated(allowCaller('only-frontend', FRONTEND), 'true')]);
  const sent = policies.get('shop/deny-other')!;
  assert.equal(sent.action, 'AUDIT');
  assert.equal(sent.dryRun, 'DENY');
  assert.equal(policies.get('shop/only-frontend')?.dryRun, 'ALLOW');
  const attrs = { sourcePrincipal: OTHER, sourceIp: '10.1.0.1', destinationIp: DB_IP, destinationPort: 8080 };
  // A data plane that does not know `dryRun` reads the policies as they are sent: AUDIT, which
  // never decides (its matches logged), where an enforced DENY would refuse OTHER.
  const old = evaluate(new CompiledPolicies([...policies.values()].map(({ dryRun: _unknown, ...p }) => p)), attrs);
  assert.equal(old.allowed, true);
  assert.deepEqual(old.audit, ['shop/deny-other']);
  // A current one: allowed, the DENY engine's shadow denial naming the policy, no AUDIT match.
  const now = evaluate(new CompiledPolicies([...policies.values()]), attrs);
  assert.equal(now.allowed, true);
  assert.equal(now.audit, undefined);
  assert.deepEqual(now.dryRun?.map(({ action, result, policy }) => ({ action, result, policy })), [{ action: 'DENY', result: 'denied', policy: 'shop/deny-other' }, { action: 'ALLOW', result: 'denied', policy: undefined }]);
  const j = judge(config, OTHER);
  assert.equal(j.verdict, 'allowed');
  assert.equal(await dryRunCount(j.metrics, { policy: 'shop/deny-other', authz_dry_run_action: 'deny', authz_dry_run_result: 'denied' }), 1, 'counted once');
  assert.ok(!j.lines.some((l) => l.msg === 'connection audited'), 'not logged as an AUDIT match');
  assert.equal(j.lines.filter((l) => l.msg === 'connection dry-run denied' && l.fields.policy === 'shop/deny-other').length, 1, 'named once');
});

test('the dashboard lists a dry-run policy on an edge as dry-run, not as enforced', () => {
  const { config } = meshOf([annotated(denyCaller('dry-deny', OTHER), 'true'), denyCaller('real-deny', FRONTEND)]);
  const g = buildGraph({ before: [], after: [{ name: 'istio_tcp_connections_opened_total', value: 1, labels: { reporter: 'source', source_workload_namespace: 'web', source_workload: 'frontend', destination_service: 'db.shop.svc.cluster.local', connection_security_policy: 'mutual_tls' } }], seconds: 1, flows: [], config: { workloads: config.workloads, services: config.services, policies: config.policies } });
  const e = g.edges.find((x) => x.target.endsWith('/shop/db'));
  assert.deepEqual(e?.policies, [{ name: 'shop/dry-deny', action: 'DENY', dryRun: true }, { name: 'shop/real-deny', action: 'DENY' }]);
});
