// Multi-cluster discovery: what one cluster's controller tells the others (and its own east-west
// gateway) about itself. The export is the cluster's own Services with their own endpoints, its
// network and the gateway into that network. Importers merge it by namespace sameness: Service
// `echo` in namespace `demo` is one service whose endpoints span every cluster that has it.
import { isIP } from 'node:net';
import type { Endpoint, NetworkGateway, Service } from './mesh.ts';

/** HTTPS (mutual TLS, the controllers' and gateways' identities) path of the export. */
export const FEDERATION_PATH = '/federation/v1/export';
/** Default port of the controller's federation listener. */
export const FEDERATION_PORT = 15014;
/** The east-west gateway's service account (its identity: spiffe://<td>/ns/<root ns>/sa/<this>). */
export const EASTWEST_SERVICE_ACCOUNT = 'weft-eastwest';
/** Name of the gateway's HBONE port on its Service (Istio's east-west gateway names 15008 so). */
export const EASTWEST_PORT_NAME = 'tls-hbone';
/** Label of a cluster's root namespace and gateway Service naming its network (Istio's). */
export const LABEL_NETWORK = 'topology.istio.io/network';
/** Label of a remote-cluster kubeconfig Secret (Istio: `istio/multiCluster: "true"`). */
export const LABEL_MULTICLUSTER = 'weft.dev/multicluster';
/** Annotation naming the cluster a remote Secret is for (Istio: `networking.istio.io/cluster`); informative, its data keys decide. */
export const ANNOTATION_CLUSTER = 'weft.dev/cluster';
/** Annotation of a remote Secret: the remote cluster's trust domain when it is not this one's (per-cluster trust domains). */
export const ANNOTATION_TRUST_DOMAIN = 'weft.dev/trust-domain';

export interface ClusterExport {
  cluster: string;
  network: string;
  /** The door into `network` from other networks; absent: reachable only from the same network. */
  gateway?: NetworkGateway;
  /** Own services with own endpoints only (never what this cluster imported). */
  services: Service[];
}

/** One remote cluster as a controller's `/debug/federation` reports it (read by `weftctl check`). */
export interface RemoteStatus {
  cluster: string;
  url: string;
  /** Its export was read within the stale bound (its endpoints are imported). */
  up: boolean;
  endpoints: number;
  /** Last successful read (the start time until the first). */
  lastOk: string;
  lastError?: string;
  network?: string;
  gateway?: NetworkGateway;
}

export class FederationExportError extends Error {
  readonly code = 'WEFT_FEDERATION_EXPORT';
  constructor(field: string, detail: string) {
    super(`federation export: ${field}: ${detail}`);
    this.name = 'FederationExportError';
  }
}

/**
 * Checks an export read from another cluster before anything of it is used: every field an agent
 * or a gateway would act on must be there and well formed, named by its path when it is not.
 */
export function parseClusterExport(v: unknown): ClusterExport {
  const obj = (x: unknown, path: string): Record<string, unknown> => {
    if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new FederationExportError(path, 'must be an object');
    return x as Record<string, unknown>;
  };
  const str = (x: unknown, path: string): string => {
    if (typeof x !== 'string' || x === '' || x.length > 253) throw new FederationExportError(path, 'must be a non-empty string');
    return x;
  };
  const ip = (x: unknown, path: string): string => {
    const s = str(x, path);
    if (!isIP(s)) throw new FederationExportError(path, `${JSON.stringify(s)} is not an IP address`);
    return s;
  };
  const port = (x: unknown, path: string): number => {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 1 || x > 65535) throw new FederationExportError(path, `${JSON.stringify(x)} is not a port`);
    return x;
  };
  const root = obj(v, '$');
  const cluster = str(root.cluster, 'cluster');
  const network = str(root.network, 'network');
  let gateway: NetworkGateway | undefined;
  if (root.gateway !== undefined) {
    const g = obj(root.gateway, 'gateway');
    gateway = { network: str(g.network, 'gateway.network'), address: ip(g.address, 'gateway.address'), port: port(g.port, 'gateway.port'), spiffeId: str(g.spiffeId, 'gateway.spiffeId') };
  }
  if (!Array.isArray(root.services)) throw new FederationExportError('services', 'must be a list');
  const services = root.services.map((sv, i): Service => {
    const p = `services[${i}]`;
    const s = obj(sv, p);
    const name = str(s.name, `${p}.name`);
    const namespace = str(s.namespace, `${p}.namespace`);
    if (!Array.isArray(s.ports)) throw new FederationExportError(`${p}.ports`, 'must be a list');
    if (!Array.isArray(s.endpoints)) throw new FederationExportError(`${p}.endpoints`, 'must be a list');
    const endpoints = s.endpoints.map((ev, j): Endpoint => {
      const ep = `${p}.endpoints[${j}]`;
      const e = obj(ev, ep);
      ip(e.ip, `${ep}.ip`);
      if (e.nodeIp !== undefined) ip(e.nodeIp, `${ep}.nodeIp`);
      if (typeof e.ready !== 'boolean' || typeof e.enrolled !== 'boolean') throw new FederationExportError(`${ep}`, 'ready and enrolled must be booleans');
      if (e.enrolled) str(e.spiffeId, `${ep}.spiffeId`);
      obj(e.ports, `${ep}.ports`);
      return e as unknown as Endpoint;
    });
    (s.ports as unknown[]).forEach((pv, j) => port(obj(pv, `${p}.ports[${j}]`).port, `${p}.ports[${j}].port`));
    return { ...(s as unknown as Service), name, namespace, endpoints };
  });
  return { cluster, network, ...(gateway ? { gateway } : {}), services };
}

/**
 * The local services with every other cluster's endpoints of the same namespace/name added
 * (namespace sameness). Endpoints on another network are reached through that network's gateway;
 * another network without a gateway cannot be reached and its endpoints are left out. Services
 * that exist only in another cluster are not imported: callers address a Service by the VIP their
 * own cluster gives it. Returns new Service objects; the inputs are not changed.
 */
export function mergeRemoteServices(local: Iterable<Service>, own: { network: string }, remotes: readonly ClusterExport[]): Map<string, Service> {
  const out = new Map<string, Service>();
  for (const s of local) out.set(`${s.namespace}/${s.name}`, s);
  for (const r of remotes) {
    const sameNetwork = r.network === own.network;
    if (!sameNetwork && !r.gateway) continue;
    for (const rs of r.services) {
      const key = `${rs.namespace}/${rs.name}`;
      const mine = out.get(key);
      if (!mine) continue;
      const imported = rs.endpoints.map((e): Endpoint => ({
        ...e,
        cluster: r.cluster,
        network: r.network,
        ...(sameNetwork ? {} : { gateway: r.gateway! }),
      }));
      out.set(key, { ...mine, endpoints: [...mine.endpoints, ...imported] });
    }
  }
  return out;
}
