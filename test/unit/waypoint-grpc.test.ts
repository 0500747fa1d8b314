import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, endpoint, match, metricSamples, route, service, startTunnelListener, type Listener,
} from '../../waypoint/testing/harness.ts';

const identity = (b: Buffer): Buffer => b;
const method = (name: string): grpc.MethodDefinition<Buffer, Buffer> => ({
  path: `/test.Echo/${name}`, requestStream: false, responseStream: false,
  requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity,
});
const definition: grpc.ServiceDefinition = {
  Echo: method('Echo'),
  Fail: method('Fail'),
  Chat: { ...method('Chat'), requestStream: true, responseStream: true },
};

async function startGrpcBackend(name: string): Promise<{ port: number; calls: number; stop(): Promise<void> }> {
  const server = new grpc.Server();
  const state = { port: 0, calls: 0, stop: (): Promise<void> => new Promise((r) => server.tryShutdown(() => r())) };
  server.addService(definition, {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => { state.calls++; cb(null, Buffer.from(`${name}:${call.request.toString()}`)); },
    Fail: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => { state.calls++; cb({ code: grpc.status.NOT_FOUND, details: 'no such thing' }); },
    Chat: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', (m: Buffer) => call.write(Buffer.from(`${name}:${m.toString()}`)));
      call.on('end', () => call.end());
    },
  });
  state.port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))));
  return state;
}

type EchoClient = grpc.Client & Record<'Echo' | 'Fail', (req: Buffer, cb: (err: grpc.ServiceError | null, res?: Buffer) => void) => void>;

function call(client: EchoClient, m: 'Echo' | 'Fail', body: string): Promise<{ err: grpc.ServiceError | null; res?: string }> {
  return new Promise((resolve) => client[m](Buffer.from(body), (err, res) => resolve(res ? { err, res: res.toString() } : { err })));
}

