// The controller's federation listener (15014: this cluster's export, read by the other clusters'
// controllers and its own east-west gateway), attacked from the network and from a peer holding a
// valid mesh certificate: Node's defaults would let one source hold any number of connections, a
// silent TCP connection 120 s (TLS handshake), a request whose headers never end 60 s and a request
// 300 s (a slowloris). Each is bounded here, counted in weft_federation_listener_refused_total{reason}
// and logged, and the readers from other sources are still served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Agent, request } from 'node:https';
import { refusalLineBound } from '../lab/log-bound.ts';
import { Registry } from 'prom-client';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { Federation, DEFAULT_FEDERATION_LISTENER_LIMITS, type FederationOptions } from '../../controller/src/federation.ts';
import { FEDERATION_PATH } from '../../lib/model/federation.ts';
import { emptyMeshModel } from '../../lib/model/mesh.ts';
import { silentLogger, type Logger } from '../../lib/log.ts';
import { until } from '../lab/wait.ts';

const TD = 'cluster.local';
const CONTROLLER = `spiffe://${TD}/ns/weft-system/sa/weft-controller`;

interface Lab {
  fed: Federation;
  registry: Registry;
  warnings: Array<{ msg: string; f: Record<string, unknown> | undefined }>;
  creds(spiffeId: string): Promise<{ key: string; cert: string; ca: string[] }>;
  /** GET the export as `spiffeId` from `localAddress`: the status. */
  read(spiffeId: string, localAddress?: string): Promise<number>;
}

async function withListener(limits: FederationOptions['listenerLimits'], fn: (lab: Lab) => Promise<void>): Promise<void> {
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const creds = async (spiffeId: string) => {
    const c = await root.issueServingCertificate({ uris: [spiffeId] });
    return { key: c.keyPem, cert: c.certChain.join(''), ca: root.trustBundle() };
  };
  const tls = await creds(CONTROLLER);
  const registry = new Registry();
  const warnings: Lab['warnings'] = [];
  const log: Logger = { ...silentLogger, warn: (msg, f) => void warnings.push({ msg, f }) };
  const fed = new Federation({
    cluster: 'cluster1', network: 'network1', listen: { host: '0.0.0.0', port: 0 }, remotes: [], tls: () => tls,
    mayRead: (x) => x === CONTROLLER, isController: (x) => x === CONTROLLER, log, registry, ...(limits ? { listenerLimits: limits } : {}),
  });
  await fed.start();
  const read = async (spiffeId: string, localAddress?: string) => {
    const c = await creds(spiffeId);
    return new Promise<number>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: fed.port, path: FEDERATION_PATH, ...c, agent: false, checkServerIdentity: () => undefined, ...(localAddress ? { localAddress } : {}) }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.end();
    });
  };
  try {
    await fn({ fed, registry, warnings, creds, read });
  } finally {
    await fed.stop();
  }
}

const refusedCount = async (registry: Registry, reason: string) => {
  const m = /(\d+)\n/.exec((await registry.metrics()).split('\n').filter((l) => l.startsWith(`weft_federation_listener_refused_total{reason="${reason}"}`)).join('\n') + '\n');
  return m ? Number(m[1]) : 0;
};

/** `p`, or a failure naming `what` after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** A TCP connection that sends nothing; resolves once connected, with a promise of its close. */
function silent(port: number, localAddress = '127.0.0.1'): Promise<{ socket: Socket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress });
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => {});
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
}

test('federation listener: its limits are tighter than Node\'s defaults (TLS handshake 120 s, headers 60 s, request 300 s, no connection cap)', () => {
  const d = DEFAULT_FEDERATION_LISTENER_LIMITS;
  assert.ok(d.handshakeTimeoutMs <= 10_000 && d.headersTimeoutMs <= 10_000 && d.requestTimeoutMs <= 10_000 && d.idleTimeoutMs <= 10_000, JSON.stringify(d));
  assert.ok(d.maxConnectionsPerSource >= 8 && d.maxConnectionsPerSource <= 128, JSON.stringify(d));
});

test('federation listener, attacker side: one source address holds at most maxConnectionsPerSource connections (TLS handshakes included); past it a connection is closed at once, counted (too-many-connections) and logged with the address; a reader from another address is still served', async () => {
  await withListener(undefined, async ({ fed, registry, warnings, read }) => {
    const max = DEFAULT_FEDERATION_LISTENER_LIMITS.maxConnectionsPerSource;
    const held: Socket[] = [];
    try {
      for (let i = 0; i < max; i++) held.push((await silent(fed.port!)).socket);
      const over = await silent(fed.port!);
      held.push(over.socket);
      await within(over.closed, 3_000, `connection ${max + 1} from one source closed`);
      assert.equal(held.slice(0, max).filter((s) => s.destroyed).length, 0, 'the first ones are untouched (within the handshake timeout)');
      assert.ok(await refusedCount(registry, 'too-many-connections') >= 1);
      assert.ok(warnings.some((w) => w.msg.startsWith('federation listener refused a connection') && w.f?.reason === 'too-many-connections' && w.f?.address === '127.0.0.1'));
      assert.equal(await read(CONTROLLER, '127.0.0.2'), 200, 'another source is served');
    } finally {
      for (const s of held) s.destroy();
    }
    await until('the source\'s count is given back as its connections close', async () => (await read(CONTROLLER).catch(() => 0)) === 200, 5_000);
  });
});

