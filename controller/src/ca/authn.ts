// Who is asking the certificate service for a certificate: node authenticators.
//
// A NodeAuthenticator turns a bearer token into a node name, or refuses it.
//   - StaticTokenAuthenticator (local mode): one bootstrap token per node name.
//   - TokenReviewAuthenticator (Kubernetes mode): the agent's ServiceAccount token, checked by
//     the API server's TokenReview; the node comes from the bound token's
//     `authentication.kubernetes.io/node-name` extra, and the ServiceAccount must be an agent's.
// After bootstrap an agent authenticates with mTLS and its node certificate instead; that path
// is handled by the service itself (see service.ts), not by an authenticator.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { AuthenticationV1Api, KubeConfig, type V1TokenReview } from '@kubernetes/client-node';
import { CONTROLLER_TOKEN_AUDIENCE, DEFAULT_INSTALL_NAMESPACE, agentServiceAccountUser } from '../../../lib/defaults.ts';

export interface AuthenticatedNode {
  /** The node the caller runs on ('' when a workload token names none). */
  node: string;
  /** Who vouched, for logs: "bootstrap-token", a ServiceAccount username, or "node-certificate". */
  principal: string;
  /**
   * Set when the token is a workload's own ServiceAccount token (a waypoint's), not an agent's:
   * the caller may then obtain exactly the identity of that ServiceAccount and nothing else.
   */
  workload?: { namespace: string; serviceAccount: string };
}

export interface NodeAuthenticator {
  /** Resolves the node the token belongs to; rejects with NodeAuthenticationError or AuthenticatorUnavailableError. */
  authenticate(token: string): Promise<AuthenticatedNode>;
}

/** The token is not valid for any node (maps to UNAUTHENTICATED). */
export class NodeAuthenticationError extends Error {
  readonly code = 'WEFT_CA_NODE_UNAUTHENTICATED';
  constructor(message: string) {
    super(message);
    this.name = 'NodeAuthenticationError';
  }
}

/** The authenticator's backend (the API server) could not be asked (maps to UNAVAILABLE). */
export class AuthenticatorUnavailableError extends Error {
  readonly code = 'WEFT_CA_AUTHENTICATOR_UNAVAILABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AuthenticatorUnavailableError';
  }
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Local mode: bootstrap tokens configured per node name. A key of the form
 * `system:serviceaccount:<namespace>:<name>` (never a node name: those hold no ':') is a
 * workload's token instead, as a ServiceAccount token is in Kubernetes: it obtains that
 * ServiceAccount's identity and nothing else (the east-west gateway's, `weft-system:weft-eastwest`).
 */
export class StaticTokenAuthenticator implements NodeAuthenticator {
  readonly #tokens: Array<{ node: string; digest: Buffer }>;

  /** `tokens` maps node name (or a workload's ServiceAccount username) → bootstrap token. */
  constructor(tokens: Readonly<Record<string, string>> | ReadonlyMap<string, string>) {
    const entries = tokens instanceof Map ? [...tokens.entries()] : Object.entries(tokens);
    this.#tokens = entries.map(([node, token]) => {
      if (token.length < 16) throw new NodeAuthenticationError(`bootstrap token for node ${node} is shorter than 16 characters; generate a random one`);
      return { node, digest: digest(token) };
    });
  }

  /** Reads a YAML or JSON map of node name → token (e.g. a Secret mounted as a file). */
  static async fromFile(path: string): Promise<StaticTokenAuthenticator> {
    let data: unknown;
    try {
      data = parseYaml(await readFile(path, 'utf8'));
    } catch (err) {
      throw new NodeAuthenticationError(`cannot read bootstrap tokens from ${path} (${(err as Error).message}); write a YAML map of node name to token`);
    }
    if (!data || typeof data !== 'object' || Array.isArray(data) || !Object.values(data).every((v) => typeof v === 'string')) {
      throw new NodeAuthenticationError(`bootstrap token file ${path} must be a YAML map of node name to token string`);
    }
    return new StaticTokenAuthenticator(data as Record<string, string>);
  }

  async authenticate(token: string): Promise<AuthenticatedNode> {
    const d = digest(token);
    // Compare against every entry, in constant time each, so timing does not reveal a prefix.
    let match: string | undefined;
    for (const t of this.#tokens) if (timingSafeEqual(t.digest, d)) match = t.node;
    if (match === undefined) throw new NodeAuthenticationError('bootstrap token is not valid for any node; check the agent\'s --bootstrap-token against the controller\'s node token list');
    const sa = SA_USER.exec(match);
    if (sa) return { node: '', principal: match, workload: { namespace: sa[1]!, serviceAccount: sa[2]! } };
    return { node: match, principal: 'bootstrap-token' };
  }
}

export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';
/** Default ServiceAccount of the agent DaemonSet (install namespace weft-system). */
export const DEFAULT_AGENT_SERVICE_ACCOUNTS = [agentServiceAccountUser(DEFAULT_INSTALL_NAMESPACE)];
const SA_USER = /^system:serviceaccount:([a-z0-9][-a-z0-9]*):([a-z0-9][-a-z0-9.]*)$/;
/** How long a positive TokenReview is reused (the token itself may live for an hour). */
export const TOKEN_REVIEW_CACHE_TTL_MS = 30_000;

