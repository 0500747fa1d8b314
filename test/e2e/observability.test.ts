// Observability end to end: Istio's standard metrics with Istio's labels on both agents and the
// waypoint for L4, L7, gRPC and denied traffic (https://istio.io/latest/docs/reference/config/metrics/),
// counted when a connection opens, a real Prometheus (Debian's package) scraping the mesh, and every
// panel of the shipped Grafana dashboards plus the key queries of Istio's own dashboards returning
// series for this traffic. Real kernel, eBPF, TLS and processes in namespaces.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { localMeshSuite, until } from './mesh-suite.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';
import { parseProm, type Sample } from '../../cli/local/prom.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';
import { REQUEST_LABELS, TRAFFIC_LABELS } from '../../lib/telemetry/labels.ts';
import { PROMETHEUS_BIN, TestPrometheus, dashboardQueries, expandGrafanaVariables } from './prometheus.ts';
import { OtlpCollector } from './otlp-collector.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
let prom: TestPrometheus | undefined;
const REVIEWS_VIP = '10.96.5.10';
const GREETER_VIP = '10.96.5.11';
const DB_VIP = '10.96.5.20';
const TD = 'spiffe://cluster.local';

// The workloads, as Istio labels them.
const PRODUCTPAGE = {
  workload: 'productpage-v3', namespace: 'shop', principal: `${TD}/ns/shop/sa/bookinfo-productpage`,
  canonical: 'productpage', revision: 'v3', // app.kubernetes.io/name|version
};
const REVIEWS = { workload: 'reviews-v1', namespace: 'shop', principal: `${TD}/ns/shop/sa/reviews`, canonical: 'reviews', revision: 'v1' }; // app/version
const GREETER = { workload: 'greeter', namespace: 'shop', principal: `${TD}/ns/shop/sa/greeter`, canonical: 'greeter-svc', revision: '2024' }; // service.istio.io/canonical-*
const WAYPOINT = { workload: 'waypoint', namespace: 'shop', principal: `${TD}/ns/shop/sa/waypoint`, canonical: 'waypoint', revision: 'latest' };
const DB = { workload: 'db', namespace: 'data', principal: `${TD}/ns/data/sa/db`, canonical: 'db', revision: 'latest' }; // bare pod
const INTRUDER = { workload: 'intruder', namespace: 'data', principal: `${TD}/ns/data/sa/intruder`, canonical: 'intruder', revision: 'latest' };
type W = typeof PRODUCTPAGE;

function peer(side: 'source' | 'destination', w: W): Record<string, string> {
  return {
    [`${side}_workload`]: w.workload, [`${side}_workload_namespace`]: w.namespace, [`${side}_principal`]: w.principal,
    [`${side}_canonical_service`]: w.canonical, [`${side}_canonical_revision`]: w.revision,
    [`${side}_app`]: w.canonical, [`${side}_version`]: w.revision, [`${side}_cluster`]: 'Kubernetes',
  };
}
function svc(name: string, ns: string): Record<string, string> {
  return { destination_service: `${name}.${ns}.svc.cluster.local`, destination_service_name: name, destination_service_namespace: ns };
}

/** The one sample of `name` whose labels are exactly `want` (every Istio label, no other). */
function assertSeries(text: string, name: string, names: readonly string[], want: Record<string, string>, what: string): Sample {
  assert.deepEqual(Object.keys(want).sort(), [...names].sort(), `${what}: the expected set names every Istio label`);
  const samples = parseProm(text).filter((s) => s.name === name);
  const found = samples.find((s) => Object.keys(want).every((k) => s.labels[k] === want[k]));
  assert.ok(found, `${what}: no ${name} series with ${JSON.stringify(want)}\nclosest:\n${samples.filter((s) => s.labels['reporter'] === want['reporter']).map((s) => JSON.stringify(s.labels)).join('\n')}`);
  assert.deepEqual(Object.keys(found.labels).sort(), [...names].sort(), `${what}: exactly Istio's labels`);
  return found;
}

