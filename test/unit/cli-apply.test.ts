import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkManifest } from '../../cli/commands/apply.ts';

test('a manifest with a bad field is refused with the object and the field named', () => {
  const { problems } = checkManifest(`
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: shop }
spec:
  action: DENY
  rules:
    - from: [{ source: { ipBlocks: ["10.0.0.0/33"] } }]
`, 'policy.yaml');
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /^policy\.yaml: AuthorizationPolicy shop\/deny-admin: spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\]: /);
});

test('broken YAML and empty files are refused', () => {
  assert.match(checkManifest('kind: [unclosed', 'x.yaml').problems[0]!, /x\.yaml: YAML error/);
  assert.deepEqual(checkManifest('', 'empty.yaml').problems, ['empty.yaml: no objects in the file']);
});

test('a valid multi-document manifest passes with every object', () => {
  const { objects, problems } = checkManifest(`
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { weft.dev/dataplane-mode: ambient } }
---
apiVersion: weft.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: strict, namespace: shop }
spec: { mtls: { mode: STRICT } }
`, 'ok.yaml');
  assert.deepEqual(problems, []);
  assert.equal(objects.length, 2);
});