describe('waypoint gRPC', () => {
  let main: Awaited<ReturnType<typeof startGrpcBackend>>;
  let canary: Awaited<ReturnType<typeof startGrpcBackend>>;
  let engine: WaypointEngine;
  let listener: Listener;
  let client: EchoClient;

  before(async () => {
    main = await startGrpcBackend('main');
    canary = await startGrpcBackend('canary');
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [
        service('echo', '10.96.0.20', [endpoint(main.port)], { port: 9000, appProtocol: 'grpc' }),
        service('echo-canary', '10.96.0.21', [endpoint(canary.port)], { port: 9000, appProtocol: 'grpc' }),
      ],
      routes: [route('echo', 'echo', [
        { matches: [match({ path: { type: 'Exact', value: '/test.Echo/Echo' }, headers: [{ type: 'Exact', name: 'x-canary', value: '1' }] })], backends: [{ ...backend('echo-canary'), port: 9000 }] },
        { matches: [match({ path: { type: 'PathPrefix', value: '/test.Echo' } })], backends: [{ ...backend('echo'), port: 9000 }] },
      ], { kind: 'GRPCRoute' })],
    }));
    listener = await startTunnelListener(engine, '10.96.0.20:9000');
    const Ctor = grpc.makeGenericClientConstructor(definition, 'Echo');
    client = new Ctor(`127.0.0.1:${listener.port}`, grpc.credentials.createInsecure()) as unknown as EchoClient;
  });

  after(async () => {
    client.close();
    await listener.close();
    await engine.close();
    await main.stop();
    await canary.stop();
  });

  it('proxies a unary call to the service', async () => {
    const r = await call(client, 'Echo', 'hello');
    assert.equal(r.err, null);
    assert.equal(r.res, 'main:hello');
  });

  it('routes by GRPCRoute method and header match', async () => {
    const r = await new Promise<string>((resolve, reject) => {
      const md = new grpc.Metadata();
      md.set('x-canary', '1');
      (client as unknown as { makeUnaryRequest: grpc.Client['makeUnaryRequest'] }).makeUnaryRequest('/test.Echo/Echo', identity, identity, Buffer.from('hi'), md,
        (err: grpc.ServiceError | null, res?: Buffer) => (err ? reject(err) : resolve(res!.toString())));
    });
    assert.equal(r, 'canary:hi');
  });

  it('streams a bidirectional call message by message', async () => {
    const stream = (client as unknown as { makeBidiStreamRequest: grpc.Client['makeBidiStreamRequest'] })
      .makeBidiStreamRequest('/test.Echo/Chat', identity, identity, new grpc.Metadata());
    const replies: string[] = [];
    const next = (): Promise<string> => new Promise((resolve) => stream.once('data', (m: Buffer) => resolve(m.toString())));
    for (const word of ['one', 'two', 'three']) {
      const reply = next();
      stream.write(Buffer.from(word));
      // Each answer arrives before the next message is sent: nothing waits for the end of the request.
      replies.push(await reply);
    }
    const status = new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
    stream.end();
    assert.deepEqual(replies, ['main:one', 'main:two', 'main:three']);
    assert.equal((await status).code, grpc.status.OK);
  });

  it('passes the backend gRPC status through and labels metrics with grpc_response_status', async () => {
    const r = await call(client, 'Fail', 'x');
    assert.equal(r.err?.code, grpc.status.NOT_FOUND);
    assert.equal(r.err?.details, 'no such thing');
    const samples = await metricSamples(engine, 'istio_requests_total');
    const failed = samples.find((s) => s.labels['grpc_response_status'] === String(grpc.status.NOT_FOUND));
    assert.ok(failed, JSON.stringify(samples));
    assert.equal(failed.labels['request_protocol'], 'grpc');
    assert.equal(failed.labels['response_code'], '200');
    assert.ok(samples.some((s) => s.labels['grpc_response_status'] === '0'));
  });

  it('answers UNIMPLEMENTED to a method no GRPCRoute rule matches, without calling a backend (Gateway API GAMMA)', async () => {
    const calls = main.calls + canary.calls;
    const r = await new Promise<grpc.ServiceError | null>((resolve) => {
      (client as unknown as { makeUnaryRequest: grpc.Client['makeUnaryRequest'] }).makeUnaryRequest('/other.Service/Call', identity, identity, Buffer.from('x'), new grpc.Metadata(),
        (err: grpc.ServiceError | null) => resolve(err));
    });
    assert.equal(r?.code, grpc.status.UNIMPLEMENTED);
    assert.equal(main.calls + canary.calls, calls);
    const samples = await metricSamples(engine, 'istio_requests_total');
    assert.ok(samples.some((s) => s.labels['grpc_response_status'] === String(grpc.status.UNIMPLEMENTED) && s.labels['response_flags'] === 'NR'));
  });

  // grpcroute_types.go (GRPCRouteRule.BackendRefs): "When a GRPCBackendRef is invalid, UNAVAILABLE
  // statuses MUST be returned for requests that would have otherwise been routed to an invalid backend."
  it('answers UNAVAILABLE to a call routed to a backend that does not resolve, or to no backend with weight', async () => {
    const cfg = engine.config;
    try {
      engine.applyConfig({ ...cfg, routes: [route('echo', 'echo', [
        { matches: [match({ path: { type: 'Exact', value: '/test.Echo/Echo' } })], backends: [{ ...backend('missing'), port: 9000 }] },
        { matches: [match({ path: { type: 'Exact', value: '/test.Echo/Fail' } })], backends: [{ ...backend('echo', 0), port: 9000 }] },
      ], { kind: 'GRPCRoute' })] });
      const calls = main.calls + canary.calls;
      const gone = await call(client, 'Echo', 'x');
      assert.equal(gone.err?.code, grpc.status.UNAVAILABLE, gone.err?.details);
      assert.match(gone.err?.details ?? '', /shop\/missing/);
      assert.equal((await call(client, 'Fail', 'x')).err?.code, grpc.status.UNAVAILABLE);
      assert.equal(main.calls + canary.calls, calls);
      const samples = await metricSamples(engine, 'istio_requests_total');
      assert.ok(samples.some((x) => x.labels['grpc_response_status'] === String(grpc.status.UNAVAILABLE) && x.labels['response_flags'] === 'NR'), JSON.stringify(samples));
    } finally {
      engine.applyConfig(cfg);
    }
  });

  it('turns a local denial into a gRPC PERMISSION_DENIED status', async () => {
    const cfg = engine.config;
    engine.applyConfig({ ...cfg, policies: [{ name: 'no-fail', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/echo'], layer: 'L7', rules: [{ from: [], to: [{ paths: ['/test.Echo/Fail'] }], when: [], layer: 'L7' }] }] });
    const r = await call(client, 'Fail', 'x');
    assert.equal(r.err?.code, grpc.status.PERMISSION_DENIED);
    assert.match(r.err?.details ?? '', /shop\/no-fail/);
    assert.equal((await call(client, 'Echo', 'still')).res, 'main:still');
    const samples = await metricSamples(engine, 'istio_requests_total');
    assert.ok(samples.some((s) => s.labels['grpc_response_status'] === String(grpc.status.PERMISSION_DENIED) && s.labels['response_flags'] === 'RBAC'));
  });
});
