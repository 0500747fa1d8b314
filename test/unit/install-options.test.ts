import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderInstall } from '../../cli/install/render.ts';
import { resolveInstallOptions } from '../../cli/install/options.ts';
import { InstallOptionError } from '../../cli/install/errors.ts';

const OK = { image: 'ghcr.io/acme/weft:0.1.0', trustDomain: 'cluster.local' };

function rejects(opts: Parameters<typeof renderInstall>[0], option: string, flag: RegExp): void {
  assert.throws(() => renderInstall(opts), (err: unknown) => {
    assert.ok(err instanceof InstallOptionError, String(err));
    assert.equal(err.code, 'WEFT_INSTALL_BAD_OPTION');
    assert.equal(err.option, option);
    assert.match(err.message, flag);
    assert.ok(!err.message.includes('\n'), 'one line');
    return true;
  });
}

test('applies documented defaults', () => {
  assert.deepEqual(resolveInstallOptions(OK), {
    image: 'ghcr.io/acme/weft:0.1.0', trustDomain: 'cluster.local', trustDomainAliases: [], namespace: 'weft-system',
    controllerReplicas: 1, logLevel: 'info', cniMode: 'none', caSecret: undefined, dashboard: false, debugEndpoints: false, splice: false,
  });
});

test('the read-only admin paths on the metrics port are off unless asked for, and on with the dashboard', () => {
  assert.equal(resolveInstallOptions(OK).debugEndpoints, false);
  assert.equal(resolveInstallOptions({ ...OK, dashboard: true }).debugEndpoints, true);
  assert.equal(resolveInstallOptions({ ...OK, debugEndpoints: true }).debugEndpoints, true);
  assert.equal(resolveInstallOptions({ ...OK, dashboard: true, debugEndpoints: false }).debugEndpoints, false);
});

test('rejects an empty image and names --image', () => {
  rejects({ ...OK, image: '' }, 'image', /^--image is empty/);
  rejects({ ...OK, image: '   ' }, 'image', /^--image is empty/);
});

test('rejects an image that is not a reference and names --image', () => {
  for (const image of ['ghcr.io/Acme/weft:1', 'weft:bad tag', 'weft@sha256:xyz', 'http://ghcr.io/weft', 'weft:']) {
    rejects({ ...OK, image }, 'image', /^--image ".*" is not a container image reference/);
  }
});

test('accepts registry ports, nested paths, tags and digests', () => {
  for (const image of ['weft', 'localhost:5000/weft:dev', 'ghcr.io/acme/mesh/weft:0.1.0-rc.1',
    `ghcr.io/acme/weft@sha256:${'a'.repeat(64)}`, `weft:1.0@sha256:${'0'.repeat(64)}`]) {
    assert.equal(resolveInstallOptions({ ...OK, image }).image, image);
  }
});

test('rejects a trust domain with illegal characters and names --trust-domain', () => {
  for (const trustDomain of ['Cluster.Local', 'cluster local', 'spiffe://cluster.local', 'a/b', '']) {
    rejects({ ...OK, trustDomain }, 'trustDomain', /^--trust-domain: trust domain ".*" is invalid: use 1-255 lower-case letters/);
  }
});

test('trust domain aliases (Istio meshConfig.trustDomainAliases): each must be a trust domain other than the mesh\'s own, named by --trust-domain-alias; repeats are kept once', () => {
  for (const alias of ['Old.TD', 'old td', 'spiffe://old-td', '']) {
    rejects({ ...OK, trustDomainAliases: [alias] }, 'trustDomainAliases', /^--trust-domain-alias: trust domain ".*" is invalid: use 1-255 lower-case letters/);
  }
  rejects({ ...OK, trustDomainAliases: ['cluster.local'] }, 'trustDomainAliases', /^--trust-domain-alias "cluster\.local" is the trust domain itself$/);
  assert.deepEqual(resolveInstallOptions({ ...OK, trustDomainAliases: ['old-td', 'older-td', 'old-td'] }).trustDomainAliases, ['old-td', 'older-td']);
});

test('rejects a namespace that is not a DNS label and names --namespace', () => {
  for (const namespace of ['Weft', 'weft_system', '-weft', 'a'.repeat(64)]) {
    rejects({ ...OK, namespace }, 'namespace', /^--namespace/);
  }
});

// The install labels its namespace privileged (Pod Security Admission) and out of the mesh
// (weft.dev/dataplane-mode: none), and uninstall deletes it: on `default` every application pod
// there would silently leave the mesh and lose the namespace's Pod Security level.
test('rejects Kubernetes\' own namespaces (default, kube-system, kube-public, kube-node-lease): Weft labels its namespace privileged and out of the mesh', () => {
  for (const namespace of ['default', 'kube-system', 'kube-public', 'kube-node-lease']) {
    rejects({ ...OK, namespace }, 'namespace', new RegExp(`^--namespace "${namespace}" is Kubernetes' own: .*privileged.*out of the mesh`));
  }
  assert.equal(resolveInstallOptions({ ...OK, namespace: 'istio-system' }).namespace, 'istio-system');
});

test('rejects controller replicas that are not a whole number from 1 to 9', () => {
  for (const controllerReplicas of [0, -1, 1.5, Number.NaN, 10]) {
    rejects({ ...OK, controllerReplicas, caSecret: 'weft-ca' }, 'controllerReplicas', /^--controller-replicas .* give a whole number from 1 to 9/);
  }
});

test('rejects unknown log levels and CNI modes with the allowed values', () => {
  rejects({ ...OK, logLevel: 'verbose' }, 'logLevel', /--log-level "verbose" is unknown: use one of error, warn, info, debug$/);
  rejects({ ...OK, cniMode: 'chained' }, 'cniMode', /--cni-mode "chained" is not supported: use none/);
});

test('several controller replicas need no --ca-secret: they share the one CA Secret the controller creates (issue 17, defect 2)', () => {
  assert.equal(resolveInstallOptions({ ...OK, controllerReplicas: 2 }).controllerReplicas, 2);
  assert.equal(resolveInstallOptions({ ...OK, controllerReplicas: 2, caSecret: 'weft-ca' }).controllerReplicas, 2);
});

test('rejects a CA Secret name that is not a Kubernetes name', () => {
  for (const caSecret of ['', 'Weft_CA', 'ca/secret']) rejects({ ...OK, caSecret }, 'caSecret', /^--ca-secret ".*" is not a Secret name/);
});
