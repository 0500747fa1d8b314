// Sample application for the local mesh: an HTTP/1.1 and h2c echo server that says who it is and
// who it sees as the client, so traffic through the mesh can be checked by eye and by tests.
//   node cli/local/apps/echo.ts --port 8080 --name reviews-v1 --version v1 [--fail-rate 0.5]
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createHash } from 'node:crypto';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '8080' },
    name: { type: 'string', default: process.env.POD_NAME ?? 'echo' },
    namespace: { type: 'string', default: process.env.POD_NAMESPACE ?? 'default' },
    version: { type: 'string', default: 'v1' },
    'fail-rate': { type: 'string', default: '0' },
    'fail-every': { type: 'string', default: '0' },
  },
});
// --fail-rate answers 503 at random; --fail-every N answers 503 to every Nth request (repeatable tests).
const failRate = Number(values['fail-rate']);
const failEvery = Number(values['fail-every']);
let served = 0;

function answer(method: string, path: string, socket: net.Socket | undefined, headers: Record<string, unknown>) {
  served++;
  const fail = (failRate > 0 && Math.random() < failRate) || (failEvery > 0 && served % failEvery === 0);
  const peer = socket?.remoteAddress;
  const peerPort = socket?.remotePort;
  const body = JSON.stringify({ pod: values.name, namespace: values.namespace, version: values.version, method, path, peer, peerPort, headers });
  return { status: fail ? 503 : 200, body: body + '\n' };
}

const h1 = http.createServer((req, res) => {
  // POST /sha256 hashes the body as it streams (large transfers), anything else echoes.
  const hash = req.url === '/sha256' ? createHash('sha256') : undefined;
  let bytes = 0;
  req.on('data', (c: Buffer) => {
    bytes += c.length;
    hash?.update(c);
  });
  req.on('end', () => {
    if (hash) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ pod: values.name, bytes, sha256: hash.digest('hex'), peer: req.socket.remoteAddress }) + '\n');
      return;
    }
    const { status, body } = answer(req.method ?? 'GET', req.url ?? '/', req.socket, req.headers);
    res.writeHead(status, { 'content-type': 'application/json', 'x-served-by': values.name!, 'x-version': values.version! });
    res.end(body);
  });
});
const h2 = http2.createServer();
h2.on('stream', (stream, headers) => {
  stream.resume();
  stream.on('end', () => {
    const { status, body } = answer(String(headers[':method']), String(headers[':path']), stream.session?.socket as net.Socket | undefined, headers);
    stream.respond({ ':status': status, 'content-type': 'application/json', 'x-served-by': values.name!, 'x-version': values.version! });
    stream.end(body);
  });
});

// One port for both: h2c prior knowledge starts with the HTTP/2 preface.
const PREFACE = 'PRI * HTTP/2.0';
const server = net.createServer((socket) => {
  socket.once('data', (first: Buffer) => {
    socket.pause();
    socket.unshift(first);
    (first.toString('latin1', 0, PREFACE.length) === PREFACE ? h2 : h1).emit('connection', socket);
    socket.resume();
  });
  socket.on('error', () => socket.destroy());
});
server.listen(Number(values.port), '0.0.0.0', () => {
  console.log(JSON.stringify({ msg: 'echo listening', port: Number(values.port), name: values.name, version: values.version }));
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
