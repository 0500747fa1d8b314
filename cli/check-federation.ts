// `weftctl check` for a multi-cluster mesh: this cluster's east-west gateway, and for each remote
// cluster whether its export is being read (discovery) and whether the gateway into its network
// answers. Facts come from the controller's /debug/federation (controller/src/federation.ts
// status()) and probes of the gateways, gathered by cli/local/health.ts; the judgement is here.
import type { CheckResult } from './check.ts';
import type { RemoteStatus } from '../lib/model/federation.ts';
import { DEFAULT_FEDERATION_POLL_MS } from '../controller/src/federation.ts';

/**
 * A remote export read longer ago than this is not fresh: the controller polls every
 * DEFAULT_FEDERATION_POLL_MS, so five missed polls mean the remote stopped answering (its
 * endpoints are still used until the stale bound, then dropped).
 */
export const FEDERATION_FRESH_MS = 5 * DEFAULT_FEDERATION_POLL_MS;

/** What a gateway probe found: the HBONE port accepts TCP, the readiness port says it knows its cluster's endpoints. */
export interface GatewayProbe {
  reachable: boolean;
  /** Readiness 200: it has its cluster's endpoints, so it admits tunnels to them. */
  ready: boolean;
  detail: string;
}

export interface FederationFacts {
  now: number;
  cluster: string;
  network: string;
  /** This cluster's own east-west gateway; absent when the controller names none. */
  gateway?: { address: string; port: number; probe: GatewayProbe };
  remotes: Array<RemoteStatus & { gatewayProbe?: GatewayProbe }>;
  logDir: string;
}

/** One result for the own gateway, then per remote: discovery, and its network's gateway when on another network. */
export function checkFederation(f: FederationFacts): CheckResult[] {
  const out: CheckResult[] = [];
  const log = (file: string) => `${f.logDir}/${file}`;
  const others = f.remotes.filter((r) => r.network !== undefined && r.network !== f.network);
  if (f.gateway) {
    const g = f.gateway;
    const base = { id: 'mesh.eastwest', title: `east-west gateway ${g.address}:${g.port}` };
    if (g.probe.reachable && g.probe.ready) out.push({ ...base, status: 'pass', detail: `admits callers of other networks (${g.probe.detail})` });
    else out.push({ ...base, status: 'fail', detail: g.probe.detail, remedy: `other networks cannot reach this cluster's endpoints: see ${log('eastwest.log')}; the gateway is ready once it has read this cluster's export from the controller` });
  } else if (others.length > 0) {
    out.push({ id: 'mesh.eastwest', title: 'east-west gateway', status: 'warn', detail: `no gateway for network ${f.network}, but ${others.map((r) => r.cluster).join(', ')} ${others.length === 1 ? 'is' : 'are'} on other networks: they cannot reach this cluster's endpoints`, remedy: 'start the controller with --network-gateway <ip>:15008 and run an east-west gateway there' });
  }
  for (const r of f.remotes) {
    const base = { id: `mesh.remote.${r.cluster}`, title: `remote cluster ${r.cluster}` };
    const age = f.now - Date.parse(r.lastOk);
    const ago = Number.isFinite(age) ? `${Math.max(0, Math.round(age / 1000))} s ago` : 'never';
    if (!r.up) {
      out.push({ ...base, status: 'fail', detail: `export not read since ${r.lastOk}${r.lastError ? `: ${r.lastError}` : ''}; none of its endpoints are used`, remedy: `check that ${r.url} answers from this controller (network route, its --federation-listen, both identities under one root); ${log('controller.log')}` });
    } else if (!(age <= FEDERATION_FRESH_MS)) {
      out.push({ ...base, status: 'warn', detail: `export last read ${ago}${r.lastError ? ` (${r.lastError})` : ''}: its ${r.endpoints} endpoints are kept until the stale bound, then dropped`, remedy: `check that ${r.url} answers from this controller; ${log('controller.log')}` });
    } else {
      out.push({ ...base, status: 'pass', detail: `export read ${ago}: ${r.endpoints} endpoint${r.endpoints === 1 ? '' : 's'}${r.network ? ` on ${r.network}` : ''}` });
    }
    if (r.up && r.quota) {
      out.push({ id: `mesh.remote-quota.${r.cluster}`, title: `import quota of ${r.cluster}`, status: 'warn', detail: r.quota.message, remedy: `if ${r.cluster} is meant to export that much, raise this controller's --remote-max-services / --remote-max-endpoints (weftctl install --remote-max-services / --remote-max-endpoints); else find why it exports ${r.quota.refused} Services more than fit` });
    }
    if (r.network === undefined || r.network === f.network) continue;
    const gw = { id: `mesh.remote-gateway.${r.cluster}`, title: `gateway into ${r.network} (${r.cluster})` };
    if (!r.gateway) {
      out.push({ ...gw, status: 'fail', detail: `${r.cluster} names no gateway: its endpoints cannot be reached from ${f.network}`, remedy: `start ${r.cluster}'s controller with --network-gateway <ip>:15008 and its east-west gateway` });
    } else if (!r.gatewayProbe) {
      out.push({ ...gw, status: 'warn', detail: `${r.gateway.address}:${r.gateway.port} not probed`, remedy: 'run `weftctl check` where the mesh runs' });
    } else if (r.gatewayProbe.reachable && r.gatewayProbe.ready) {
      out.push({ ...gw, status: 'pass', detail: `${r.gateway.address}:${r.gateway.port} reachable and admitting (${r.gatewayProbe.detail})` });
    } else {
      out.push({ ...gw, status: 'fail', detail: `${r.gateway.address}:${r.gateway.port}: ${r.gatewayProbe.detail}`, remedy: `calls to ${r.cluster}'s endpoints fail: check the route from this network's edge to ${r.gateway.address} and ${r.cluster}'s gateway log` });
    }
  }
  return out;
}
