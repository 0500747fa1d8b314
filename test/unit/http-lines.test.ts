// weftctl tap and the dashboard read each agent's and waypoint's /flows as newline-delimited JSON.
// A source that sends a line without end (a pod wearing a waypoint's label, or a broken component)
// must not grow the reader's memory without bound: a line past MAX_LINE_CHARS ends that stream with
// an error that names it (WEFT_LINE_TOO_LONG, told to the operator as the source's error), and the
// lines before it were delivered.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { MAX_LINE_CHARS, readLines } from '../../cli/http-lines.ts';

const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  res.write('{"type":"hello"}\n');
  // Then a line that never ends, a chunk at a time, as long as the reader takes it.
  const chunk = 'x'.repeat(64 * 1024);
  const pump = () => { while (!res.destroyed && res.write(chunk)); };
  res.on('drain', pump);
  pump();
});
after(() => { server.closeAllConnections(); server.close(); });

test('a line longer than MAX_LINE_CHARS ends the stream with WEFT_LINE_TOO_LONG; the lines before it were delivered', async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const res = await new Promise<http.IncomingMessage>((resolve) => http.get(`http://127.0.0.1:${(server.address() as AddressInfo).port}/flows`, resolve));
  const lines: string[] = [];
  const err = await readLines(res, (l) => lines.push(l)).then(() => undefined, (e: Error & { code?: string }) => e);
  assert.deepEqual(lines, ['{"type":"hello"}']);
  assert.equal(err?.code, 'WEFT_LINE_TOO_LONG', String(err));
  assert.match(err!.message, /longer than 1048576 characters/);
  assert.ok(res.destroyed, 'the stream is closed');
  assert.equal(MAX_LINE_CHARS, 1 << 20);
});
