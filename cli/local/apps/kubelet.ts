// The local mesh's stand-in for a node's kubelet, as far as Weft cares: it runs in the node's
// network namespace, in the node's `system.slice/kubelet.service` cgroup (where systemd runs a
// real kubelet, and where the agent finds it), and probes pods the way a kubelet's httpGet probe
// does: an HTTP GET to the pod's address and probe port, from the node. Weft lets exactly these
// connections into enrolled pods without the mesh (the kernel knows them by the prober's cgroup);
// any other process on the node is a client like any other.
//   node cli/local/apps/kubelet.ts --targets <json file> --status <json file> [--interval-ms 1000]
// The targets file ([{ pod, ip, port, path?, tcp? }]) is re-read every round, so pods can be added
// while it runs; the status file gets { [pod]: { ok, status?, error?, at, okCount, failCount } }.
// `tcp: true` is a tcpSocket probe (the connection opens), otherwise an httpGet of `path`.
import http from 'node:http';
import net from 'node:net';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

interface Target { pod: string; ip: string; port: number; path?: string; tcp?: boolean }
interface Result { ok: boolean; status?: number; error?: string; at: string; okCount: number; failCount: number }

const { values } = parseArgs({ options: { targets: { type: 'string' }, status: { type: 'string' }, 'interval-ms': { type: 'string', default: '1000' } } });
if (!values.targets || !values.status) {
  process.stderr.write('usage: kubelet.ts --targets <json file> --status <json file> [--interval-ms 1000]\n');
  process.exit(2);
}
const interval = Number(values['interval-ms']);
const results: Record<string, Result> = {};

/** One probe: the kubelet's default timeout is 1 s; success is a status in [200, 400). */
function probe(t: Target): Promise<{ ok: boolean; status?: number; error?: string }> {
  if (t.tcp) {
    return new Promise((resolve) => {
      const s = net.connect({ host: t.ip, port: t.port, timeout: 1_000 }, () => {
        s.destroy();
        resolve({ ok: true });
      });
      s.on('timeout', () => s.destroy(Object.assign(new Error('probe timed out'), { code: 'ETIMEDOUT' })));
      s.on('error', (err: Error & { code?: string }) => resolve({ ok: false, error: err.code ?? err.message }));
    });
  }
  return new Promise((resolve) => {
    const req = http.get({ host: t.ip, port: t.port, path: t.path ?? '/', timeout: 1_000, agent: false, headers: { 'user-agent': 'kube-probe/local' } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ ok: (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400, status: res.statusCode ?? 0 }));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('probe timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (err: Error & { code?: string }) => resolve({ ok: false, error: err.code ?? err.message }));
  });
}

for (;;) {
  let targets: Target[] = [];
  try { targets = JSON.parse(readFileSync(values.targets, 'utf8')) as Target[]; } catch { /* none yet */ }
  await Promise.all(targets.map(async (t) => {
    const r = await probe(t);
    const prev = results[t.pod];
    results[t.pod] = { ...r, at: new Date().toISOString(), okCount: (prev?.okCount ?? 0) + (r.ok ? 1 : 0), failCount: (prev?.failCount ?? 0) + (r.ok ? 0 : 1) };
  }));
  const tmp = `${values.status}.tmp`;
  writeFileSync(tmp, JSON.stringify(results));
  renameSync(tmp, values.status);
  await sleep(interval);
}
