// Kubernetes-mode authentication: the agent's ServiceAccount token checked with a TokenReview.
// A tiny in-process HTTP server stands in for the Kubernetes API server: it answers POSTs to
// /apis/authentication.k8s.io/v1/tokenreviews from a table of known tokens.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { CertificateRefusedError } from '../../lib/identity/errors.ts';
import {
  addCertificateService, AuthenticatorUnavailableError, createControllerCredentials, NodeAuthenticationError, type CaLogRecord,
  type ControllerCredentials,
} from '../../controller/src/ca/index.ts';
import { TokenReviewAuthenticator } from '../../controller/src/ca/token-review.ts';
import { CertManager, GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { TD, id } from './identity-fixtures.ts';

const AGENT_SA = 'system:serviceaccount:weft-system:weft-agent';
interface Review { username: string; node?: string }
const known = new Map<string, Review>([
  ['agent-token-node-a', { username: AGENT_SA, node: 'node-a' }],
  ['app-token-node-a', { username: 'system:serviceaccount:default:web', node: 'node-a' }],
  ['agent-token-unbound', { username: AGENT_SA }],
]);
const reviews: Array<{ token: string; auth: string | undefined }> = [];

let apiServer: Server;
let kubeConfig: KubeConfig;

before(async () => {
  apiServer = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url?.split('?')[0] !== '/apis/authentication.k8s.io/v1/tokenreviews') {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Status', status: 'Failure', code: 404 }));
        return;
      }
      const review = JSON.parse(body) as { spec: { token: string } };
      reviews.push({ token: review.spec.token, auth: req.headers.authorization });
      const hit = known.get(review.spec.token);
      const status = hit
        ? { authenticated: true, user: { username: hit.username, uid: 'u1', groups: ['system:serviceaccounts'], extra: hit.node ? { 'authentication.kubernetes.io/node-name': [hit.node] } : {} } }
        : { authenticated: false, error: 'invalid bearer token' };
      res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: review.spec, status }));
    });
  });
  await new Promise<void>((resolve) => apiServer.listen(0, '127.0.0.1', resolve));
  kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'test', server: `http://127.0.0.1:${(apiServer.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'controller', token: 'controller-sa-token' }],
    contexts: [{ name: 'test', cluster: 'test', user: 'controller' }],
    currentContext: 'test',
  });
});

after(() => apiServer.close());

test('an agent ServiceAccount token bound to a node authenticates as that node', async () => {
  const auth = new TokenReviewAuthenticator({ kubeConfig });
  assert.deepEqual(await auth.authenticate('agent-token-node-a'), { node: 'node-a', principal: AGENT_SA });
  assert.equal(reviews.at(-1)?.auth, 'Bearer controller-sa-token', 'the controller calls the API server with its own credentials');
  const count = reviews.length;
  await auth.authenticate('agent-token-node-a');
  assert.equal(reviews.length, count, 'a positive review is cached');
});

test('invalid tokens, non-agent ServiceAccounts and tokens not bound to a node are refused', async () => {
  const auth = new TokenReviewAuthenticator({ kubeConfig });
  await assert.rejects(auth.authenticate('garbage'), (err: Error) => err instanceof NodeAuthenticationError && /rejected by the API server \(invalid bearer token\)/.test(err.message));
  await assert.rejects(auth.authenticate('app-token-node-a'), (err: Error) => err instanceof NodeAuthenticationError && /not a Weft agent ServiceAccount/.test(err.message));
  await assert.rejects(auth.authenticate('agent-token-unbound'), (err: Error) => err instanceof NodeAuthenticationError && /not bound to a node/.test(err.message));
});

test('a workload token (a waypoint\'s) asked before the controller knows its waypoints is unavailable (retry), then admitted for its own ServiceAccount', async () => {
  let waypoints: Set<string> | undefined;
  const auth = new TokenReviewAuthenticator({ kubeConfig, cacheTtlMs: 0, workloadServiceAccount: (ns, sa) => waypoints?.has(`${ns}/${sa}`) });
  await assert.rejects(auth.authenticate('app-token-node-a'), (err: Error) => err instanceof AuthenticatorUnavailableError && /has not loaded its config/.test(err.message));
  waypoints = new Set(['default/web']);
  assert.deepEqual((await auth.authenticate('app-token-node-a')).workload, { namespace: 'default', serviceAccount: 'web' });
  waypoints = new Set();
  await assert.rejects(auth.authenticate('app-token-node-a'), (err: Error) => err instanceof NodeAuthenticationError && /not a Weft agent ServiceAccount/.test(err.message));
});

test('Kubernetes mode end to end: an agent signs with its ServiceAccount token over gRPC TLS, limited to its node', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const controller = id('weft-system', 'weft-controller');
  const creds: ControllerCredentials = await createControllerCredentials(ca, { identity: controller, ipAddresses: ['127.0.0.1'] });
  const server = new grpc.Server();
  const logs: CaLogRecord[] = [];
  addCertificateService(server, {
    ca,
    authenticator: new TokenReviewAuthenticator({ kubeConfig }),
    pods: { identitiesOnNode: (node) => new Set(node === 'node-a' ? [id('default', 'web')] : [id('default', 'db')]) },
    log: (r) => logs.push(r),
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds.credentials, (e, p) => (e ? reject(e) : resolve(p))));
  t.after(() => {
    creds.close();
    server.forceShutdown();
  });
  const signer = new GrpcCertificateSigner({
    address: `127.0.0.1:${port}`, trustBundle: ca.trustBundle(), serverIdentity: controller, token: () => 'agent-token-node-a',
    trustDomain: TD, nodeName: 'node-a', useNodeCertificate: false,
  });
  const m = new CertManager({ signer, trustBundle: ca.trustBundle() });
  t.after(() => m.close());
  const got = await m.get(id('default', 'web'));
  assert.equal(got.certChain.length, 1);
  await assert.rejects(m.get(id('default', 'db')), CertificateRefusedError);
  const refusal = logs.find((l) => l.msg === 'certificate refused');
  assert.equal(refusal?.node, 'node-a');
  assert.equal(refusal?.identity, id('default', 'db'));
});

test('a token the API server refused is refused again from memory: sending it again costs no TokenReview', async () => {
  const auth = new TokenReviewAuthenticator({ kubeConfig });
  const count = reviews.length;
  for (let i = 0; i < 5; i++) {
    await assert.rejects(auth.authenticate('forged-token'), (err: Error) => err instanceof NodeAuthenticationError && /rejected by the API server \(invalid bearer token\)/.test(err.message));
  }
  assert.equal(reviews.length, count + 1);
});
