// Every Weft pod but the agent's must start on a real cluster and in a namespace that enforces the
// restricted Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted):
// the waypoints above all, which the controller writes into application namespaces. And the kubelet
// refuses a container with runAsNonRoot and no runAsUser when the image's USER is a name
// (kubernetes pkg/kubelet/kuberuntime/security_context_others.go verifyRunAsNonRoot); the Weft
// image's is `node`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import { renderInstall } from '../../cli/install/render.ts';
import { runAsNonRootProblem, weftImageUser } from '../../cli/local/kube/kubelet.ts';
import { waypointPodSpec } from '../../controller/src/waypoints-kube.ts';
import { launchSpec } from '../../controller/src/waypoints.ts';
import { waypoint } from './controller-fixtures.ts';
import { restrictedProblems, type RestrictedPodSpec } from '../lab/pod-security.ts';

const IMAGE = 'ghcr.io/weft-mesh/weft:test';

function pods(): Array<[string, RestrictedPodSpec]> {
  const objects = renderInstall({ image: IMAGE, trustDomain: 'cluster.local', dashboard: true, clusterId: 'c1', eastwest: true, warn: () => {} });
  const deployments = objects.filter((o): o is IDeployment => o.kind === 'Deployment');
  const wp = waypointPodSpec(launchSpec({ ...waypoint('shop', 'wp'), spec: { replicas: 2, maxRequests: 10 } }, 'cluster.local'), { image: IMAGE, trustDomain: 'cluster.local', controllerNamespace: 'weft-system', controllerAddress: 'weft-controller.weft-system.svc:15012' });
  return [...deployments.map((d) => [`Deployment ${d.metadata?.name}`, d.spec!.template.spec as RestrictedPodSpec] as [string, RestrictedPodSpec]), ['waypoint Deployment shop/wp', wp as RestrictedPodSpec]];
}

test('the kubelet\'s runAsNonRoot check: runAsUser wins, 0 refused; without it the image\'s USER must be a numeric uid other than 0', () => {
  const c = (sc?: { runAsNonRoot?: boolean; runAsUser?: number }) => ({ name: 'c', ...(sc ? { securityContext: sc } : {}) });
  assert.equal(weftImageUser(), 'node');
  assert.equal(runAsNonRootProblem({}, c(), 'node'), undefined, 'no runAsNonRoot: nothing to check');
  assert.match(runAsNonRootProblem({}, c({ runAsNonRoot: true }), 'node')!, /non-numeric user \(node\), cannot verify user is non-root/);
  assert.match(runAsNonRootProblem({ securityContext: { runAsNonRoot: true } }, c(), undefined)!, /image will run as root/);
  assert.match(runAsNonRootProblem({}, c({ runAsNonRoot: true }), '0:0')!, /image will run as root/);
  assert.equal(runAsNonRootProblem({}, c({ runAsNonRoot: true }), '1000'), undefined);
  assert.equal(runAsNonRootProblem({ securityContext: { runAsUser: 1000 } }, c({ runAsNonRoot: true }), 'node'), undefined);
  assert.match(runAsNonRootProblem({ securityContext: { runAsUser: 1000 } }, c({ runAsNonRoot: true, runAsUser: 0 }), 'node')!, /runAsUser breaks non-root policy/);
});

test('every Weft pod but the agent\'s (controller, dashboard, east-west gateway, and the waypoints the controller writes into application namespaces) meets the restricted Pod Security Standard and starts with the image\'s USER', () => {
  const user = weftImageUser();
  const all = pods();
  assert.deepEqual(all.map(([n]) => n), ['Deployment weft-controller', 'Deployment weft-dashboard', 'Deployment weft-eastwest', 'waypoint Deployment shop/wp']);
  for (const [name, spec] of all) {
    assert.deepEqual(restrictedProblems(spec, 'spec.template.spec'), [], `${name} in a namespace enforcing restricted`);
    for (const c of spec.containers) assert.equal(runAsNonRootProblem(spec as Parameters<typeof runAsNonRootProblem>[0], c as Parameters<typeof runAsNonRootProblem>[1], user), undefined, `${name}, container ${c.name}, with the image's USER ${user}`);
  }
});
