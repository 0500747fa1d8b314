// One CA per cluster. Without CA material of its own (--ca-cert/--ca-key or --ca-dir), a controller
// in Kubernetes mode does not make a root of its own: it reads the Secret `weft-ca` in its
// namespace, and only when there is none generates a root and creates the Secret. Replicas race
// on the create; the API server lets exactly one win (409 AlreadyExists for the others), and the
// losers load the winner's root, so every replica, and every restart, signs with the same root.
import { CoreV1Api, type KubeConfig, type V1Secret } from '@kubernetes/client-node';
import { CertificateAuthority } from '../../../lib/identity/ca.ts';
import { DEFAULT_CA_SECRET } from '../../../lib/defaults.ts';
import { silentLogger, type Logger } from '../log.ts';

/** The CA Secret could not be read or created. */
export class CaSecretError extends Error {
  readonly code = 'WEFT_CA_SECRET';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CaSecretError';
  }
}

export interface ClusterCaOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  trustDomain: string;
  /** Default `weft-ca`. */
  secretName?: string;
  logger?: Logger;
}

const code = (e: unknown): number | undefined => (e as { code?: number }).code;

/** The cluster's CA from its Secret, created (with a new root) when there is none. */
export async function clusterCertificateAuthority(o: ClusterCaOptions): Promise<{ ca: CertificateAuthority; created: boolean }> {
  const api = o.kubeConfig.makeApiClient(CoreV1Api);
  const name = o.secretName ?? DEFAULT_CA_SECRET;
  const log = o.logger ?? silentLogger;
  const where = `Secret ${o.namespace}/${name}`;
  const load = (s: V1Secret) => CertificateAuthority.fromSecretData({ ...(s.data ?? {}), ...(s.stringData ?? {}) }, { trustDomain: o.trustDomain });
  const read = async (): Promise<V1Secret | undefined> => {
    try {
      return await api.readNamespacedSecret({ name, namespace: o.namespace });
    } catch (e) {
      if (code(e) === 404) return undefined;
      throw new CaSecretError(`cannot read ${where} (${(e as Error).message}); the controller needs RBAC get on it`, { cause: e });
    }
  };
  const existing = await read();
  if (existing) {
    log.info('CA loaded from the cluster CA Secret', { secret: where });
    return { ca: load(existing), created: false };
  }
  const ca = await CertificateAuthority.generateRoot({ trustDomain: o.trustDomain });
  const pem = ca.exportPem();
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const body: V1Secret = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace: o.namespace, labels: { 'app.kubernetes.io/part-of': 'weft', 'app.kubernetes.io/managed-by': 'weft-controller' } },
    type: 'kubernetes.io/tls',
    data: { 'tls.crt': b64(pem.certPem), 'tls.key': b64(pem.keyPem), 'ca.crt': b64(pem.rootsPem) },
  };
  try {
    await api.createNamespacedSecret({ namespace: o.namespace, body });
    log.info('no CA given: generated the cluster root and stored it', { secret: where });
    return { ca, created: true };
  } catch (e) {
    if (code(e) !== 409) throw new CaSecretError(`cannot create ${where} (${(e as Error).message}); the controller needs RBAC create on secrets in its namespace, or give --ca-secret at install`, { cause: e });
  }
  // Another replica created it first: use its root.
  const winner = await read();
  if (!winner) throw new CaSecretError(`${where} was created by another replica and deleted again; restart the controller`);
  log.info('CA loaded from the cluster CA Secret another replica created', { secret: where });
  return { ca: load(winner), created: false };
}