const waypointMetrics = async () => {
  const wp = mesh.workloads.get('shop/waypoint-0')!;
  return (await requestInNetns(mesh.node(wp.spec.node).netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
};

before(async () => {
  mesh = await suite.create();
  const service = (name: string, ns: string, vip: string, port: { name: string; port: number; targetPort: number }, selector: Record<string, string>) => ({
    apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns }, spec: { clusterIP: vip, selector, ports: [port] },
  });
  mesh.writeConfig('10-obs.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'data', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    service('reviews', 'shop', REVIEWS_VIP, { name: 'http', port: 80, targetPort: 8080 }, { app: 'reviews' }),
    service('greeter', 'shop', GREETER_VIP, { name: 'grpc', port: 9000, targetPort: 9000 }, { app: 'greeter' }),
    service('db', 'data', DB_VIP, { name: 'tcp', port: 5432, targetPort: 8080 }, { app: 'db' }),
    {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'reviews', namespace: 'shop' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews', port: 80 }], rules: [{ backendRefs: [{ name: 'reviews', port: 80 }] }] },
    },
    {
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-admin', namespace: 'shop' },
      spec: { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] },
    },
    {
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'db-clients', namespace: 'data' },
      spec: { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/bookinfo-productpage'] } }] }] },
    },
  ]);
  const echo = (name: string) => ['cli/local/apps/echo.ts', '--port', '8080', '--name', name];
  mesh.addWorkload({
    node: 'node1', namespace: 'shop', name: 'productpage-v3-5c9d7f6b8-q2x7w', deployment: 'productpage-v3', serviceAccount: 'bookinfo-productpage',
    labels: { 'app.kubernetes.io/name': 'productpage', 'app.kubernetes.io/version': 'v3' },
  });
  mesh.addWorkload({ node: 'node2', namespace: 'shop', name: 'reviews-v1-5c9d7f6b8-k8s2m', deployment: 'reviews-v1', serviceAccount: 'reviews', labels: { app: 'reviews', version: 'v1' }, command: echo('reviews-v1') });
  mesh.addWorkload({
    node: 'node2', namespace: 'shop', name: 'greeter-5c9d7f6b8-a1b2c', deployment: 'greeter', serviceAccount: 'greeter',
    labels: { app: 'greeter', 'service.istio.io/canonical-name': 'greeter-svc', 'service.istio.io/canonical-revision': '2024' },
    command: ['test/e2e/fixtures/grpc-server.ts', '--port', '9000', '--version', 'v1'],
  });
  mesh.addWorkload({ node: 'node2', namespace: 'data', name: 'db', serviceAccount: 'db', labels: { app: 'db' }, command: echo('db') });
  mesh.addWorkload({ node: 'node1', namespace: 'data', name: 'intruder', serviceAccount: 'intruder' });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node1', 'shop');
  await mesh.waitReady(60_000);
  await mesh.waitWaypointReady('shop');
  await mesh.waitWorkloadsEnrolled(['shop/productpage-v3-5c9d7f6b8-q2x7w', 'shop/reviews-v1-5c9d7f6b8-k8s2m', 'shop/greeter-5c9d7f6b8-a1b2c', 'data/db', 'data/intruder']);
  // Sample traffic: L7 (200 and a 403 from the waypoint), gRPC, L4, and an L4 denial.
  const pp = 'shop/productpage-v3-5c9d7f6b8-q2x7w';
  await until('the route through the waypoint answers', async () => (await mesh.exec(pp, 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '3', `http://${REVIEWS_VIP}/`])).stdout === '200', 30_000, { explain: () => mesh.logTail('pod-shop-waypoint-0.log') });
  await mesh.exec(pp, 'sh', ['-c', `for i in 1 2 3 4 5; do curl -s -o /dev/null --max-time 5 http://${REVIEWS_VIP}/reviews/$i; done; curl -s -o /dev/null --max-time 5 http://${REVIEWS_VIP}/admin`]);
  const grpc = await mesh.exec(pp, process.execPath, [join(import.meta.dirname, 'fixtures/grpc-client.ts'), `${GREETER_VIP}:9000`, 'Hello', 'obs', '--count', '3']);
  assert.equal(grpc.code, 0, grpc.stderr);
  const l4 = await mesh.exec(pp, 'curl', ['-sS', '--max-time', '5', `http://${DB_VIP}:5432/`]);
  assert.equal(l4.code, 0, l4.stderr);
  const denied = await mesh.exec('data/intruder', 'curl', ['-sS', '--max-time', '5', `http://${DB_VIP}:5432/`]);
  assert.notEqual(denied.code, 0, 'the intruder is refused');
});

