// Endpoint choice within a cluster. Policies live in a registry keyed by the TrafficPolicy name
// (ROUND_ROBIN, LEAST_REQUEST, RANDOM); each cluster holds its own instance (round-robin position).
import type { LoadBalancerPolicy } from '../../lib/model/mesh.ts';

export interface LbEndpoint {
  readonly key: string;
  /** Requests in flight to this endpoint. */
  readonly active: number;
}

export interface LoadBalancer {
  /** Chooses one of `candidates` (never empty). */
  pick<E extends LbEndpoint>(candidates: readonly E[], random: () => number): E;
}

const factories = new Map<string, () => LoadBalancer>();

export function registerLoadBalancer(policy: string, factory: () => LoadBalancer): void {
  factories.set(policy, factory);
}

export function isKnownLoadBalancer(policy: string): boolean {
  return factories.has(policy);
}

export function createLoadBalancer(policy: LoadBalancerPolicy): LoadBalancer {
  const f = factories.get(policy);
  if (!f) throw new RangeError(`load balancer policy ${policy} is not registered`);
  return f();
}

registerLoadBalancer('ROUND_ROBIN', () => {
  let next = 0;
  return {
    pick(candidates) {
      const e = candidates[next % candidates.length]!;
      next = (next + 1) % 1_000_000_007;
      return e;
    },
  };
});

registerLoadBalancer('RANDOM', () => ({
  pick(candidates, random) {
    return candidates[Math.floor(random() * candidates.length)]!;
  },
}));

// Envoy's default for LEAST_REQUEST: power of two choices, the one with fewer active requests.
registerLoadBalancer('LEAST_REQUEST', () => ({
  pick(candidates, random) {
    if (candidates.length === 1) return candidates[0]!;
    const a = candidates[Math.floor(random() * candidates.length)]!;
    let b = candidates[Math.floor(random() * candidates.length)]!;
    if (b === a) b = candidates[(candidates.indexOf(a) + 1) % candidates.length]!;
    return b.active < a.active ? b : a;
  },
}));