test('federation listener, attacker side: a connection that never completes its TLS handshake, and a peer with a valid mesh certificate that sends its headers a line at a time without end (slowloris) are closed at their timeouts, counted and logged; readers are served meanwhile', async () => {
  const limits = { handshakeTimeoutMs: 400, headersTimeoutMs: 400, requestTimeoutMs: 800, idleTimeoutMs: 400 };
  await withListener(limits, async ({ fed, registry, warnings, creds, read }) => {
    // No ClientHello.
    const mute = await silent(fed.port!);
    await within(mute.closed, 3_000, 'a connection without a ClientHello closed');
    await until('the handshake timeout is counted', async () => await refusedCount(registry, 'tls-handshake') >= 1, 3_000);

    // Any workload's certificate passes TLS (who may read is judged on the request): its headers never end.
    const evil = await creds(`spiffe://${TD}/ns/demo/sa/evil`);
    const s = tlsConnect({ host: '127.0.0.1', port: fed.port!, ...evil, checkServerIdentity: () => undefined });
    s.on('error', () => {});
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    await new Promise<void>((r) => s.once('secureConnect', () => r()));
    s.write(`GET ${FEDERATION_PATH} HTTP/1.1\r\nHost: x\r\n`);
    const drip = setInterval(() => !s.destroyed && s.write('X-Slow: a\r\n'), 50);
    try {
      assert.equal(await read(CONTROLLER), 200, 'a reader is served meanwhile');
      await within(closed, 3_000, 'the slowloris closed');
    } finally {
      clearInterval(drip);
      s.destroy();
    }
    await until('the request timeout is counted', async () => await refusedCount(registry, 'request-timeout') >= 1, 3_000);
    assert.ok(warnings.some((w) => w.msg.startsWith('federation listener refused a connection') && w.f?.reason === 'request-timeout' && w.f?.address === '127.0.0.1'));
  });
});

test('federation listener, attacker side: a peer whose certificate may not read the export (any workload of the mesh) cannot turn its 403s into log volume: every one counted (weft_federation_export_reads_total{result="forbidden"}), at most REFUSAL_LOG_PER_SECOND lines a second with a count of the rest', async () => {
  await withListener(undefined, async ({ fed, registry, warnings, creds }) => {
    const evil = await creds(`spiffe://${TD}/ns/demo/sa/evil`);
    const agent = new Agent({ keepAlive: true, maxSockets: 4 });
    const N = 600;
    const one = () => new Promise<number>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: fed.port, path: FEDERATION_PATH, ...evil, agent, checkServerIdentity: () => undefined }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.end();
    });
    try {
      const started = Date.now();
      const statuses = await Promise.all(Array.from({ length: N }, one));
      assert.ok(statuses.every((s) => s === 403));
      const bound = refusalLineBound(started);
      const lines = warnings.filter((w) => w.msg === 'federation export refused').length;
      assert.ok(lines <= bound, `${lines} refusal lines for ${N} requests in ${Date.now() - started} ms (at most ${bound})`);
      assert.match(await registry.metrics(), new RegExp(`weft_federation_export_reads_total\\{result="forbidden"\\} ${N}\\n`));
      // The count of the lines left out is written with the next line of a later second (on a
      // machine slow enough that fewer than REFUSAL_LOG_PER_SECOND arrived in any second, every
      // refusal was logged and there is nothing to count).
      if (lines < N) await until('the rest are counted in a line', async () => {
        await one();
        return warnings.some((w) => /refusals not logged/.test(w.msg));
      }, 3_000, { intervalMs: 100 });
    } finally {
      agent.destroy();
    }
  });
});

// The export may be 16 MiB and every east-west gateway replica and every remote reads it each
// second: serializing it per request was up to 16 MiB of JSON.stringify per read. The selection
// changes only at a merge, so its text is made once per merge.
test('federation listener: two reads of the export without a merge serialize it once; a merge makes the next read serialize it again', async () => {
  await withListener(undefined, async ({ fed, read }) => {
    const stringify = JSON.stringify;
    let serialized = 0;
    JSON.stringify = ((v: unknown, ...rest: unknown[]) => {
      if (v !== null && typeof v === 'object' && (v as { cluster?: unknown }).cluster === 'cluster1' && Array.isArray((v as { services?: unknown }).services)) serialized++;
      return (stringify as (...a: unknown[]) => string)(v, ...rest);
    }) as typeof JSON.stringify;
    try {
      assert.equal(await read(CONTROLLER), 200);
      assert.equal(await read(CONTROLLER), 200);
      assert.equal(serialized, 1, 'once for both reads');
      fed.merge(emptyMeshModel());
      assert.equal(await read(CONTROLLER), 200);
      assert.equal(serialized, 2, 'again after a merge');
      assert.equal(fed.exportText().length, Buffer.byteLength(stringify(fed.export())));
    } finally {
      JSON.stringify = stringify;
    }
  });
});
