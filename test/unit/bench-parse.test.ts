// The parsers `make bench` reads wrk, hey, iperf3, /proc and V8 CPU profiles with.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseWrk, parseHey, parseIperf3, parseProcStatCpuTicks, parseProcStatusKb, wrkTimeToMs, topSelfTime, parseHboneBench, lastJsonLine,
  BenchParseError, promSample, selfTimeByOrigin,
} from '../../bench/parse.ts';

const WRK = `Running 10s test @ http://10.96.0.10/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   571.23us  412.07us  21.55ms   93.12%
    Req/Sec    14.12k     1.03k   16.40k    70.50%
  Latency Distribution
     50%  480.00us
     75%  612.00us
     90%  820.00us
     99%    2.03ms
  281003 requests in 10.00s, 56.82MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  28099.71
Transfer/sec:      5.68MB
`;

test('reads requests/s, the latency percentiles in ms, and the errors from wrk --latency', () => {
  const r = parseWrk(WRK);
  assert.equal(r.requestsPerSec, 28099.71);
  assert.equal(r.requests, 281003);
  assert.deepEqual(r.latencyMs, { 50: 0.48, 75: 0.612, 90: 0.82, 99: 2.03 });
  assert.equal(r.socketErrors, 4);
  assert.equal(r.non2xx, 7);
});

test('converts every wrk time unit to milliseconds', () => {
  assert.equal(wrkTimeToMs('250.00us'), 0.25);
  assert.equal(wrkTimeToMs('1.50ms'), 1.5);
  assert.equal(wrkTimeToMs('2.00s'), 2000);
  assert.equal(wrkTimeToMs('1.00m'), 60_000);
  assert.throws(() => wrkTimeToMs('fast'), BenchParseError);
});

test('refuses wrk output without a latency distribution, saying to run with --latency', () => {
  const noLatency = WRK.replace(/  Latency Distribution[\s\S]*?99%\s+2\.03ms\n/, '');
  assert.throws(() => parseWrk(noLatency), /--latency/);
});

const HEY = `
Summary:
  Total:\t10.0061 secs
  Slowest:\t0.0153 secs
  Fastest:\t0.0002 secs
  Average:\t0.0007 secs
  Requests/sec:\t999.2900

  Total data:\t640000 bytes
  Size/request:\t64 bytes

Response time histogram:
  0.000 [1]\t|
  0.002 [9950]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■

Latency distribution:
  10% in 0.0004 secs
  25% in 0.0005 secs
  50% in 0.0006 secs
  75% in 0.0008 secs
  90% in 0.0010 secs
  95% in 0.0012 secs
  99% in 0.0021 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0002 secs, 0.0153 secs
  req write:\t0.0000 secs, 0.0002 secs, 0.0013 secs

Status code distribution:
  [200]\t9990 responses
  [503]\t3 responses

Error distribution:
  [2]\tGet "http://10.96.0.10/": dial tcp 10.96.0.10:80: connect: connection refused
  [1]\tGet "http://10.96.0.10/": EOF
`;

test('reads requests/s, latency percentiles in ms, status codes and errors from hey', () => {
  const r = parseHey(HEY);
  assert.equal(r.requestsPerSec, 999.29);
  assert.equal(r.latencyMs['50'], 0.6);
  assert.equal(r.latencyMs['99'], 2.1);
  assert.equal(Object.keys(r.latencyMs).length, 7);
  assert.deepEqual(r.statusCodes, { 200: 9990, 503: 3 });
  assert.equal(r.errors, 3);
});

test('hey without errors has zero errors', () => {
  const r = parseHey(HEY.split('Error distribution:')[0]!);
  assert.equal(r.errors, 0);
});

test('reads receiver goodput and retransmits from iperf3 -J, and reports iperf3 errors', () => {
  const doc = { start: {}, intervals: [], end: { sum_sent: { bits_per_second: 3.3e9, retransmits: 12, seconds: 10 }, sum_received: { bits_per_second: 3.2e9, seconds: 10.04 } } };
  assert.deepEqual(parseIperf3(JSON.stringify(doc)), { receivedBitsPerSec: 3.2e9, sentBitsPerSec: 3.3e9, retransmits: 12, seconds: 10.04 });
  assert.throws(() => parseIperf3(JSON.stringify({ start: {}, error: 'unable to connect to server: Connection refused' })), /Connection refused/);
  assert.throws(() => parseIperf3('Connecting to host 10.77.2.4, port 5201'), /-J/);
});

test('reads utime + stime from /proc/<pid>/stat even when the command name has spaces and parentheses', () => {
  const stat = '4242 (node (weft) x) S 1 4242 4242 0 -1 4194560 9381 0 0 0 1234 567 0 0 20 0 11 0 12345 1048576000 40000 18446744073709551615';
  assert.equal(parseProcStatCpuTicks(stat), 1234 + 567);
});

