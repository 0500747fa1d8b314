// An upstream chooses the grpc-status it answers with; the waypoint's grpc_response_status label
// (istio_requests_total and the three request histograms) must not take whatever it sends, or one
// hostile backend grows the waypoint's series, and every Prometheus scraping it, without bound.
// gRPC's status codes are 0..16 (https://grpc.github.io/grpc/core/md_doc_statuscodes.html; the
// header is 1*DIGIT, grpc/doc/PROTOCOL-HTTP2.md); anything else is reported as UNKNOWN (2), as
// grpc-java's Status.fromCodeValue does, and counted in weft_waypoint_grpc_status_invalid_total.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { after, before, test } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream, UpstreamPool, type UpstreamResponse } from '../../waypoint/src/upstream.ts';
import { config, endpoint, service, startTunnelListener, type Listener } from '../../waypoint/testing/harness.ts';

const identity = (b: Buffer): Buffer => b;
const original = UpstreamPool.prototype.request;
let engine: WaypointEngine;
let listener: Listener;
let client: grpc.Client;
/** The grpc-status the stub upstream answers the next call with, and where (headers or trailers). */
let next = { status: '0', inTrailers: false };
const logged: Array<Record<string, unknown>> = [];

before(async () => {
  UpstreamPool.prototype.request = async function (_ep, _protocol, req): Promise<UpstreamResponse> {
    req.body?.resume();
    const { status, inTrailers } = next;
    if (!inTrailers) {
      const body = new Readable({ read() {} });
      body.destroy();
      return { status: 200, headers: { 'content-type': 'application/grpc', 'grpc-status': status }, body, endStreamOnHeaders: true, trailers: () => undefined, discard: () => {} };
    }
    const body = Readable.from([Buffer.from([0, 0, 0, 0, 1, 0x78])]);
    return { status: 200, headers: { 'content-type': 'application/grpc' }, body, endStreamOnHeaders: false, trailers: () => ({ 'grpc-status': status }), discard: () => {} };
  };
  engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: (line) => logged.push(JSON.parse(line) as Record<string, unknown>) } });
  engine.applyConfig(config({ services: [service('echo', '10.96.0.20', [endpoint(1)], { port: 9000, appProtocol: 'grpc' })] }));
  listener = await startTunnelListener(engine, '10.96.0.20:9000');
  client = new grpc.Client(`127.0.0.1:${listener.port}`, grpc.credentials.createInsecure());
});

after(async () => {
  UpstreamPool.prototype.request = original;
  client?.close();
  await listener?.close();
  await engine?.close();
});

function call(): Promise<void> {
  return new Promise((resolve) => {
    client.makeUnaryRequest('/test.Echo/Get', identity, identity, Buffer.from('x'), new grpc.Metadata(), { deadline: Date.now() + 3_000 }, () => resolve());
  });
}

async function statusLabels(): Promise<Map<string, number>> {
  const text = await engine.telemetry.registry.metrics();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('istio_requests_total{')) continue;
    const v = /grpc_response_status="([^"]*)"/.exec(line)?.[1] ?? '?';
    out.set(v, (out.get(v) ?? 0) + Number(line.split(' ').pop()));
  }
  return out;
}

test('grpc_response_status takes only gRPC\'s codes 0..16: an upstream\'s other values (in headers or trailers) are UNKNOWN (2) and counted', async () => {
  const hostile = ['17', '99999', '1e3', '0x10', '-1', '4.5', 'abc', '', '00000000000000000000000000000003'];
  for (const inTrailers of [false, true]) {
    for (const status of hostile) {
      next = { status, inTrailers };
      await call();
    }
    for (const status of ['5', '14']) {
      next = { status, inTrailers };
      await call();
    }
  }
  const labels = await statusLabels();
  assert.deepEqual([...labels.keys()].sort(), ['14', '2', '3', '5'], JSON.stringify([...labels]));
  assert.equal(labels.get('2'), 16, 'the 8 values that are not a code, twice (an empty header is UNKNOWN too)');
  assert.equal(labels.get('3'), 2, 'leading zeros are still the code (1*DIGIT)');
  const text = await engine.telemetry.registry.metrics();
  assert.match(text, /^weft_waypoint_grpc_status_invalid_total 16$/m, text.split('\n').filter((l) => l.includes('grpc_status')).join('\n'));
  const last = logged.filter((e) => e.grpc_status !== undefined).slice(-13);
  assert.ok(last.every((e) => /^([0-9]|1[0-6])$/.test(String(e.grpc_status))), `access log grpc_status is a code: ${JSON.stringify(last.map((e) => e.grpc_status))}`);
});
