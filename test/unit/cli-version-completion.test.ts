// weftctl version (client, and each component's weft_build_info read through the API server's
// pod proxy on a cluster) and completion scripts generated from the command tree.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { versionCommand, CLIENT_VERSION } from '../../cli/commands/version.ts';
import { bashCompletion, fishCompletion, completionCommand } from '../../cli/commands/completion.ts';
import { program } from '../../cli/weftctl.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-version-'));
after(() => rmSync(dir, { recursive: true, force: true }));

export function kubeconfigFor(server: string, file = join(dir, 'kubeconfig')): string {
  writeFileSync(file, stringify({ apiVersion: 'v1', kind: 'Config', clusters: [{ name: 'lab', cluster: { server, 'insecure-skip-tls-verify': true } }], users: [{ name: 'u', user: {} }], contexts: [{ name: 'lab', context: { cluster: 'lab', user: 'u', namespace: 'default' } }], 'current-context': 'lab' }));
  return file;
}

function metricsServer(text: string): Promise<Server> {
  const s = createServer((req, res) => (req.url === '/metrics' ? res.writeHead(200, { 'content-type': 'text/plain' }).end(text) : res.writeHead(404).end()));
  return new Promise((r) => s.listen(0, '127.0.0.1', () => r(s)));
}

const pod = (namespace: string, name: string, labels: Record<string, string>, node: string) => ({
  apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace, labels }, spec: { nodeName: node }, status: { phase: 'Running', podIP: '10.9.9.9' },
});

test('version --client needs no mesh', async () => {
  const r = await runCommands((io) => [versionCommand(io)], ['version', '--client', '-o', 'json']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), [{ role: 'client', name: 'weftctl', version: CLIENT_VERSION, nodeVersion: process.versions.node }]);
});

test('version on a cluster reads every component\'s weft_build_info through the pod proxy', async () => {
  const build = (component: string, v: string) => `# HELP weft_build_info Build\n# TYPE weft_build_info gauge\nweft_build_info{component="${component}",version="${v}",node_version="24.1.0"} 1\n`;
  const servers = { controller: await metricsServer(build('controller', '0.1.0')), a1: await metricsServer(build('agent', '0.1.0')), a2: await metricsServer('process_cpu_seconds_total 1\n'), wp: await metricsServer(build('waypoint', '0.0.9')) };
  const api = new FakeApiServer();
  await api.start();
  try {
    const sel = (name: string) => ({ 'app.kubernetes.io/name': name, 'app.kubernetes.io/part-of': 'weft' });
    api.apply(pod('weft-system', 'weft-controller-abc', sel('weft-controller'), 'node1'));
    api.apply(pod('weft-system', 'weft-agent-1', sel('weft-agent'), 'node1'));
    api.apply(pod('weft-system', 'weft-agent-2', sel('weft-agent'), 'node2'));
    api.apply(pod('shop', 'waypoint-0', { 'weft.dev/waypoint': 'waypoint' }, 'node2'));
    api.apply(pod('shop', 'app', { app: 'x' }, 'node2'));
    const byPod: Record<string, Server> = { 'weft-controller-abc': servers.controller, 'weft-agent-1': servers.a1, 'weft-agent-2': servers.a2, 'waypoint-0': servers.wp };
    api.podProxyTarget = (_ns, p, port) => (port === 15020 && byPod[p] ? { host: '127.0.0.1', port: (byPod[p].address() as { port: number }).port } : undefined);
    const r = await runCommands((io) => [versionCommand(io)], ['version', '--kubeconfig', kubeconfigFor(api.url)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, [
      'COMPONENT   NAME                             VERSION  NOTE',
      `client      weftctl                          ${CLIENT_VERSION}`,
      'controller  weft-system/weft-controller-abc  0.1.0',
      'agent       node1                            0.1.0',
      'agent       node2                            unknown  no weft_build_info metric (a build older than the metric)',
      'waypoint    shop/waypoint-0                  0.0.9',
      ''].join('\n'));
    assert.ok(api.requests.some((q) => q.path === '/api/v1/namespaces/weft-system/pods/weft-agent-1:15020/proxy/metrics'));
  } finally {
    await api.stop();
    for (const s of Object.values(servers)) s.close();
  }
});

/** Runs the bash completion for a command line whose last word is being completed. */
function complete(words: string[]): string[] {
  const out = execFileSync('bash', ['-c', `source "$1"; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _weftctl; printf '%s\\n' "\${COMPREPLY[@]}"`, 'x', join(dir, 'c.bash')], { input: '', encoding: 'utf8' });
  return out.split('\n').filter(Boolean);
}

test('bash completion completes commands, subcommands, options and option values from the command tree', () => {
  const script = bashCompletion(program());
  writeFileSync(join(dir, 'c.bash'), script);
  assert.deepEqual(complete(['weftctl', 'w']).sort(), ['waypoint', 'waypoints', 'workloads']);
  assert.ok(complete(['weftctl', '']).includes('analyze'));
  assert.deepEqual(complete(['weftctl', 'waypoint', '']), ['apply', 'list', 'status', 'delete']);
  assert.deepEqual(complete(['weftctl', 'services', '-o', '']), ['table', 'wide', 'json', 'yaml']);
  assert.deepEqual(complete(['weftctl', 'completion', '']), []);
  assert.ok(complete(['weftctl', 'waypoint', 'list', '--']).includes('--all-namespaces'));
  assert.ok(complete(['weftctl', 'analyze', '--']).includes('--kubeconfig'));
  assert.ok(!complete(['weftctl', 'workloads', '--']).includes('--prefix'), 'the hidden lab flags are not offered');
});

test('fish completion names each subcommand under its parent; unknown shells are exit 2', async () => {
  const fish = fishCompletion(program());
  assert.match(fish, /^complete -c weftctl -n '__fish_use_subcommand' -a 'analyze' -d /m);
  assert.match(fish, /^complete -c weftctl -n '__fish_seen_subcommand_from waypoint; and not __fish_seen_subcommand_from apply list status delete' -a 'list' /m);
  assert.match(fish, /^complete -c weftctl -n '__fish_seen_subcommand_from services' -s o -l output -xa 'table wide json yaml' /m);
  const r = await runCommands((io) => [completionCommand(program, io)], ['completion', 'tcsh']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown shell "tcsh"; give one of bash, zsh, fish/);
  const z = await runCommands((io) => [completionCommand(program, io)], ['completion', 'zsh']);
  assert.match(z.stdout, /^#compdef weftctl\n/);
  assert.match(z.stdout, /bashcompinit/);
});
