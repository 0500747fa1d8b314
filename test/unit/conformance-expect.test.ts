// The conformance tier's response checker (test/conformance/expect.ts): a conforming answer
// passes, and each way an answer can be wrong is caught and named, so a conformance test cannot
// pass by accident.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mismatches, type Expected } from '../conformance/expect.ts';
import type { ClientRequest, ClientResponse } from '../conformance/client-protocol.ts';

const req: ClientRequest = { host: 'echo', path: '/orig?x=1' };
const echoed = (over: Partial<NonNullable<ClientResponse['echo']>> = {}, headers: Record<string, string[]> = {}): ClientResponse => ({
  status: 200, headers,
  echo: { pod: 'echo-v1', namespace: 'gamma', method: 'GET', path: '/orig?x=1', headers: { 'x-a': 'one, two', 'x-b': ['b1', 'b2'] }, ...over },
});

test('a conforming echo answer has no mismatches', () => {
  const exp: Expected = { backend: 'echo-v1', path: '/orig?x=1', requestHeaders: { 'X-A': 'one,two', 'x-b': 'b1,b2' }, absentRequestHeaders: ['x-c'], responseHeaders: { 'X-Set': 'v' }, absentResponseHeaders: ['x-gone'] };
  assert.deepEqual(mismatches(req, echoed({}, { 'x-set': ['v'] }), exp), []);
});

test('each wrong detail is named: status, backend, namespace, path, request and response headers', () => {
  assert.match(mismatches(req, { status: 404, headers: {}, body: 'no route' }, {}).join(), /status 404 \(want 200\): no route/);
  assert.match(mismatches(req, echoed({ pod: 'echo-v2' }), { backend: 'echo-v1' }).join(), /served by gamma\/echo-v2 \(want echo-v1\)/);
  assert.match(mismatches(req, echoed({ namespace: 'other' }), { backend: 'echo-v1' }).join(), /namespace other \(want gamma\)/);
  assert.match(mismatches(req, echoed(), { path: '/rewritten' }).join(), /backend saw path \/orig\?x=1 \(want \/rewritten\)/);
  assert.match(mismatches(req, echoed(), { requestHeaders: { 'x-a': 'one' } }).join(), /backend saw x-a: one,two \(want one\)/);
  assert.match(mismatches(req, echoed(), { absentRequestHeaders: ['X-B'] }).join(), /backend saw X-B: b1,b2 \(want it absent\)/);
  assert.match(mismatches(req, echoed(), { responseHeaders: { 'x-set': 'v' } }).join(), /response x-set: \(absent\) \(want v\)/);
  assert.match(mismatches(req, echoed({}, { 'x-gone': ['1'] }), { absentResponseHeaders: ['X-Gone'] }).join(), /response X-Gone: 1 \(want it absent\)/);
  assert.match(mismatches(req, { status: 200, headers: {}, body: 'plain' }, { backend: 'echo-v1' }).join(), /no echo backend answered/);
});

test('a redirect must keep every Location part the filter does not change', () => {
  const redirect = (location: string): ClientResponse => ({ status: 302, headers: { location: [location] } });
  assert.deepEqual(mismatches(req, redirect('http://echo/orig?x=1'), { status: 302, redirect: {} }), []);
  assert.deepEqual(mismatches(req, redirect('https://example.org:8083/new'), { status: 302, redirect: { scheme: 'https', host: 'example.org', port: '8083', path: '/new' } }), []);
  assert.match(mismatches(req, redirect('http://echo:8080/orig?x=1'), { status: 302, redirect: {} }).join(), /port "8080" \(want ""\)/);
  assert.match(mismatches(req, redirect('http://other/orig?x=1'), { status: 302, redirect: {} }).join(), /host "other" \(want "echo"\)/);
  assert.match(mismatches(req, { status: 302, headers: {} }, { status: 302, redirect: {} }).join(), /no Location header/);
});

test('gRPC answers compare the gRPC status, OK by default', () => {
  const grpc: ClientRequest = { protocol: 'grpc', host: 'echo:7070' };
  assert.deepEqual(mismatches(grpc, { status: 0, headers: {}, echo: { pod: 'echo-v1', namespace: 'gamma', method: 'POST', path: '/weft.echo.Echo/Echo', headers: {} } }, { backend: 'echo-v1' }), []);
  assert.match(mismatches(grpc, { status: 12, headers: {}, body: 'unknown method' }, {}).join(), /status 12 \(want 0\)/);
});