export interface TokenReviewAuthenticatorOptions {
  /** Cluster access; default: in-cluster config. */
  kubeConfig?: KubeConfig;
  /** ServiceAccount usernames allowed to act as node agents (default system:serviceaccount:weft-system:weft-agent). */
  agentServiceAccounts?: readonly string[];
  /**
   * Audiences the token must carry, sent in the TokenReview (default `weft-controller`, the audience
   * of the projected tokens the install mounts). Without them the API server reviews a token
   * against its own audience and refuses every projected token made for the controller.
   */
  audiences?: readonly string[];
  /**
   * Other ServiceAccounts whose own token may obtain their own identity (the controller passes
   * "is this a Waypoint's ServiceAccount"); default none. Undefined: not known yet (the controller
   * has not loaded its config), which refuses as unavailable, so the caller retries.
   */
  workloadServiceAccount?: (namespace: string, serviceAccount: string) => boolean | undefined;
  cacheTtlMs?: number;
  clock?: () => number;
}

/** Kubernetes mode: the agent's bound ServiceAccount token, validated by a TokenReview. */
export class TokenReviewAuthenticator implements NodeAuthenticator {
  readonly #api: AuthenticationV1Api;
  readonly #allowed: ReadonlySet<string>;
  readonly #audiences: readonly string[];
  readonly #workload: ((namespace: string, serviceAccount: string) => boolean | undefined) | undefined;
  readonly #ttl: number;
  readonly #clock: () => number;
  readonly #cache = new Map<string, { result: AuthenticatedNode; until: number }>();
  readonly #server: string;

  constructor(opts: TokenReviewAuthenticatorOptions = {}) {
    let kc = opts.kubeConfig;
    if (!kc) {
      kc = new KubeConfig();
      kc.loadFromCluster();
    }
    this.#server = kc.getCurrentCluster()?.server ?? 'the API server';
    this.#api = kc.makeApiClient(AuthenticationV1Api);
    this.#allowed = new Set(opts.agentServiceAccounts ?? DEFAULT_AGENT_SERVICE_ACCOUNTS);
    this.#audiences = opts.audiences ?? [CONTROLLER_TOKEN_AUDIENCE];
    this.#workload = opts.workloadServiceAccount;
    this.#ttl = opts.cacheTtlMs ?? TOKEN_REVIEW_CACHE_TTL_MS;
    this.#clock = opts.clock ?? Date.now;
  }

  async authenticate(token: string): Promise<AuthenticatedNode> {
    const key = digest(token).toString('hex');
    const now = this.#clock();
    const hit = this.#cache.get(key);
    if (hit && hit.until > now) return hit.result;
    const body: V1TokenReview = { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [...this.#audiences] } };
    let review: V1TokenReview;
    try {
      review = await this.#api.createTokenReview({ body });
    } catch (err) {
      throw new AuthenticatorUnavailableError(`TokenReview at ${this.#server} failed (${(err as Error).message}); the controller needs RBAC to create tokenreviews.authentication.k8s.io`, { cause: err });
    }
    const status = review.status;
    if (!status?.authenticated) {
      throw new NodeAuthenticationError(`ServiceAccount token was rejected by the API server${status?.error ? ` (${status.error})` : ''}; the agent must send its projected ServiceAccount token`);
    }
    // The API server answers with the audiences the token is valid for, a subset of those asked.
    if (status.audiences && !status.audiences.some((a) => this.#audiences.includes(a))) {
      throw new NodeAuthenticationError(`token is not valid for audience ${this.#audiences.join(', ')}; mount a projected ServiceAccount token with audience ${CONTROLLER_TOKEN_AUDIENCE}`);
    }
    const username = status.user?.username ?? '';
    const node = status.user?.extra?.[NODE_NAME_EXTRA]?.[0];
    if (!this.#allowed.has(username)) {
      const sa = SA_USER.exec(username);
      const known = sa ? this.#workload?.(sa[1]!, sa[2]!) : false;
      if (sa && known === undefined && this.#workload) throw new AuthenticatorUnavailableError(`cannot yet tell whether ${username} is a waypoint's: the controller has not loaded its config`);
      if (sa && known) {
        const result: AuthenticatedNode = { node: node ?? '', principal: username, workload: { namespace: sa[1]!, serviceAccount: sa[2]! } };
        this.#cache.set(key, { result, until: now + this.#ttl });
        return result;
      }
      throw new NodeAuthenticationError(`token belongs to ${username || 'an unnamed user'}, which is not a Weft agent ServiceAccount (${[...this.#allowed].join(', ')}) nor a waypoint's (nor, in a multi-cluster mesh, the east-west gateway's)`);
    }
    if (!node) {
      throw new NodeAuthenticationError(`token of ${username} is not bound to a node (no ${NODE_NAME_EXTRA} extra); mount a projected ServiceAccount token in the agent pod (Kubernetes >= 1.30)`);
    }
    const result = { node, principal: username };
    this.#cache.set(key, { result, until: now + this.#ttl });
    if (this.#cache.size > 4096) {
      for (const [k, v] of this.#cache) if (v.until <= now) this.#cache.delete(k);
    }
    return result;
  }
}