after(() => prom?.stop());

test('L4: both agents label the connection with Istio\'s standard labels (workload names from owner references, canonical service/revision, cluster, mutual_tls)', async () => {
  const want = (reporter: string) => ({
    reporter, ...peer('source', PRODUCTPAGE), ...svc('db', 'data'), ...peer('destination', DB),
    request_protocol: 'tcp', response_flags: '-', connection_security_policy: 'mutual_tls',
  });
  const src = assertSeries(await mesh.agentMetrics('node1'), 'istio_tcp_connections_opened_total', TRAFFIC_LABELS, want('source'), 'node1 (source)');
  assert.ok(src.value >= 1);
  assertSeries(await mesh.agentMetrics('node1'), 'istio_tcp_received_bytes_total', TRAFFIC_LABELS, want('source'), 'node1 bytes');
  assertSeries(await mesh.agentMetrics('node2'), 'istio_tcp_connections_closed_total', TRAFFIC_LABELS, want('destination'), 'node2 (destination)');
  assertSeries(await mesh.agentMetrics('node2'), 'istio_tcp_sent_bytes_total', TRAFFIC_LABELS, want('destination'), 'node2 bytes');
  // The access log line of the same connection, ztunnel's keys.
  const line = mesh.logEntries('agent-node2.log', 'connection complete').find((e) => e['dst.workload'] === 'db' && e['src.identity'] === PRODUCTPAGE.principal);
  assert.ok(line, mesh.logTail('agent-node2.log', 5));
  assert.equal(line['direction'], 'inbound');
  assert.equal(line['dst.service'], 'db.data.svc.cluster.local');
  assert.equal(line['src.workload'], 'productpage-v3');
  assert.equal(line['src.namespace'], 'shop');
  assert.ok(typeof line['bytes_sent'] === 'number' && (line['bytes_sent'] as number) > 0);
  assert.match(String(line['duration']), /^\d+ms$/);
});

test('L4 denied: the destination agent counts the refused connection with response_flags DENY, the source agent too, and the refusal is named', async () => {
  const want = (reporter: string) => ({
    reporter, ...peer('source', INTRUDER), ...svc('db', 'data'), ...peer('destination', DB),
    request_protocol: 'tcp', response_flags: 'DENY', connection_security_policy: 'mutual_tls',
  });
  assertSeries(await mesh.agentMetrics('node2'), 'istio_tcp_connections_closed_total', TRAFFIC_LABELS, want('destination'), 'node2 denied');
  assertSeries(await mesh.agentMetrics('node1'), 'istio_tcp_connections_closed_total', TRAFFIC_LABELS, want('source'), 'node1 denied');
  assert.match(await mesh.agentMetrics('node2'), /weft_connections_denied_total\{[^}]*reason="policy"[^}]*destination_workload="db"[^}]*\} [1-9]/);
  const line = mesh.logEntries('agent-node2.log', 'connection complete').find((e) => e['src.identity'] === INTRUDER.principal);
  assert.match(String(line?.['error']), /denied/);
  assert.equal(line?.['response_flags'], 'DENY');
});