test('reads VmHWM, VmRSS and RssAnon in kB from /proc/<pid>/status', () => {
  const status = 'Name:\tnode\nVmPeak:\t 1200000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\nRssAnon:\t   41000 kB\nRssFile:\t   29000 kB\n';
  assert.equal(parseProcStatusKb(status, 'VmHWM'), 81234);
  assert.equal(parseProcStatusKb(status, 'VmRSS'), 70000);
  assert.equal(parseProcStatusKb(status, 'RssAnon'), 41000);
  assert.throws(() => parseProcStatusKb('Name:\tkthreadd\n', 'VmRSS'), BenchParseError);
});

test('ranks functions of a V8 CPU profile by self time, without idle, with repository-relative files', () => {
  const profile = {
    startTime: 0,
    endTime: 1_000_000, // 1 s over 100 samples: 10 ms each
    nodes: [
      { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: -1 }, hitCount: 0 },
      { id: 2, callFrame: { functionName: '(idle)', url: '', lineNumber: -1 }, hitCount: 50 },
      { id: 3, callFrame: { functionName: 'writeGeneric', url: 'node:internal/stream_base_commons', lineNumber: 9 }, hitCount: 30 },
      { id: 4, callFrame: { functionName: 'pipe', url: 'file:///repo/lib/hbone/pipe.ts', lineNumber: 41 }, hitCount: 15 },
      { id: 5, callFrame: { functionName: 'pipe', url: 'file:///repo/lib/hbone/pipe.ts', lineNumber: 41 }, hitCount: 5 },
    ],
  };
  const top = topSelfTime(profile, 5, '/repo');
  assert.deepEqual(top, [
    { frame: 'writeGeneric (node:internal/stream_base_commons:10)', selfMs: 300, selfPercent: 60 },
    { frame: 'pipe (lib/hbone/pipe.ts:42)', selfMs: 200, selfPercent: 40 },
  ]);
});

test('reads the figures of bench/hbone-throughput.ts and the JSON line of the other micro-benchmarks', () => {
  const out = 'hbone-bench single-stream upload 256 MB plain-tcp: 1251.4 MB/s\n' +
    'hbone-bench single-stream upload 256 MB hbone-agent-pair: 328.9 MB/s  (0.26x plain-tcp)\n' +
    'hbone-bench single-stream upload cpu ms per GB hbone-agent-pair: client-side proxy 1916, server-side proxy 1239\n' +
    'hbone-bench req/s 64B echo on 32 open connections stunnel-pair: 18213 req/s  (0.33x plain-tcp)\n';
  assert.deepEqual(parseHboneBench(out), [
    { figure: 'single-stream upload 256 MB', path: 'plain-tcp', value: 1251.4, unit: 'MB/s' },
    { figure: 'single-stream upload 256 MB', path: 'hbone-agent-pair', value: 328.9, unit: 'MB/s' },
    { figure: 'req/s 64B echo on 32 open connections', path: 'stunnel-pair', value: 18213, unit: 'req/s' },
  ]);
  assert.deepEqual(lastJsonLine('controller-push: summary\n{"p50":98.7}\n'), { p50: 98.7 });
  assert.equal(lastJsonLine('no json here'), undefined);
});

test('reads an unlabelled Prometheus sample (the agent heap gauges) and nothing for a missing one', () => {
  const text = '# HELP nodejs_heap_size_used_bytes Process heap size used from Node.js in bytes.\n# TYPE nodejs_heap_size_used_bytes gauge\n' +
    'nodejs_heap_size_used_bytes 23456789\nnodejs_heap_size_total_bytes 3.5e7\nnodejs_heap_space_size_used_bytes{space="old"} 1\n';
  assert.equal(promSample(text, 'nodejs_heap_size_used_bytes'), 23456789);
  assert.equal(promSample(text, 'nodejs_heap_size_total_bytes'), 35_000_000);
  assert.equal(promSample(text, 'process_resident_memory_bytes'), undefined);
});

test('groups CPU profile self time by origin: native, GC, Node internals, Weft code, dependencies', () => {
  const node = (id: number, functionName: string, url: string, hitCount: number) => ({ id, callFrame: { functionName, url, lineNumber: 0 }, hitCount });
  const profile = {
    startTime: 0, endTime: 100,
    nodes: [
      node(1, '(idle)', '', 100), node(2, '(program)', '', 40), node(3, 'writev', '', 30), node(4, '(garbage collector)', '', 10),
      node(5, 'onStreamRead', 'node:internal/stream_base_commons', 10), node(6, 'pipe', 'file:///repo/lib/hbone/pipe.ts', 5),
      node(7, 'encode', 'file:///repo/node_modules/x/index.js', 5),
    ],
  };
  const by = selfTimeByOrigin(profile, '/repo');
  assert.equal(Object.values(by).reduce((a, b) => a + b, 0), 100);
  assert.equal(by['Weft code (lib/, agent/)'], 5);
  assert.equal(by['dependencies (node_modules)'], 5);
  assert.equal(by['garbage collector'], 10);
  assert.equal(Object.keys(by)[0], 'native, outside JS calls (libuv, TLS reads, HTTP/2 parsing)');
});
