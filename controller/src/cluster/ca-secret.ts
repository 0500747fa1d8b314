// One CA per cluster. Without CA material of its own (--ca-cert/--ca-key or --ca-dir), a controller
// in Kubernetes mode does not make a root of its own: it reads the Secret `weft-ca` in its
// namespace, and only when there is none generates a root and creates the Secret. Replicas race
// on the create; the API server lets exactly one win (409 AlreadyExists for the others), and the
// losers load the winner's root, so every replica, and every restart, signs with the same root.
import { CoreV1Api, type KubeConfig, type V1Secret } from '@kubernetes/client-node';
import { CertificateAuthority } from '../../../lib/identity/ca.ts';
import { randomBytes } from 'node:crypto';
import { DEFAULT_CA_SECRET } from '../../../lib/defaults.ts';
import { DEBUG_TOKEN_SECRET, debugTokenOfSecret } from '../../../lib/debug-http.ts';
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

/**
 * A Secret of the controller's namespace that one replica creates once, when there is none: read
 * it, else create `make()`; replicas race on the create, the API server lets exactly one win (409
 * AlreadyExists for the others), and the losers read the winner's.
 */
export async function readOrCreateSecret(api: CoreV1Api, namespace: string, name: string, make: () => Promise<V1Secret> | V1Secret, rbacHint: string): Promise<{ secret: V1Secret; created: boolean }> {
  const where = `Secret ${namespace}/${name}`;
  const read = async (): Promise<V1Secret | undefined> => {
    try {
      return await api.readNamespacedSecret({ name, namespace });
    } catch (e) {
      if (code(e) === 404) return undefined;
      throw new CaSecretError(`cannot read ${where} (${(e as Error).message}); the controller needs RBAC get on it`, { cause: e });
    }
  };
  const existing = await read();
  if (existing) return { secret: existing, created: false };
  const body = await make();
  try {
    await api.createNamespacedSecret({ namespace, body });
    return { secret: body, created: true };
  } catch (e) {
    if (code(e) !== 409) throw new CaSecretError(`cannot create ${where} (${(e as Error).message}); ${rbacHint}`, { cause: e });
  }
  const winner = await read();
  if (!winner) throw new CaSecretError(`${where} was created by another replica and deleted again; restart the controller`);
  return { secret: winner, created: false };
}

const OWN_LABELS = { 'app.kubernetes.io/part-of': 'weft', 'app.kubernetes.io/managed-by': 'weft-controller' };

/** The cluster's CA from its Secret, created (with a new root) when there is none. */
export async function clusterCertificateAuthority(o: ClusterCaOptions): Promise<{ ca: CertificateAuthority; created: boolean }> {
  const api = o.kubeConfig.makeApiClient(CoreV1Api);
  const name = o.secretName ?? DEFAULT_CA_SECRET;
  const log = o.logger ?? silentLogger;
  const where = `Secret ${o.namespace}/${name}`;
  let generated: CertificateAuthority | undefined;
  const { secret, created } = await readOrCreateSecret(api, o.namespace, name, async () => {
    generated = await CertificateAuthority.generateRoot({ trustDomain: o.trustDomain });
    const pem = generated.exportPem();
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    return {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name, namespace: o.namespace, labels: OWN_LABELS },
      type: 'kubernetes.io/tls',
      data: { 'tls.crt': b64(pem.certPem), 'tls.key': b64(pem.keyPem), 'ca.crt': b64(pem.rootsPem) },
    };
  }, 'the controller needs RBAC create on secrets in its namespace, or give --ca-secret at install');
  if (created && generated) {
    log.info('no CA given: generated the cluster root and stored it', { secret: where });
    return { ca: generated, created: true };
  }
  log.info(generated ? 'CA loaded from the cluster CA Secret another replica created' : 'CA loaded from the cluster CA Secret', { secret: where });
  return { ca: CertificateAuthority.fromSecretData({ ...(secret.data ?? {}), ...(secret.stringData ?? {}) }, { trustDomain: o.trustDomain }), created: false };
}

/**
 * The install's debug token (lib/debug-http.ts): Secret DEBUG_TOKEN_SECRET in the controller's
 * namespace, created once with a random token when the install opens the debug paths and there is
 * none. The agents and the dashboard mount it (optional until it exists: the agents refuse every
 * /debug request meanwhile), weftctl reads it through the API. Made here, not rendered, so that a
 * rendered install holds no secret and re-applying it does not change the token.
 */
export async function clusterDebugToken(o: { kubeConfig: KubeConfig; namespace: string; logger?: Logger }): Promise<{ created: boolean; token: string | undefined }> {
  const api = o.kubeConfig.makeApiClient(CoreV1Api);
  const { created, secret } = await readOrCreateSecret(api, o.namespace, DEBUG_TOKEN_SECRET, () => ({
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    metadata: { name: DEBUG_TOKEN_SECRET, namespace: o.namespace, labels: OWN_LABELS },
    data: { token: Buffer.from(randomBytes(32).toString('hex')).toString('base64') },
  }), 'the controller needs RBAC create on secrets in its namespace');
  if (created) (o.logger ?? silentLogger).info('debug paths open: generated the install\'s debug token and stored it', { secret: `${o.namespace}/${DEBUG_TOKEN_SECRET}` });
  // The controller's own debug paths want the same token (lib/debug-http.ts), read as the agents' mount holds it.
  return { created, token: debugTokenOfSecret(secret.data) };
}
