// `weftctl install -f values.yaml` (issue 17): the knobs operators expect, applied to the rendered
// objects, each bad value refused with the file and the field path, flags winning over the file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { Command } from 'commander';
import { Deployment, type IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import { DaemonSet, type IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { installCommand, type CommandIo } from '../../cli/commands/install.ts';
import { renderInstall } from '../../cli/install/render.ts';
import { parseValues } from '../../cli/install/values.ts';
import { InstallOptionError } from '../../cli/install/errors.ts';

const VALUES = `
image: registry.example/weft:0.2.0
namespace: mesh
controller:
  replicas: 2
  resources: {requests: {cpu: 250m, memory: 256Mi}, limits: {cpu: "2", memory: 1Gi}}
  nodeSelector: {node-role.kubernetes.io/control-plane: ""}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
agent:
  resources: {requests: {cpu: 50m, memory: 96Mi}}
  nodeSelector: {kubernetes.io/os: linux}
imagePullSecrets: [regcred]
podLabels: {team: mesh}
podAnnotations: {example.com/owner: platform}
podMonitor: true
`;

test('values set resources, nodeSelector, tolerations, imagePullSecrets, pod labels and annotations, and add a PodMonitor; every object still validates', () => {
  const values = parseValues(VALUES, 'values.yaml');
  const objects = renderInstall({ image: values.image!, trustDomain: 'cluster.local', namespace: values.namespace!, values, warn: () => {} });
  const d = objects.find((o) => o.kind === 'Deployment') as IDeployment;
  const ds = objects.find((o) => o.kind === 'DaemonSet') as IDaemonSet;
  assert.doesNotThrow(() => new Deployment(d).validate());
  assert.doesNotThrow(() => new DaemonSet(ds).validate());
  assert.equal(d.spec?.replicas, 2);
  assert.deepEqual(d.spec?.template.spec?.containers[0]?.resources, { requests: { cpu: '250m', memory: '256Mi' }, limits: { cpu: '2', memory: '1Gi' } });
  assert.deepEqual(d.spec?.template.spec?.nodeSelector, { 'node-role.kubernetes.io/control-plane': '' });
  assert.deepEqual(d.spec?.template.spec?.tolerations, [{ key: 'node-role.kubernetes.io/control-plane', operator: 'Exists', effect: 'NoSchedule' }]);
  assert.deepEqual(ds.spec?.template.spec?.containers[0]?.resources, { requests: { cpu: '50m', memory: '96Mi' } });
  assert.deepEqual(ds.spec?.template.spec?.nodeSelector, { 'kubernetes.io/os': 'linux' });
  assert.deepEqual(ds.spec?.template.spec?.tolerations, [{ operator: 'Exists' }], 'the agent keeps tolerating every taint');
  for (const w of [d, ds] as Array<IDeployment | IDaemonSet>) {
    assert.deepEqual(w.spec?.template.spec?.imagePullSecrets, [{ name: 'regcred' }]);
    assert.equal(w.spec?.template.metadata?.labels?.['team'], 'mesh');
    assert.equal(w.spec?.template.metadata?.annotations?.['example.com/owner'], 'platform');
    assert.equal(w.spec?.template.metadata?.annotations?.['prometheus.io/scrape'], 'true', 'Weft\'s own annotations stay');
  }
  const pm = objects.find((o) => (o as { kind: string }).kind === 'PodMonitor') as unknown as { metadata: { namespace: string }; spec: { podMetricsEndpoints: Array<{ port: string }> } };
  assert.equal(pm.metadata.namespace, 'mesh');
  assert.equal(pm.spec.podMetricsEndpoints[0]!.port, 'http-metrics');
  // The PodMonitor's port name is a container port of both pods.
  for (const w of [d, ds] as Array<IDeployment | IDaemonSet>) assert.ok(w.spec?.template.spec?.containers[0]?.ports?.some((p) => p.name === 'http-metrics'));
});

test('a bad value is refused with the file and the field path', () => {
  const cases: Array<[string, RegExp]> = [
    ['controller: {resources: {requests: {cpu: lots}}}', /v\.yaml: controller\.resources\.requests\.cpu: "lots" is not a Kubernetes quantity/],
    ['agent: {tolerations: [{effect: Sometimes}]}', /v\.yaml: agent\.tolerations\[0\]\.effect: must be NoSchedule, PreferNoSchedule or NoExecute/],
    ['podLabels: {"bad key!": x}', /v\.yaml: podLabels\["bad key!"\]: is not a valid label or annotation key/],
    ['imagePullSecrets: [Reg_Cred]', /v\.yaml: imagePullSecrets\[0\]: "Reg_Cred" is not a Secret name/],
    ['controler: {}', /v\.yaml: controler: unknown field/],
    ['podMonitor: yes please', /v\.yaml: podMonitor: must be true or false/],
    ['trustDomainAliases: old-td', /v\.yaml: trustDomainAliases: must be a list of trust domains/],
  ];
  for (const [text, re] of cases) assert.throws(() => parseValues(text, 'v.yaml'), (e: Error) => e instanceof InstallOptionError && re.test(e.message), text);
});

class Exit extends Error {}
test('weftctl install -f: the file gives the image and namespace; a flag on the command line wins', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-values-'));
  try {
    const file = join(dir, 'values.yaml');
    writeFileSync(file, VALUES);
    const run = async (args: string[]) => {
      const s = { stdout: '', stderr: '', code: undefined as number | undefined };
      const io: CommandIo = { out: (t) => void (s.stdout += t), err: (t) => void (s.stderr += t), exit: (c) => { s.code = c; throw new Exit(); }, setExitCode: (c) => void (s.code = c) };
      try {
        await new Command('weftctl').exitOverride().addCommand(installCommand(io)).parseAsync(args, { from: 'user' });
      } catch (e) {
        if (!(e instanceof Exit)) throw e;
      }
      return s;
    };
    const a = await run(['install', '-f', file]);
    assert.equal(a.code, 0, a.stderr);
    const docs = parseAllDocuments(a.stdout).map((x) => x.toJS() as { kind: string; metadata: { namespace?: string }; spec?: { template?: { spec?: { containers: Array<{ image: string }> } } } });
    assert.equal(docs.find((x) => x.kind === 'Deployment')?.metadata.namespace, 'mesh');
    assert.equal(docs.find((x) => x.kind === 'Deployment')?.spec?.template?.spec?.containers[0]?.image, 'registry.example/weft:0.2.0');
    const b = await run(['install', '-f', file, '--namespace', 'other', '--image', 'weft:flag']);
    const docsB = parseAllDocuments(b.stdout).map((x) => x.toJS() as { kind: string; metadata: { namespace?: string } });
    assert.equal(docsB.find((x) => x.kind === 'Deployment')?.metadata.namespace, 'other');
    assert.match(b.stdout, /image: weft:flag/);
    const bad = await run(['install', '-f', join(dir, 'missing.yaml')]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /-f .*missing\.yaml: ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
