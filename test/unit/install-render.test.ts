import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import type { IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IContainer } from 'kubernetes-models/v1/Container';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import type { IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import type { IRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import type { IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { CustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition';
import type { ICustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition';
import { renderInstall, toJson, toYaml, type KubeObject } from '../../cli/install/render.ts';
import { builtinCrd, WEFT_KINDS } from '../../cli/install/crds.ts';
import { CrdLoadError } from '../../cli/install/errors.ts';
import { AGENT_CAPABILITIES } from '../../cli/install/agent.ts';
import { readMounts } from '../../lib/sys/mounts.ts';

type ModelClass = new (data: object) => { validate(): void };
const MODELS: Record<string, ModelClass> = {
  'v1/Namespace': Namespace as unknown as ModelClass,
  'v1/ServiceAccount': ServiceAccount as unknown as ModelClass,
  'v1/Service': Service as unknown as ModelClass,
  'apps/v1/Deployment': Deployment as unknown as ModelClass,
  'apps/v1/DaemonSet': DaemonSet as unknown as ModelClass,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget as unknown as ModelClass,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole as unknown as ModelClass,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding as unknown as ModelClass,
  'rbac.authorization.k8s.io/v1/Role': Role as unknown as ModelClass,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding as unknown as ModelClass,
  'apiextensions.k8s.io/v1/CustomResourceDefinition': CustomResourceDefinition as unknown as ModelClass,
};

const OPTS = { image: 'ghcr.io/acme/weft:0.1.0', trustDomain: 'cluster.local', warn: () => {} };

function find<T extends KubeObject>(objects: KubeObject[], kind: string, name?: string): T {
  const o = objects.find((x) => x.kind === kind && (name === undefined || x.metadata?.name === name));
  assert.ok(o, `no ${kind} ${name ?? ''} rendered`);
  return o as T;
}

function flagOf(c: IContainer, flag: string): string | undefined {
  const args = c.args ?? [];
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
}

function agentDaemonSet(objects = renderInstall(OPTS)): { ds: IDaemonSet; agent: IContainer } {
  const ds = find<IDaemonSet>(objects, 'DaemonSet', 'weft-agent');
  const agent = ds.spec?.template.spec?.containers.find((c) => c.name === 'agent');
  assert.ok(agent);
  return { ds, agent };
}

test('every rendered object passes the Kubernetes schema of its kind', () => {
  const objects = renderInstall({ ...OPTS, controllerReplicas: 3, logLevel: 'debug', caSecret: 'weft-ca' });
  for (const o of objects) {
    const Model = MODELS[`${o.apiVersion}/${o.kind}`];
    assert.ok(Model, `no schema model for ${o.apiVersion} ${o.kind}`);
    assert.doesNotThrow(() => new Model(o).validate(), `${o.kind} ${o.metadata?.name}`);
  }
});

test('renders the namespace first, then the CRDs of all four Weft kinds, then RBAC, controller and agent', () => {
  const objects = renderInstall(OPTS);
  assert.equal(objects[0]?.kind, 'Namespace');
  const crdNames = objects.filter((o) => o.kind === 'CustomResourceDefinition').map((o) => o.metadata?.name);
  for (const k of WEFT_KINDS) assert.ok(crdNames.includes(`${k.plural}.weft.dev`), `CRD for ${k.kind}`);
  const kinds = objects.map((o) => o.kind);
  assert.ok(kinds.lastIndexOf('CustomResourceDefinition') < kinds.indexOf('ServiceAccount'));
  assert.ok(kinds.indexOf('ClusterRoleBinding') < kinds.indexOf('Deployment'));
  assert.equal(kinds.at(-1), 'DaemonSet');
});

test('every CRD validates as an apiextensions.k8s.io/v1 CustomResourceDefinition with a status subresource', () => {
  for (const k of WEFT_KINDS) {
    const crd = builtinCrd(k);
    new CustomResourceDefinition(crd).validate();
    const version = crd.spec.versions[0];
    assert.equal(version?.storage, true);
    assert.deepEqual(version?.subresources?.status, {});
    assert.equal(crd.spec.names.kind, k.kind);
  }
});

test('puts every namespaced object in the namespace option', () => {
  const objects = renderInstall({ ...OPTS, namespace: 'mesh-infra' });
  assert.equal(objects[0]?.metadata?.name, 'mesh-infra');
  const clusterScoped = new Set(['Namespace', 'CustomResourceDefinition', 'ClusterRole', 'ClusterRoleBinding']);
  for (const o of objects) {
    if (!clusterScoped.has(o.kind)) assert.equal(o.metadata?.namespace, 'mesh-infra', `${o.kind} ${o.metadata?.name}`);
  }
  const binding = find<IClusterRoleBinding>(objects, 'ClusterRoleBinding');
  assert.equal(binding.subjects?.[0]?.namespace, 'mesh-infra');
  const { agent } = agentDaemonSet(objects);
  assert.equal(flagOf(agent, '--controller'), 'weft-controller.mesh-infra.svc:15012');
});

test('the agent adds exactly BPF, NET_ADMIN, SYS_ADMIN and SYS_PTRACE, drops the rest, and is not privileged', () => {
  const { agent } = agentDaemonSet();
  const sc = agent.securityContext;
  assert.equal(sc?.privileged, false);
  assert.deepEqual(sc?.capabilities?.drop, ['ALL']);
  assert.deepEqual([...(sc?.capabilities?.add ?? [])].sort(), ['BPF', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE']);
  // The API server rejects allowPrivilegeEscalation=false together with SYS_ADMIN.
  assert.notEqual(sc?.allowPrivilegeEscalation, false);
});

test('the agent pod says why it holds each capability and each volume', () => {
  const { ds, agent } = agentDaemonSet();
  const annotations = ds.spec?.template.metadata?.annotations ?? {};
  for (const cap of agent.securityContext?.capabilities?.add ?? []) {
    assert.ok((annotations[`capabilities.weft.dev/${cap}`] ?? '').length > 20, `no reason for CAP_${cap}`);
  }
  for (const v of ds.spec?.template.spec?.volumes ?? []) {
    assert.ok((annotations[`volumes.weft.dev/${v.name}`] ?? '').length > 20, `no reason for volume ${v.name}`);
  }
  for (const field of ['hostNetwork', 'hostPID', 'dnsPolicy']) {
    assert.ok(annotations[`host.weft.dev/${field}`], `no reason for ${field}`);
  }
  assert.equal(AGENT_CAPABILITIES.length, agent.securityContext?.capabilities?.add?.length);
});

test('the agent mounts bpffs, the cgroup v2 root, host /proc read-only and /var/run/netns from the host', () => {
  const { ds, agent } = agentDaemonSet();
  const volumes = new Map((ds.spec?.template.spec?.volumes ?? []).map((v) => [v.name, v]));
  const mounts = new Map((agent.volumeMounts ?? []).map((m) => [m.mountPath, m]));
  const hostPathAt = (mountPath: string) => volumes.get(mounts.get(mountPath)?.name ?? '')?.hostPath?.path;

  assert.equal(hostPathAt('/sys/fs/bpf'), '/sys/fs/bpf');
  assert.equal(mounts.get('/sys/fs/bpf')?.mountPropagation, 'HostToContainer');
  assert.equal(hostPathAt('/sys/fs/cgroup'), '/sys/fs/cgroup');
  assert.equal(hostPathAt('/host/proc'), '/proc');
  assert.equal(mounts.get('/host/proc')?.readOnly, true);
  assert.equal(hostPathAt('/var/run/netns'), '/var/run/netns');
  assert.equal(mounts.get('/var/run/netns')?.mountPropagation, 'HostToContainer');
});

test('bpffs reaches the host through a privileged init container, the only privileged container', () => {
  const { ds } = agentDaemonSet();
  const spec = ds.spec?.template.spec;
  const init = spec?.initContainers?.find((c) => c.name === 'mount-bpffs');
  assert.ok(init);
  // Kubernetes allows Bidirectional propagation only in privileged containers.
  assert.equal(init.securityContext?.privileged, true);
  assert.equal(init.volumeMounts?.find((m) => m.mountPath === '/sys/fs/bpf')?.mountPropagation, 'Bidirectional');
  const privileged = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])].filter((c) => c.securityContext?.privileged);
  assert.deepEqual(privileged.map((c) => c.name), ['mount-bpffs']);
});

test('the agent runs on every node in the host network and PID namespace with its node and pod name', () => {
  const { ds, agent } = agentDaemonSet();
  const spec = ds.spec?.template.spec;
  assert.equal(spec?.hostNetwork, true);
  assert.equal(spec?.hostPID, true);
  assert.equal(spec?.dnsPolicy, 'ClusterFirstWithHostNet');
  assert.deepEqual(spec?.tolerations, [{ operator: 'Exists' }]);
  const env = new Map((agent.env ?? []).map((e) => [e.name, e]));
  assert.equal(env.get('NODE_NAME')?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
  assert.equal(env.get('POD_NAME')?.valueFrom?.fieldRef?.fieldPath, 'metadata.name');
  assert.equal(env.get('NODE_IP')?.valueFrom?.fieldRef?.fieldPath, 'status.hostIP');
  // $(NAME) in args is expanded by the kubelet from the container's env.
  assert.equal(flagOf(agent, '--node'), '$(NODE_NAME)');
  assert.equal(flagOf(agent, '--node-ip'), '$(NODE_IP)');
  assert.equal(flagOf(agent, '--trust-domain'), 'cluster.local');
  assert.equal(flagOf(agent, '--cgroup'), '/sys/fs/cgroup');
  assert.ok(agent.resources?.requests && agent.resources.limits);
});

test('the agent serves 15001, 15008, 15009, 15020, 15021 and keeps admin 15000 off the pod ports', () => {
  const { agent } = agentDaemonSet();
  assert.deepEqual(agent.ports?.map((p) => p.containerPort), [15001, 15008, 15009, 15020, 15021]);
  assert.ok(!agent.ports?.some((p) => p.containerPort === 15000));
});

test('agent upgrades surge: the new agent shares the ports, is ready by its own file, and the old one drains within the grace period', () => {
  const { ds, agent } = agentDaemonSet();
  assert.deepEqual(ds.spec?.updateStrategy?.rollingUpdate, { maxSurge: 1, maxUnavailable: 0 });
  // An HTTP probe on the shared host port could be answered by the other agent process.
  assert.equal(agent.readinessProbe?.httpGet, undefined);
  const readyFile = flagOf(agent, '--ready-file');
  assert.deepEqual(agent.readinessProbe?.exec?.command, ['test', '-f', readyFile]);
  assert.ok(agent.volumeMounts?.some((m) => m.name === 'tmp' && readyFile?.startsWith(`${m.mountPath}/`)), 'the ready file is in the pod\'s own writable /tmp');
  const drain = Number(flagOf(agent, '--drain-timeout'));
  assert.ok(drain > 0 && drain < (ds.spec?.template.spec?.terminationGracePeriodSeconds ?? 30), 'the drain ends before the kubelet kills the container');
});

test('the agent has no Kubernetes API token, only a projected token for the weft-controller audience', () => {
  const objects = renderInstall(OPTS);
  const { ds, agent } = agentDaemonSet(objects);
  const spec = ds.spec?.template.spec;
  assert.equal(spec?.automountServiceAccountToken, false);
  const token = spec?.volumes?.find((v) => v.projected)?.projected?.sources?.[0]?.serviceAccountToken;
  assert.equal(token?.audience, 'weft-controller');
  const tokenMount = agent.volumeMounts?.find((m) => m.name === 'weft-token');
  assert.ok(tokenMount);
  assert.equal(flagOf(agent, '--token-file'), `${tokenMount.mountPath}/${token?.path}`);
  const bundleMount = agent.volumeMounts?.find((m) => m.name === 'trust-bundle');
  assert.equal(flagOf(agent, '--trust-bundle'), `${bundleMount?.mountPath}/root-cert.pem`);
  // No role or binding names the agent's ServiceAccount.
  const bindings = objects.filter((o): o is IRoleBinding | IClusterRoleBinding => o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding');
  for (const b of bindings) assert.ok(!b.subjects?.some((s) => s.name === 'weft-agent'), `${b.kind} ${b.metadata?.name} binds the agent`);
});

test('the controller serves 15012, 15020 and 15021 with a readiness probe and runs unprivileged', () => {
  const objects = renderInstall({ ...OPTS, controllerReplicas: 2, caSecret: 'weft-ca' });
  const dep = find<IDeployment>(objects, 'Deployment', 'weft-controller');
  assert.equal(dep.spec?.replicas, 2);
  const c = dep.spec?.template.spec?.containers[0];
  assert.deepEqual(c?.ports?.map((p) => [p.name, p.containerPort]), [['grpc-tls', 15012], ['http-metrics', 15020], ['http-ready', 15021]]);
  assert.equal(c?.readinessProbe?.httpGet?.path, '/healthz/ready');
  assert.equal(c?.readinessProbe?.httpGet?.port, 15021);
  assert.equal(c?.securityContext?.allowPrivilegeEscalation, false);
  assert.deepEqual(c?.securityContext?.capabilities?.drop, ['ALL']);
  assert.equal(dep.spec?.template.spec?.securityContext?.runAsNonRoot, true);
  const svc = objects.find((o) => o.kind === 'Service');
  assert.ok(svc && 'spec' in svc);
});

test('the controller runs in Kubernetes mode with the install\'s trust domain, namespace, image and log level', () => {
  const dep = find<IDeployment>(renderInstall({ ...OPTS, namespace: 'mesh', logLevel: 'warn' }), 'Deployment');
  const args = dep.spec?.template.spec?.containers[0]?.args ?? [];
  const flag = (name: string) => args[args.indexOf(name) + 1];
  assert.equal(args[0], 'controller');
  assert.ok(args.includes('--kube'));
  assert.equal(flag('--trust-domain'), 'cluster.local');
  assert.equal(flag('--root-namespace'), 'mesh');
  assert.equal(flag('--waypoint-image'), OPTS.image);
  assert.equal(flag('--controller-address'), 'weft-controller.mesh.svc:15012');
  assert.equal(flag('--log-level'), 'warn');
  assert.ok(!args.includes('--ca-cert'), 'no CA files without --ca-secret');
});

test('the controller reads the CA from the --ca-secret Secret mounted read-only, not through the API', () => {
  const warnings: string[] = [];
  const objects = renderInstall({ ...OPTS, caSecret: 'my-ca', warn: (m) => warnings.push(m) });
  const spec = find<IDeployment>(objects, 'Deployment').spec?.template.spec;
  const c = spec?.containers[0];
  const args = c?.args ?? [];
  const mount = c?.volumeMounts?.find((m) => m.name === 'ca');
  assert.equal(mount?.readOnly, true);
  // The whole Secret, so Istio's cacerts layout (ca-cert.pem, ca-key.pem, root-cert.pem,
  // cert-chain.pem) works as well as tls.crt/tls.key/ca.crt (issue 17, defect 5).
  assert.equal(args[args.indexOf('--ca-dir') + 1], mount?.mountPath);
  const vol = spec?.volumes?.find((v) => v.name === 'ca')?.secret;
  assert.equal(vol?.secretName, 'my-ca');
  assert.equal(vol?.items, undefined, 'every key of the Secret is mounted, not only tls.crt/tls.key');
  assert.ok(!warnings.some((w) => /--ca-secret/.test(w)));

  const without: string[] = [];
  renderInstall({ ...OPTS, warn: (m) => without.push(m) });
  assert.ok(without.some((w) => /no --ca-secret: the controller generates the cluster's CA root once and keeps it in the Secret weft-system\/weft-ca/.test(w)));
});

test('the controller may list and watch the mesh inputs, write their status, review tokens and manage waypoints, and nothing with wildcards', () => {
  const objects = renderInstall(OPTS);
  const cr = find<IClusterRole>(objects, 'ClusterRole', 'weft-controller');
  const allows = (group: string, resource: string, verb: string) =>
    (cr.rules ?? []).some((r) => r.apiGroups?.includes(group) && r.resources?.includes(resource) && r.verbs.includes(verb));
  for (const [g, r] of [['', 'namespaces'], ['', 'pods'], ['', 'services'], ['discovery.k8s.io', 'endpointslices'],
    ['weft.dev', 'waypoints'], ['weft.dev', 'authorizationpolicies'], ['weft.dev', 'peerauthentications'], ['weft.dev', 'trafficpolicies'],
    ['gateway.networking.k8s.io', 'httproutes'], ['gateway.networking.k8s.io', 'grpcroutes']] as const) {
    assert.ok(allows(g, r, 'list') && allows(g, r, 'watch'), `list/watch ${g}/${r}`);
  }
  for (const r of ['waypoints/status', 'authorizationpolicies/status', 'peerauthentications/status', 'trafficpolicies/status']) {
    assert.ok(allows('weft.dev', r, 'update'), r);
  }
  assert.ok(allows('gateway.networking.k8s.io', 'httproutes/status', 'update'));
  // Istio's security CRDs, when installed, are read (docs/ARCHITECTURE.md), never written: istiod
  // may own their status; Weft's findings on them are Events.
  for (const r of ['authorizationpolicies', 'peerauthentications', 'requestauthentications']) {
    assert.ok(['get', 'list', 'watch'].every((v) => allows('security.istio.io', r, v)), `read security.istio.io/${r}`);
    assert.ok(!['update', 'patch'].some((v) => allows('security.istio.io', `${r}/status`, v) || allows('security.istio.io', r, v)), `no writes to security.istio.io/${r}`);
  }
  assert.ok(allows('authentication.k8s.io', 'tokenreviews', 'create'));
  assert.ok(allows('apps', 'deployments', 'create') && allows('', 'services', 'create'));
  assert.ok(!allows('weft.dev', 'waypoints', 'delete'), 'the controller never deletes user objects');
  assert.ok(!allows('', 'secrets', 'get'), 'no cluster-wide secret access');
  assert.ok(allows('', 'events', 'create'), 'Events for findings');
  const cmUpdate = cr.rules?.find((r) => r.resources?.includes('configmaps') && r.verbs.includes('update'));
  assert.deepEqual(cmUpdate?.resourceNames, ['weft-trust-bundle'], 'the trust bundle in waypoint namespaces, nothing else');
  for (const r of cr.rules ?? []) {
    assert.ok(![...(r.verbs ?? []), ...(r.resources ?? []), ...(r.apiGroups ?? [])].includes('*'), JSON.stringify(r));
  }
  const role = find<IRole>(objects, 'Role', 'weft-controller');
  // In its own namespace: read only the cluster CA Secret by name (create cannot be limited by name).
  const secretRead = (role.rules ?? []).filter((r) => r.resources?.includes('secrets') && r.verbs.some((v) => ['get', 'list', 'watch', 'update'].includes(v)));
  assert.deepEqual(secretRead.map((r) => [r.resourceNames, r.verbs]), [[['weft-ca'], ['get']]]);
  const lease = role.rules?.find((r) => r.resources?.includes('leases') && r.verbs.includes('update'));
  assert.deepEqual(lease?.resourceNames, ['weft-controller-leader']);
});

test('YAML output is one document per object and parses back to the same objects', () => {
  const objects = renderInstall(OPTS);
  const yaml = toYaml(objects);
  const docs = parseAllDocuments(yaml).map((d) => d.toJS() as unknown);
  assert.deepEqual(docs, JSON.parse(JSON.stringify(objects)));
  const list = JSON.parse(toJson(objects)) as { kind: string; items: unknown[] };
  assert.equal(list.kind, 'List');
  assert.equal(list.items.length, objects.length);
});

function crdDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'weft-crds-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

test('takes CRDs from the CRD folder and fills only the missing kinds from built-in definitions', () => {
  const own: ICustomResourceDefinition = builtinCrd({ kind: 'Waypoint', plural: 'waypoints' });
  own.metadata = { name: 'waypoints.weft.dev', annotations: { origin: 'folder' } };
  const dir = crdDir({ 'waypoint.yaml': toYaml([own]), 'README.md': 'not yaml' });
  const warnings: string[] = [];
  const objects = renderInstall({ ...OPTS, caSecret: 'weft-ca', crdDir: dir, warn: (m) => warnings.push(m) });
  const crds = objects.filter((o) => o.kind === 'CustomResourceDefinition');
  assert.equal(crds.length, 6);
  assert.equal(crds.find((c) => c.metadata?.name === 'waypoints.weft.dev')?.metadata?.annotations?.origin, 'folder');
  assert.equal(warnings.length, 1);
  assert.match(warnings[0] ?? '', /AuthorizationPolicy, RequestAuthentication, PeerAuthentication, TrafficPolicy, Telemetry/);
  assert.doesNotMatch(warnings[0] ?? '', /Waypoint,/);
});

test('names the file when the CRD folder holds something that is not a CRD', () => {
  const dir = crdDir({ 'bad.yaml': 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n' });
  assert.throws(() => renderInstall({ ...OPTS, crdDir: dir }), (err: unknown) =>
    err instanceof CrdLoadError && err.code === 'WEFT_INSTALL_BAD_CRD' && err.message.includes('bad.yaml') && /ConfigMap/.test(err.message));
  const broken = crdDir({ 'broken.yaml': 'kind: [unclosed\n' });
  assert.throws(() => renderInstall({ ...OPTS, crdDir: broken }), (err: unknown) =>
    err instanceof CrdLoadError && err.message.includes('broken.yaml') && /not valid YAML/.test(err.message));
});

test('the YAML says beside each capability and volume of the agent why it is there', () => {
  const yaml = toYaml(renderInstall(OPTS));
  for (const cap of ['BPF', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE']) {
    assert.match(yaml, new RegExp(`^ +- ${cap} # \\S.{20,}$`, 'm'), cap);
  }
  for (const volume of ['bpffs', 'cgroup', 'host-proc', 'netns', 'weft-token', 'trust-bundle']) {
    assert.match(yaml, new RegExp(`^ +# \\S.{20,}\\n +- name: ${volume}$`, 'm'), volume);
  }
});

// What the API server checks beyond the OpenAPI schema (apimachinery validation).
const QUALIFIED_NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

function metadataOf(o: unknown): { labels?: Record<string, string>; annotations?: Record<string, string> }[] {
  const out: { labels?: Record<string, string>; annotations?: Record<string, string> }[] = [];
  const walk = (x: unknown): void => {
    if (!x || typeof x !== 'object') return;
    if (Array.isArray(x)) return x.forEach(walk);
    for (const [k, v] of Object.entries(x)) {
      if (k === 'metadata' && v && typeof v === 'object') out.push(v);
      else if (k !== 'openAPIV3Schema') walk(v);
    }
  };
  walk(o);
  return out;
}

test('label and annotation keys and label values are what the API server accepts', () => {
  for (const o of renderInstall({ ...OPTS, controllerReplicas: 2, caSecret: 'weft-ca' })) {
    for (const m of metadataOf(o)) {
      for (const [k, v] of Object.entries(m.labels ?? {})) {
        assert.match(k, QUALIFIED_NAME, `${o.kind} label key ${k}`);
        assert.ok(v.length <= 63 && LABEL_VALUE.test(v), `${o.kind} label ${k}=${v}`);
      }
      for (const k of Object.keys(m.annotations ?? {})) assert.match(k, QUALIFIED_NAME, `${o.kind} annotation key ${k}`);
    }
  }
});

test('selectors match their pod templates and container ports are unique', () => {
  for (const o of renderInstall(OPTS)) {
    if (o.kind !== 'Deployment' && o.kind !== 'DaemonSet') continue;
    const spec = (o as IDeployment | IDaemonSet).spec;
    for (const [k, v] of Object.entries(spec?.selector.matchLabels ?? {})) {
      assert.equal(spec?.template.metadata?.labels?.[k], v, `${o.kind} selector ${k}`);
    }
    const ports = (spec?.template.spec?.containers ?? []).flatMap((c) => c.ports ?? []);
    assert.equal(new Set(ports.map((p) => p.containerPort)).size, ports.length);
    assert.equal(new Set(ports.map((p) => p.name)).size, ports.length);
    for (const p of ports) assert.ok((p.name ?? '').length <= 15, `port name ${p.name} is longer than 15`);
  }
});

test('the bpffs init container mounts bpffs only where none is mounted', () => {
  const { ds } = agentDaemonSet();
  const command = ds.spec?.template.spec?.initContainers?.[0]?.command ?? [];
  assert.deepEqual(command.slice(0, 2), ['/bin/sh', '-c']);
  const script = command[2] ?? '';
  const dry = (dir: string) => execFileSync('/bin/sh', ['-c', script.replaceAll('/sys/fs/bpf', dir).replace('mount -t bpf bpf', 'echo mount')], { encoding: 'utf8' });
  const plain = mkdtempSync(join(tmpdir(), 'weft-nobpffs-'));
  assert.equal(dry(plain).trim(), `mount ${plain}`);
  const bpffs = readMounts().find((m) => m.fsType === 'bpf')?.mountPoint;
  if (bpffs) assert.equal(dry(bpffs), '', `${bpffs} is bpffs already`);
});

test('the YAML has no anchors or aliases', () => {
  const yaml = toYaml(renderInstall(OPTS));
  assert.doesNotMatch(yaml, /: [&*]a\d+$|^\s*- [&*]a\d+$/m);
});

test('renders the repository\'s CRDs from deploy/crds, each with a status subresource for the controller\'s status patches', () => {
  const warnings: string[] = [];
  const crds = renderInstall({ ...OPTS, caSecret: 'weft-ca', warn: (m) => warnings.push(m) })
    .filter((o): o is ICustomResourceDefinition => o.kind === 'CustomResourceDefinition');
  assert.deepEqual(warnings, [], 'deploy/crds has every Weft kind');
  assert.deepEqual(crds.map((c) => c.spec.names.kind).sort(), WEFT_KINDS.map((k) => k.kind).sort());
  for (const crd of crds) {
    new CustomResourceDefinition(crd).validate();
    assert.equal(crd.metadata?.annotations?.['weft.dev/crd-source'], undefined, `${crd.metadata?.name} is the built-in fallback`);
    const stored = crd.spec.versions.find((v) => v.storage);
    assert.equal(`${crd.spec.group}/${stored?.name}`, 'weft.dev/v1alpha1');
    assert.deepEqual(stored?.subresources?.status, {}, `${crd.metadata?.name} status subresource`);
    assert.ok(stored?.schema?.openAPIV3Schema?.properties?.spec, `${crd.metadata?.name} has a spec schema`);
  }
});

test('the renderer imports kubernetes-models for types only (it is a devDependency, pruned from the image)', () => {
  const dir = new URL('../../cli/install/', import.meta.url);
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.ts'))) {
    const text = readFileSync(new URL(f, dir), 'utf8');
    assert.doesNotMatch(text, /^import (?!type )[^;]*from 'kubernetes-models/m, f);
  }
});

test('the agent caps its V8 heap well below its memory limit, so garbage is collected before the kernel OOM-kills it', () => {
  const { agent } = agentDaemonSet();
  const opts = agent.env?.find((e) => e.name === 'NODE_OPTIONS')?.value ?? '';
  const heapMb = Number(/--max-old-space-size=(\d+)/.exec(opts)?.[1]);
  const limit = String(agent.resources?.limits?.memory ?? '');
  const limitMb = limit.endsWith('Gi') ? Number(limit.slice(0, -2)) * 1024 : Number(limit.replace(/Mi$/, ''));
  assert.ok(heapMb > 0 && heapMb <= limitMb * 0.75, `heap cap ${heapMb} MB vs limit ${limit}`);
});

test('the agent runs with a capped V8 old space, V8\'s own young generation and two malloc arenas, as the local mesh runs it (issue 20: memory returns after a bulk stream; the 1 MB young generation cost 35 % more CPU per GB)', async () => {
  const { AGENT_ENV, AGENT_NODE_OPTIONS } = await import('../../cli/install/names.ts');
  const { agent } = agentDaemonSet();
  const env = new Map((agent.env ?? []).map((e) => [e.name, e.value]));
  assert.match(env.get('NODE_OPTIONS') ?? '', /--max-old-space-size=\d+\b/);
  assert.doesNotMatch(env.get('NODE_OPTIONS') ?? '', /--max-semi-space-size/);
  assert.equal(env.get('MALLOC_ARENA_MAX'), '2');
  assert.equal(env.get('NODE_OPTIONS'), AGENT_NODE_OPTIONS);
  for (const [k, v] of Object.entries(AGENT_ENV)) assert.equal(env.get(k), v, k);
  // The local mesh starts its agents from the same constants.
  const mesh = readFileSync(new URL('../../cli/local/mesh.ts', import.meta.url), 'utf8');
  assert.match(mesh, /\.\.\.AGENT_ENV,/);
  assert.match(mesh, /AGENT_NODE_OPTIONS\]/);
});

test('the controller runs with a small V8 young generation and a small old-generation growth step, as the local mesh and bench/controller-push.ts run it (issue 20: peak RSS)', async () => {
  const { CONTROLLER_NODE_OPTIONS, CONTROLLER_V8_FLAGS } = await import('../../cli/install/names.ts');
  const container = find<IDeployment>(renderInstall(OPTS), 'Deployment').spec?.template.spec?.containers[0];
  const env = new Map((container?.env ?? []).map((e) => [e.name, e.value]));
  assert.match(CONTROLLER_NODE_OPTIONS, /--max-semi-space-size=\d+\b/);
  assert.equal(env.get('NODE_OPTIONS'), CONTROLLER_NODE_OPTIONS);
  const mesh = readFileSync(new URL('../../cli/local/mesh.ts', import.meta.url), 'utf8');
  assert.match(mesh, /'controller\.log', \{ NODE_OPTIONS: \[process\.env\.NODE_OPTIONS, CONTROLLER_NODE_OPTIONS\]/);
  const bench = readFileSync(new URL('../../bench/controller-push.ts', import.meta.url), 'utf8');
  assert.match(bench, /CONTROLLER_NODE_OPTIONS\.split/);
  // Flags Node refuses in NODE_OPTIONS go on the command line: the image's entrypoint, the mesh, the bench.
  assert.match(CONTROLLER_V8_FLAGS, /--heap-growing-percent=\d+\b/);
  const dockerfile = readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8');
  assert.ok(dockerfile.includes(`controller) exec node ${CONTROLLER_V8_FLAGS} controller/src/main.ts`), 'the image starts the controller with CONTROLLER_V8_FLAGS');
  assert.match(mesh, /'controller\.log', \{[^}]*\}, CONTROLLER_V8_FLAGS\.split\(' '\)\)/);
  assert.match(bench, /CONTROLLER_V8_FLAGS\.split\(' '\), \.\.\.process\.execArgv/);
  // Node accepts it on the command line (it would refuse to start on an unknown flag).
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, [...CONTROLLER_V8_FLAGS.split(' '), '-e', '0'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

test('the controller requires client identities on the config stream (issue 17, defect 7)', () => {
  const args = find<IDeployment>(renderInstall(OPTS), 'Deployment').spec?.template.spec?.containers[0]?.args ?? [];
  assert.ok(args.includes('--require-client-identity'), args.join(' '));
});

test('the controller (and the agent and east-west gateway) has a liveness probe and a PodDisruptionBudget that keeps one of several replicas (issue 17, defect 9)', () => {
  const one = renderInstall(OPTS);
  const c = find<IDeployment>(one, 'Deployment').spec?.template.spec?.containers[0];
  assert.equal(c?.livenessProbe?.httpGet?.path, '/healthz/live');
  assert.equal(c?.livenessProbe?.httpGet?.port, 15021);
  assert.equal(agentDaemonSet(one).agent.livenessProbe?.httpGet?.path, '/healthz/live');
  // The east-west gateway too, as every part serves /healthz/live (lib/status-http.ts).
  const gw = renderInstall({ ...OPTS, clusterId: 'c1', eastwest: true }).filter((o) => o.kind === 'Deployment').map((o) => o as IDeployment).find((d) => d.metadata?.name === 'weft-eastwest');
  assert.equal(gw?.spec?.template.spec?.containers[0]?.livenessProbe?.httpGet?.path, '/healthz/live');
  const pdb1 = one.find((o) => o.kind === 'PodDisruptionBudget') as { spec: { maxUnavailable?: number; minAvailable?: number } };
  assert.deepEqual(pdb1.spec.maxUnavailable, 1, 'a single replica never blocks a node drain');
  const three = renderInstall({ ...OPTS, controllerReplicas: 3 });
  const pdb3 = three.find((o) => o.kind === 'PodDisruptionBudget') as { spec: { minAvailable?: number; selector: { matchLabels: Record<string, string> } } };
  assert.equal(pdb3.spec.minAvailable, 1);
  const d = find<IDeployment>(three, 'Deployment');
  for (const [k, v] of Object.entries(pdb3.spec.selector.matchLabels)) assert.equal(d.spec?.template.metadata?.labels?.[k], v);
});

test('with --namespace, every identity and address names that namespace, never weft-system (issue 17, defect 4)', () => {
  const objects = renderInstall({ ...OPTS, namespace: 'mesh-b' });
  const text = JSON.stringify(objects.filter((o) => o.kind !== 'CustomResourceDefinition'));
  assert.ok(!text.includes('weft-system'), text.match(/.{60}weft-system.{60}/)?.[0]);
  const { agent } = agentDaemonSet(objects);
  const args = agent.args ?? [];
  assert.equal(args[args.indexOf('--controller-namespace') + 1], 'mesh-b');
  assert.equal(args[args.indexOf('--controller') + 1], 'weft-controller.mesh-b.svc:15012');
});
