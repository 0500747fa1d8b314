// Who is asking the certificate service for a certificate: node authenticators.
//
// A NodeAuthenticator turns a bearer token into a node name, or refuses it.
//   - StaticTokenAuthenticator (local mode): one bootstrap token per node name.
//   - TokenReviewAuthenticator (Kubernetes mode, token-review.ts, a module of its own so that
//     only a controller started with --kube loads @kubernetes/client-node).
// After bootstrap an agent authenticates with mTLS and its node certificate instead; that path
// is handled by the service itself (see service.ts), not by an authenticator.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';

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

/** A token's SHA-256 (tokens are compared and cached by digest, never kept as they are). */
export const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
/** A ServiceAccount's username: system:serviceaccount:<namespace>:<name>. */
export const SA_USER = /^system:serviceaccount:([a-z0-9][-a-z0-9]*):([a-z0-9][-a-z0-9.]*)$/;

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
