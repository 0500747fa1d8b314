// CSRs signed per second by the Weft CA: in-process (CertificateAuthority.signCsr) and through
// the gRPC certificate service over TLS on 127.0.0.1 (node certificate over mTLS, as agents do
// after bootstrap). Also reports agent-side ECDSA P-256 key generation + CSR cost.
//
//   node bench/ca-sign.ts [--seconds 3] [--concurrency 32] [--json]
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { CertificateAuthority } from '../lib/identity/ca.ts';
import { CertificateServiceClient } from '../lib/identity/ca-client.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from '../lib/identity/csr.ts';
import { addCertificateService, createControllerCredentials, StaticTokenAuthenticator } from '../controller/src/ca/index.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '32' },
    json: { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds);
const concurrency = Number(values.concurrency);
const TD = 'bench.local';
const identity = `spiffe://${TD}/ns/bench/sa/load`;
const NODE = 'bench-node';
const TOKEN = 'bench-bootstrap-token-0123456789';

async function timed(fn: () => Promise<void> | void, ms: number, parallel = 1): Promise<{ ops: number; rate: number }> {
  const until = performance.now() + ms;
  const start = performance.now();
  let ops = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (performance.now() < until) {
      await fn();
      ops++;
    }
  }));
  const elapsed = (performance.now() - start) / 1000;
  return { ops, rate: ops / elapsed };
}

const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
const { privateKey } = await generateKeyPair();
const csr = createCsr(identity, privateKey);

// Agent side: key + CSR.
const keygen = await timed(async () => {
  const kp = await generateKeyPair();
  createCsr(identity, kp.privateKey);
}, 1000);

// In-process signing (includes CSR parsing and signature verification).
const inProcess = await timed(() => {
  ca.signCsr(csr, identity);
}, seconds * 1000);

// Through gRPC.
const controllerId = `spiffe://${TD}/ns/weft-system/sa/weft-controller`;
const creds = await createControllerCredentials(ca, { identity: controllerId, ipAddresses: ['127.0.0.1'] });
const server = new grpc.Server();
addCertificateService(server, {
  ca,
  authenticator: new StaticTokenAuthenticator({ [NODE]: TOKEN }),
  pods: { identitiesOnNode: () => new Set([identity]) },
  log: () => undefined,
  // The bench measures the service's signing capacity from one node; the per-node request budget
  // (DEFAULT_CERTIFICATE_LIMITS.perNode, 300 per 10 s) would end the run with RESOURCE_EXHAUSTED
  // after 300 requests, so it is lifted here and only here.
  limits: { perNode: { requests: Number.MAX_SAFE_INTEGER, intervalMs: 10_000 } },
});
const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds.credentials, (e, p) => (e ? reject(e) : resolve(p))));
const address = `127.0.0.1:${port}`;
const nodeIdentity = `spiffe://${TD}/node/${NODE}`;
const nodeKey = await generateKeyPair();
const bootstrap = new CertificateServiceClient({ address, trustBundle: ca.trustBundle(), serverIdentity: controllerId, credentials: { kind: 'token', token: () => TOKEN } });
const nodeCert = await bootstrap.createCertificate(nodeIdentity, createCsr(nodeIdentity, nodeKey.privateKey));
bootstrap.close();
const client = new CertificateServiceClient({
  address, trustBundle: ca.trustBundle(), serverIdentity: controllerId,
  credentials: { kind: 'mtls', key: privateKeyToPem(nodeKey.privateKey), certChain: nodeCert.certChain },
});
await client.createCertificate(identity, csr); // connect
const overGrpc = await timed(async () => {
  await client.createCertificate(identity, csr);
}, seconds * 1000, concurrency);
client.close();
server.forceShutdown();
creds.close();

const result = {
  keygenAndCsrPerSecond: Math.round(keygen.rate),
  keygenAndCsrMs: +(1000 / keygen.rate).toFixed(3),
  signInProcessPerSecond: Math.round(inProcess.rate),
  signGrpcPerSecond: Math.round(overGrpc.rate),
  grpcConcurrency: concurrency,
  keyType: 'ECDSA P-256',
};
if (values.json) {
  console.log(JSON.stringify(result));
} else {
  console.log(`agent key generation + CSR (ECDSA P-256): ${result.keygenAndCsrPerSecond}/s (${result.keygenAndCsrMs} ms each)`);
  console.log(`CA signing, in-process:                   ${result.signInProcessPerSecond} CSRs/s`);
  console.log(`CA signing, gRPC over mTLS (${concurrency} in flight): ${result.signGrpcPerSecond} CSRs/s`);
}