test('L7: the source agent reports the hop to the waypoint, the waypoint the request, the destination agent the hop from the waypoint', async () => {
  assertSeries(await mesh.agentMetrics('node1'), 'istio_tcp_connections_opened_total', TRAFFIC_LABELS, {
    reporter: 'source', ...peer('source', PRODUCTPAGE), ...svc('reviews', 'shop'), ...peer('destination', WAYPOINT),
    request_protocol: 'tcp', response_flags: '-', connection_security_policy: 'mutual_tls',
  }, 'node1 → waypoint');
  const wp = await waypointMetrics();
  const ok = assertSeries(wp, 'istio_requests_total', REQUEST_LABELS, {
    reporter: 'waypoint', ...peer('source', PRODUCTPAGE), ...svc('reviews', 'shop'), ...peer('destination', REVIEWS),
    request_protocol: 'http', response_code: '200', grpc_response_status: '', response_flags: '-', connection_security_policy: 'mutual_tls',
  }, 'waypoint 200');
  assert.ok(ok.value >= 5);
  // productpage's agent and the waypoint share node1: the agent's session must leave from the node
  // address, or the waypoint cannot check its for= (the workload's node) and takes the caller to be
  // the address of the pod's link (issue 15, item 7).
  assert.doesNotMatch(wp, /weft_hbone_forwarded_ignored_total\{[^}]*\} [1-9]/, 'the waypoint honoured the source agent\'s for= claim');
  // The waypoint's own 403: no destination workload was chosen.
  assertSeries(wp, 'istio_requests_total', REQUEST_LABELS, {
    reporter: 'waypoint', ...peer('source', PRODUCTPAGE), ...svc('reviews', 'shop'),
    ...Object.fromEntries(Object.keys(peer('destination', REVIEWS)).map((k) => [k, 'unknown'])),
    request_protocol: 'http', response_code: '403', grpc_response_status: '', response_flags: 'RBAC', connection_security_policy: 'mutual_tls',
  }, 'waypoint 403');
  assert.match(wp, /istio_request_duration_milliseconds_bucket\{[^}]*destination_workload="reviews-v1"/);
  assertSeries(await mesh.agentMetrics('node2'), 'istio_tcp_connections_opened_total', TRAFFIC_LABELS, {
    reporter: 'destination', ...peer('source', WAYPOINT), ...svc('reviews', 'shop'), ...peer('destination', REVIEWS),
    request_protocol: 'tcp', response_flags: '-', connection_security_policy: 'mutual_tls',
  }, 'waypoint → node2');
});

test('gRPC: the waypoint reports request_protocol grpc and grpc_response_status, with the canonical labels of service.istio.io/canonical-*', async () => {
  assertSeries(await waypointMetrics(), 'istio_requests_total', REQUEST_LABELS, {
    reporter: 'waypoint', ...peer('source', PRODUCTPAGE), ...svc('greeter', 'shop'), ...peer('destination', GREETER),
    request_protocol: 'grpc', response_code: '200', grpc_response_status: '0', response_flags: '-', connection_security_policy: 'mutual_tls',
  }, 'waypoint gRPC');
});

