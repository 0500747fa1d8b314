// Kubernetes mode's NodeAuthenticator: the agent's ServiceAccount token, checked by the API
// server's TokenReview; the node comes from the bound token's `authentication.kubernetes.io/node-name`
// extra, and the ServiceAccount must be an agent's (or, for its own identity only, a waypoint's or
// the east-west gateway's). Loaded only in Kubernetes mode (kube-mode.ts).
import { AuthenticationV1Api, KubeConfig, type V1TokenReview } from '@kubernetes/client-node';
import { CONTROLLER_TOKEN_AUDIENCE, DEFAULT_INSTALL_NAMESPACE, agentServiceAccountUser } from '../../../lib/defaults.ts';
import { AuthenticatorUnavailableError, NodeAuthenticationError, SA_USER, digest, type AuthenticatedNode, type NodeAuthenticator } from './authn.ts';

export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';
/** Default ServiceAccount of the agent DaemonSet (install namespace weft-system). */
export const DEFAULT_AGENT_SERVICE_ACCOUNTS = [agentServiceAccountUser(DEFAULT_INSTALL_NAMESPACE)];
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
  /** Tokens the API server refused (by digest), refused again without asking until the TTL ends. */
  readonly #refused = new Map<string, { message: string; until: number }>();
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
    const refused = this.#refused.get(key);
    if (refused && refused.until > now) throw new NodeAuthenticationError(refused.message);
    const body: V1TokenReview = { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [...this.#audiences] } };
    let review: V1TokenReview;
    try {
      review = await this.#api.createTokenReview({ body });
    } catch (err) {
      throw new AuthenticatorUnavailableError(`TokenReview at ${this.#server} failed (${(err as Error).message}); the controller needs RBAC to create tokenreviews.authentication.k8s.io`, { cause: err });
    }
    const status = review.status;
    // A token the API server refuses stays refused (an expired or forged token, another audience's):
    // the same token sent again is refused from memory, not with another TokenReview.
    if (!status?.authenticated) {
      throw this.#remember(key, now, `ServiceAccount token was rejected by the API server${status?.error ? ` (${status.error})` : ''}; the agent must send its projected ServiceAccount token`);
    }
    // The API server answers with the audiences the token is valid for, a subset of those asked.
    if (status.audiences && !status.audiences.some((a) => this.#audiences.includes(a))) {
      throw this.#remember(key, now, `token is not valid for audience ${this.#audiences.join(', ')}; mount a projected ServiceAccount token with audience ${CONTROLLER_TOKEN_AUDIENCE}`);
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
        sweep(this.#cache, now);
        return result;
      }
      throw new NodeAuthenticationError(`token belongs to ${username || 'an unnamed user'}, which is not a Weft agent ServiceAccount (${[...this.#allowed].join(', ')}) nor a waypoint's (nor, in a multi-cluster mesh, the east-west gateway's)`);
    }
    if (!node) {
      throw new NodeAuthenticationError(`token of ${username} is not bound to a node (no ${NODE_NAME_EXTRA} extra); mount a projected ServiceAccount token in the agent pod (Kubernetes >= 1.30)`);
    }
    const result = { node, principal: username };
    this.#cache.set(key, { result, until: now + this.#ttl });
    sweep(this.#cache, now);
    return result;
  }

  #remember(key: string, now: number, message: string): NodeAuthenticationError {
    this.#refused.set(key, { message, until: now + this.#ttl });
    sweep(this.#refused, now);
    return new NodeAuthenticationError(message);
  }
}

/** Entries a token cache keeps: past it, expired ones go, then the oldest. */
export const TOKEN_CACHE_MAX = 4096;

function sweep(cache: Map<string, { until: number }>, now: number): void {
  if (cache.size <= TOKEN_CACHE_MAX) return;
  for (const [k, v] of cache) if (v.until <= now) cache.delete(k);
  for (const k of cache.keys()) {
    if (cache.size <= TOKEN_CACHE_MAX) break;
    cache.delete(k);
  }
}
