// What one agent is sent, and holds, of a mesh whose pods carry many labels: PODS pods over NODES
// nodes, each pod with LABELS labels of about 30 bytes each, compiled and published by a
// ConfigServer; one agent (node-0) subscribes over gRPC on loopback from a child process and
// reports its V8 heap growth once it holds the first snapshot (after a GC, against the heap
// before it connected). The controller's side reports the Workload bytes it sent that agent.
//
//   node bench/agent-config-labels.ts [--pods 2000] [--nodes 40] [--labels 20]
//
// Prints one summary line and a JSON line.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { compile, emptyInputs } from '../controller/src/compile.ts';
import { ConfigServer, addConfigStreamService } from '../controller/src/xds/server.ts';
import type { ConfigClient } from '../lib/xds/client.ts';

const { values } = parseArgs({
  options: {
    pods: { type: 'string', default: '2000' },
    nodes: { type: 'string', default: '40' },
    labels: { type: 'string', default: '20' },
    'client-of': { type: 'string' },
  },
});
const PODS = Number(values.pods);
const NODES = Number(values.nodes);
const LABELS = Number(values.labels);

if (values['client-of']) {
  // Child: one agent of node-0; the heap it grew by to hold the config.
  const { ConfigClient } = await import('../lib/xds/client.ts');
  const gc = (globalThis as { gc?: () => void }).gc!;
  gc();
  const before = process.memoryUsage().heapUsed;
  const client: ConfigClient<'agent'> = new ConfigClient({ target: values['client-of'], credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-0' });
  client.start();
  const cfg = await client.ready();
  gc();
  const grown = process.memoryUsage().heapUsed - before;
  const labelBytes = cfg.workloads.reduce((n, w) => n + JSON.stringify(w.labels).length, 0);
  process.stdout.write(`${JSON.stringify({ workloads: cfg.workloads.length, heapGrownMb: +(grown / 1048576).toFixed(1), labelBytes })}\n`);
  client.close();
  process.exit(0);
}

const inputs = emptyInputs();
const namespaces = 10;
for (let n = 0; n < namespaces; n++) inputs.namespaces.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns-${n}`, labels: { 'weft.dev/dataplane-mode': 'ambient' } } });
for (let p = 0; p < PODS; p++) {
  const labels: Record<string, string> = { app: `app-${p % 100}`, version: 'v1' };
  for (let l = 0; l < LABELS; l++) labels[`example.com/team-label-${l}`] = `value-${p}-${l}`;
  const node = p % NODES;
  inputs.pods.push({
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: `pod-${p}`, namespace: `ns-${p % namespaces}`, uid: `uid-${p}`, labels },
    spec: { nodeName: `node-${node}`, serviceAccountName: `app-${p % 100}`, containers: [{ name: 'app' }] },
    status: { phase: 'Running', podIP: `10.${64 + (p >> 16)}.${(p >> 8) & 255}.${p & 255}`, hostIP: `192.168.0.${node + 1}` },
  });
}
const labelBytesInMesh = inputs.pods.reduce((n, p) => n + JSON.stringify(p.metadata.labels).length, 0);
const configServer = new ConfigServer();
configServer.publish(compile(inputs).model);
const server = new grpc.Server({ 'grpc.max_send_message_length': 256 * 1024 * 1024 });
addConfigStreamService(server, { configServer });
const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
const child = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--client-of', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'inherit'] });
let out = '';
child.stdout.on('data', (d: Buffer) => (out += d.toString()));
await new Promise((r) => child.on('exit', r));
server.forceShutdown();
const agent = JSON.parse(out) as { workloads: number; heapGrownMb: number; labelBytes: number };
const sentKb = +(configServer.pushedBytes.agent / 1024).toFixed(0);
const result = { pods: PODS, nodes: NODES, labelsPerPod: LABELS + 2, labelKbInMesh: +(labelBytesInMesh / 1024).toFixed(0), agentSentKb: sentKb, agentLabelKb: +(agent.labelBytes / 1024).toFixed(1), agentHeapGrownMb: agent.heapGrownMb, agentWorkloads: agent.workloads };
console.log(`agent-config-labels: ${PODS} pods on ${NODES} nodes, ${result.labelKbInMesh} KB of labels in the mesh: node-0's agent was sent ${sentKb} KB (${result.agentLabelKb} KB of labels), its heap grew ${agent.heapGrownMb} MB`);
console.log(JSON.stringify(result));