test('istio_tcp_connections_opened_total moves when the connection opens, and the bytes counters while it is open, on both agents, before it closes', async () => {
  const key = (reporter: string) => (s: Sample) => s.name === 'istio_tcp_connections_opened_total' && s.labels['reporter'] === reporter && s.labels['destination_workload'] === 'db' && s.labels['source_workload'] === 'productpage-v3';
  const closedKey = (reporter: string) => (s: Sample) => s.name === 'istio_tcp_connections_closed_total' && s.labels['reporter'] === reporter && s.labels['destination_workload'] === 'db' && s.labels['source_workload'] === 'productpage-v3' && s.labels['response_flags'] === '-';
  const read = async (node: string, reporter: string) => {
    const samples = parseProm(await mesh.agentMetrics(node));
    return { opened: samples.find(key(reporter))?.value ?? 0, closed: samples.find(closedKey(reporter))?.value ?? 0 };
  };
  // Request bytes (istio_tcp_received_bytes_total) of this caller → db, both reporters, every flag.
  const received = async (node: string, reporter: string) => parseProm(await mesh.agentMetrics(node))
    .filter((s) => s.name === 'istio_tcp_received_bytes_total' && s.labels['reporter'] === reporter && s.labels['destination_workload'] === 'db' && s.labels['source_workload'] === 'productpage-v3')
    .reduce((a, s) => a + s.value, 0);
  const before1 = await read('node1', 'source');
  const before2 = await read('node2', 'destination');
  const bytes1 = await received('node1', 'source');
  const bytes2 = await received('node2', 'destination');
  // An upload of 200 kB that then stays open until its stdin ends, 15 s later.
  const held = mesh.exec('shop/productpage-v3-5c9d7f6b8-q2x7w', 'sh', ['-c', `(head -c 200000 /dev/zero; sleep 15) | curl -sS --max-time 30 -T - http://${DB_VIP}:5432/sha256`]);
  try {
    await until('both agents count the open connection', async () => (await read('node1', 'source')).opened > before1.opened && (await read('node2', 'destination')).opened > before2.opened, 10_000);
    // Bytes are counted while the connection lasts (at each scrape), not only at its close.
    await until('both agents count the upload\'s bytes while the connection is open', async () =>
      (await received('node1', 'source')) - bytes1 >= 200_000 && (await received('node2', 'destination')) - bytes2 >= 200_000, 10_000);
    const [n1, n2] = [await read('node1', 'source'), await read('node2', 'destination')];
    assert.equal(n1.closed, before1.closed, 'node1 has not counted a close: the connection is still open');
    assert.equal(n2.closed, before2.closed, 'node2 has not counted a close either');
  } finally {
    const r = await held;
    assert.equal(r.code, 0, r.stderr);
  }
  // The destination agent counts the close when its side has seen it end, a moment after the client
  // exits (a loaded machine made that later than the first read): waited for, then exactly once.
  await until('node2 counts the close once the connection closed', async () => (await read('node2', 'destination')).closed >= before2.closed + 1, 10_000);
  assert.equal((await read('node2', 'destination')).closed, before2.closed + 1, 'closed once it closed');
});

