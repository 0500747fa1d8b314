// A gRPC trailers-only upstream response (HEADERS with END_STREAM and grpc-status) whose stream is
// already closed and destroyed when the proxy gets it, as happens over HBONE: the proxy must end
// the downstream call with the status at once instead of waiting for an 'end' that never comes.
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

before(async () => {
  UpstreamPool.prototype.request = async function (_ep, _protocol, req): Promise<UpstreamResponse> {
    req.body?.resume(); // an upstream reads the request, as the real one does
    const body = new Readable({ read() {} });
    body.destroy(); // closed before anyone read it: no 'end' will ever be emitted
    return {
      status: 200, headers: { 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'no such thing' },
      body, endStreamOnHeaders: true, trailers: () => undefined, discard: () => {},
    };
  };
  engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
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

test('a trailers-only NOT_FOUND whose upstream stream is already destroyed reaches the client at once', async () => {
  const err = await new Promise<grpc.ServiceError | null>((resolve) => {
    client.makeUnaryRequest('/test.Echo/Get', identity, identity, Buffer.from('x'), new grpc.Metadata(), { deadline: Date.now() + 3_000 },
      (e: grpc.ServiceError | null) => resolve(e));
  });
  assert.equal(err?.code, grpc.status.NOT_FOUND, err?.message);
  assert.equal(err?.details, 'no such thing');
});