test('process metrics and build info on every agent, waypoint and the controller; certificate expiry on agents', async () => {
  const texts = { agent: await mesh.agentMetrics('node1'), waypoint: await waypointMetrics() };
  for (const [who, text] of Object.entries(texts)) {
    assert.match(text, /^process_cpu_seconds_total \d/m, `${who}: process metrics, unprefixed`);
    assert.match(text, /^process_resident_memory_bytes \d/m, who);
    assert.match(text, new RegExp(`^weft_build_info\\{component="${who}",version="[^"]+",node_version="[^"]+"\\} 1`, 'm'), who);
  }
  assert.match(texts.agent, /^istio_build\{component="ztunnel",tag="[^"]+"\} 1/m);
  assert.match(texts.waypoint, /^istio_build\{component="proxy",tag="[^"]+"\} 1/m);
  const expiry = parseProm(texts.agent).filter((s) => s.name === 'weft_certificate_expiry_timestamp_seconds');
  const pp = expiry.find((s) => s.labels['identity'] === PRODUCTPAGE.principal);
  assert.ok(pp && pp.value * 1000 > Date.now(), `an expiry in the future for the productpage identity: ${JSON.stringify(expiry)}`);
  const controller = (await requestInNetns(mesh.node('node1').netnsPath, 'http://10.77.0.254:15020/metrics')).body;
  assert.match(controller, /^istio_build\{component="pilot",tag="[^"]+"\} 1/m);
  assert.match(controller, /^process_cpu_seconds_total \d/m);
});

test('a Telemetry object reaches agents and the waypoint over the config stream: TEXT access logs for the selected workloads only', async () => {
  mesh.writeConfig('30-telemetry.yaml', [
    { apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name: 'db-text', namespace: 'data' }, spec: { selector: { matchLabels: { app: 'db' } }, accessLogging: { encoding: 'TEXT' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name: 'shop', namespace: 'shop' }, spec: { accessLogging: { encoding: 'TEXT' }, tracing: { randomSamplingPercentage: 0 } } },
  ]);
  const pp = 'shop/productpage-v3-5c9d7f6b8-q2x7w';
  const textLine = (file: string, re: RegExp) => mesh.logTail(file, 400).split('\n').some((l) => re.test(l));
  try {
    // The destination agent writes db's inbound lines as text (ztunnel's form).
    await until('node2 logs db\'s connections as TEXT', async () => {
      await mesh.exec(pp, 'curl', ['-s', '-o', '/dev/null', '--max-time', '5', `http://${DB_VIP}:5432/telemetry`]);
      return textLine('agent-node2.log', /^\S+ info access connection complete .*dst\.workload=db .*direction=inbound/);
    }, 30_000, { explain: () => mesh.logTail('agent-node2.log', 5) });
    // The waypoint (namespace shop) writes Envoy's text format.
    await until('the waypoint logs requests as TEXT', async () => {
      await mesh.exec(pp, 'curl', ['-s', '-o', '/dev/null', '--max-time', '5', `http://${REVIEWS_VIP}/telemetry-check`]);
      return textLine('pod-shop-waypoint-0.log', /^\[\S+\] "GET \/telemetry-check HTTP\/1\.1" 200 /);
    }, 30_000, { explain: () => mesh.logTail('pod-shop-waypoint-0.log', 5) });
    // A workload no Telemetry selects keeps JSON: node1's outbound line for the same client (shop
    // namespace is TEXT now, so use the intruder in namespace data, not selected by db-text).
    const intruderLines = () => mesh.logEntries('agent-node1.log', 'connection complete').filter((e) => e['src.workload'] === 'intruder').length;
    const before = intruderLines();
    await mesh.exec('data/intruder', 'curl', ['-s', '--max-time', '5', `http://${DB_VIP}:5432/`]);
    await until('the intruder\'s new line, still JSON', () => intruderLines() > before, 10_000);
  } finally {
    mesh.removeConfig('30-telemetry.yaml');
  }
});

test('spans and access logs reach an OTLP collector: the waypoint\'s spans and access log and both agents\' access logs, over OTLP/HTTP, where a Telemetry names it', async () => {
  const node1 = mesh.node('node1');
  const collector = await OtlpCollector.start(node1.netnsPath, node1.ip, 4318);
  const at = `http://${node1.ip}:4318`;
  // Istio's Telemetry API: tracing and access logging providers (here: endpoints) per namespace,
  // among those the mesh declares (root-namespace Telemetries; a selector matching nothing declares
  // without applying).
  const declare = (name: string, spec: Record<string, unknown>) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name, namespace: 'weft-system' }, spec: { selector: { matchLabels: { 'weft.dev/declares': 'providers' } }, ...spec } });
  mesh.writeConfig('40-otlp.yaml', [
    declare('otlp-traces', { tracing: { otlp: { endpoint: `${at}/v1/traces` } }, accessLogging: { otlp: { endpoint: `${at}/v1/logs` } } }),
    declare('otlp-logs', { accessLogging: { otlp: { endpoint: at } } }),
    { apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name: 'otlp', namespace: 'shop' }, spec: { tracing: { otlp: { endpoint: `${at}/v1/traces` }, randomSamplingPercentage: 100 }, accessLogging: { otlp: { endpoint: `${at}/v1/logs` } } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name: 'otlp', namespace: 'data' }, spec: { accessLogging: { otlp: { endpoint: at } } } },
  ]);
  const pp = 'shop/productpage-v3-5c9d7f6b8-q2x7w';
  const traceId = 'f'.repeat(8) + Date.now().toString(16).padStart(24, '0');
  try {
    await until('the waypoint exports the request\'s span and its access log', async () => {
      await mesh.exec(pp, 'curl', ['-s', '-o', '/dev/null', '--max-time', '5', '-H', `traceparent: 00-${traceId}-00f067aa0ba902b7-01`, `http://${REVIEWS_VIP}/otlp-check`]);
      return collector.spans.some((s) => s.traceId === traceId) && collector.logs.some((l) => l.attributes['path'] === '/otlp-check');
    }, 45_000, { explain: () => `collector: ${collector.spans.length} spans, ${collector.logs.length} logs, refused ${JSON.stringify(collector.refused)}\n${mesh.logTail('pod-shop-waypoint-0.log', 5)}` });
    const span = collector.spans.find((s) => s.traceId === traceId)!;
    assert.equal(span.parentSpanId, '00f067aa0ba902b7', 'the caller\'s span is the parent (W3C trace context)');
    assert.equal(String(span.attributes['http.response.status_code']), '200');
    assert.equal(span.resource['service.name'], 'waypoint.shop');
    const wpLog = collector.logs.find((l) => l.attributes['path'] === '/otlp-check')!;
    assert.equal(wpLog.resource['service.name'], 'waypoint.shop');
    assert.equal(wpLog.attributes['trace_id'], traceId, 'the access log names the trace');
    assert.equal(JSON.parse(wpLog.body).path, '/otlp-check', 'the body is the JSON access-log line');
    // The agents: node1's outbound line (shop's productpage) and node2's inbound line (data's db).
    await until('both agents export connection lines', async () => {
      await mesh.exec(pp, 'curl', ['-s', '-o', '/dev/null', '--max-time', '5', `http://${DB_VIP}:5432/otlp`]);
      return collector.logs.some((l) => l.resource['k8s.node.name'] === 'node1' && l.attributes['src.workload'] === 'productpage-v3-5c9d7f6b8-q2x7w' && l.attributes['direction'] === 'outbound' && l.attributes['dst.service'] === 'db.data.svc.cluster.local')
        && collector.logs.some((l) => l.resource['k8s.node.name'] === 'node2' && l.attributes['dst.workload'] === 'db' && l.attributes['direction'] === 'inbound');
    }, 30_000, { explain: () => JSON.stringify(collector.logs.slice(-3)) });
    const line = collector.logs.find((l) => l.resource['k8s.node.name'] === 'node2' && l.attributes['dst.workload'] === 'db')!;
    assert.equal(line.resource['service.name'], 'weft-agent');
    assert.equal(line.attributes['connection_security_policy'], 'mutual_tls');
    assert.ok(Number(line.attributes['bytes_recv']) > 0, 'bytes as integers');
    assert.deepEqual(collector.refused, [], 'every export was OTLP JSON on the signal\'s path');
    // Exported entries are counted; none dropped.
    const agentText = await mesh.agentMetrics('node2');
    assert.ok((parseProm(agentText).find((s) => s.name === 'weft_access_log_otlp_exported_total')?.value ?? 0) > 0);
    assert.equal(parseProm(agentText).filter((s) => s.name === 'weft_access_log_otlp_dropped_total').reduce((a, s) => a + s.value, 0), 0);
  } finally {
    mesh.removeConfig('40-otlp.yaml');
    await collector.stop();
  }
});

test('a real Prometheus scrapes the mesh, and every panel of the shipped dashboards and the key queries of Istio\'s dashboards return series', { skip: !existsSync(PROMETHEUS_BIN) && 'Debian package prometheus is not installed (make deps)' }, async () => {
  const wp = mesh.workloads.get('shop/waypoint-0')!;
  prom = await TestPrometheus.start(mesh, 'node1', {
    'weft-agent': mesh.net.nodes.map((n) => `${n.ip}:15020`),
    'weft-waypoint': [`${wp.pod.ip}:15020`],
    'weft-controller': ['10.77.0.254:15020'],
  }, join(suite.stateDir, 'prometheus'));
  const p = prom;
  await until('every target is up', async () => (await p.targets()).every((t) => t.health === 'up'), 30_000, { explain: () => mesh.logTail('prometheus.log') });
  // Traffic while Prometheus watches, so rates have increases in their window.
  const pp = 'shop/productpage-v3-5c9d7f6b8-q2x7w';
  const traffic = async () => {
    await mesh.exec(pp, 'sh', ['-c', `for i in 1 2 3; do curl -s -o /dev/null --max-time 5 http://${REVIEWS_VIP}/r; curl -s -o /dev/null --max-time 5 http://${DB_VIP}:5432/; done; curl -s -o /dev/null --max-time 5 http://${REVIEWS_VIP}/admin`]);
    await mesh.exec(pp, process.execPath, [join(import.meta.dirname, 'fixtures/grpc-client.ts'), `${GREETER_VIP}:9000`, 'Hello', 'obs']);
    await mesh.exec('data/intruder', 'curl', ['-s', '--max-time', '5', `http://${DB_VIP}:5432/`]);
  };
  // Traffic until a rate over it shows (Prometheus' first scrapes may already hold its effects).
  await until('a rate over the sample traffic', async () => {
    await traffic();
    return (await p.query('sum(rate(istio_requests_total[1m]))')).some((s) => Number(s.value[1]) > 0);
  }, 60_000, { explain: () => mesh.logTail('prometheus.log') });
  await traffic();
  const dashboards = ['weft-agent.json', 'weft-services.json'].map((f) => ({ f, d: JSON.parse(readFileSync(join(import.meta.dirname, '../../deploy/dashboards', f), 'utf8')) as unknown }));
  const queries = dashboards.flatMap(({ f, d }) => dashboardQueries(d).map((q) => ({ ...q, panel: `${f}: ${q.panel}` })));
  assert.ok(queries.length >= 20, `${queries.length} panel queries`);
  // Istio's service and workload dashboards (istio-service-dashboard, istio-workload-dashboard),
  // their key queries with the dashboard variables set to this traffic; ambient: reporter waypoint.
  const istio = [
    'round(sum(irate(istio_requests_total{reporter=~"destination|waypoint",destination_service=~"reviews.shop.svc.cluster.local"}[5m])), 0.001)',
    'sum(irate(istio_requests_total{reporter=~"destination|waypoint",destination_service=~"reviews.shop.svc.cluster.local",response_code!~"5.*"}[5m])) / sum(irate(istio_requests_total{reporter=~"destination|waypoint",destination_service=~"reviews.shop.svc.cluster.local"}[5m]))',
    'histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter=~"destination|waypoint",destination_service=~"reviews.shop.svc.cluster.local"}[1m])) by (le))',
    'round(sum(irate(istio_requests_total{reporter=~"destination|waypoint",destination_service=~"reviews.shop.svc.cluster.local"}[5m])) by (source_workload, source_workload_namespace, response_code), 0.001)',
    'sum(irate(istio_tcp_received_bytes_total{reporter=~"destination|waypoint", destination_service=~"db.data.svc.cluster.local"}[1m])) by (source_workload, source_workload_namespace)',
    'round(sum(irate(istio_requests_total{reporter=~"destination|waypoint",destination_workload_namespace=~"shop",destination_workload=~"reviews-v1"}[5m])) by (source_workload, source_workload_namespace, response_code), 0.001)',
    'sum(irate(istio_tcp_sent_bytes_total{reporter=~"destination|waypoint", destination_workload_namespace=~"data", destination_workload=~"db"}[1m])) by (source_workload, source_workload_namespace)',
    'round(sum(irate(istio_requests_total{reporter=~"source|waypoint",source_workload_namespace=~"shop",source_workload=~"productpage-v3"}[5m])) by (destination_service, response_code), 0.001)',
    'sum(istio_build{component="ztunnel"}) by (tag)',
    'sum(rate(istio_tcp_connections_opened_total{reporter="destination", connection_security_policy="mutual_tls"}[1m])) by (destination_workload)',
  ].map((expr) => ({ panel: 'Istio', expr }));
  // irate() and rate() need two samples of a series inside their window: a label set first
  // scraped a moment ago has one. So the queries are asked until each has answered with series
  // (traffic goes on between rounds), with a deadline; the ones still empty are named.
  const pending = [...queries, ...istio].map((q) => ({ ...q, expr: expandGrafanaVariables(q.expr) }));
  await until('every dashboard query returns series', async () => {
    for (const q of [...pending]) {
      if ((await p.query(q.expr)).length > 0) pending.splice(pending.indexOf(q), 1);
    }
    if (pending.length > 0) await traffic();
    return pending.length === 0;
  }, 90_000, { explain: () => `queries without series:\n${pending.map((q) => `${q.panel}: ${q.expr}`).join('\n')}` });
  process.stdout.write(`# ${queries.length} dashboard panel queries and ${istio.length} Istio dashboard queries returned series from Prometheus\n`);
});
