// Several clusters on one machine (`weftctl up --clusters N` and the multi-cluster e2e tests).
// Each cluster is a LocalMesh of its own: prefix `<prefix>c<i>`, addresses 10.(76+i).x.x, its own
// controller, nodes and agents, and a CA intermediate that one shared root issued (Istio's
// plug-in CA). The clusters' networks meet only at the exchange (exchange.ts: the namespace
// `<prefix>x-xchg`, 192.168.77.0/24, each cluster's wire joined as `ew0` = 192.168.77.<i>). On
// it each cluster runs its east-west gateway (:15008) and its controller's federation listener
// (:15014); a pod cannot reach another network but through a gateway.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { stringify } from 'yaml';
import type { ChildProcess } from 'node:child_process';
import { CertificateAuthority } from '../../lib/identity/index.ts';
import { DEFAULT_ROOT_NAMESPACE } from '../../lib/model/mesh.ts';
import { EASTWEST_SERVICE_ACCOUNT, FEDERATION_PORT } from '../../lib/model/federation.ts';
import { PORTS } from '../../lib/defaults.ts';
import { trustDomainAliasArgs } from '../../lib/main.ts';
import { LOCAL_COMPILE_CACHE, LocalMesh, REPO_ROOT } from './mesh.ts';
import { requestInNetns } from './netns-http.ts';
import { createExchange, destroyExchange, edgeAddress, exchangeNetnsOf, joinExchange, routeBetweenEdges, setEdgeLink } from './exchange.ts';

/** The gateway's entry in a cluster's tokens.yaml: a workload token (a ServiceAccount username, not a node name). */
export function gatewayTokenKey(): string {
  return `system:serviceaccount:${DEFAULT_ROOT_NAMESPACE}:${EASTWEST_SERVICE_ACCOUNT}`;
}

export interface MultiClusterOptions {
  prefix: string;
  stateDir: string;
  /** How many clusters (each on its own network); 2 to 9. */
  clusters: number;
  /** Nodes per cluster; default ['node1']. */
  nodes?: string[];
  trustDomain?: string;
  /**
   * `shared` (default): every cluster in `trustDomain`; `per-cluster`: cluster i in
   * `cluster<i>.local`, admitting the others' as aliases (`--trust-domain-alias`), so policies can
   * tell a caller's cluster by its principal.
   */
  trustDomains?: 'shared' | 'per-cluster';
  /** How long a controller keeps an unreachable remote's endpoints (`--remote-stale-after`); default 30s. */
  remoteStaleAfter?: string;
  detached?: boolean;
  logLevel?: string;
}

export interface LocalCluster {
  /** `cluster<i>`: the cluster ID (telemetry `*_cluster`) and its network `network<i>`. */
  name: string;
  network: string;
  index: number;
  mesh: LocalMesh;
  /** The cluster's address on the exchange (gateway and federation listener). */
  edgeIp: string;
  gateway?: ChildProcess;
}

export class LocalMultiCluster {
  readonly o: MultiClusterOptions;
  readonly clusters: LocalCluster[] = [];
  readonly exchangeNetns: string;

  private constructor(o: MultiClusterOptions) {
    this.o = o;
    this.exchangeNetns = exchangeNetnsOf(o.prefix);
  }

  /** Builds every cluster's network and nodes, the exchange, and the CAs; nothing runs yet. */
  static async create(o: MultiClusterOptions): Promise<LocalMultiCluster> {
    if (!Number.isInteger(o.clusters) || o.clusters < 2 || o.clusters > 9) throw new Error(`--clusters must be 2 to 9, not ${o.clusters}`);
    const mc = new LocalMultiCluster(o);
    const trustDomain = o.trustDomain ?? 'cluster.local';
    try {
      const root = await CertificateAuthority.generateRoot({ trustDomain });
      createExchange(mc.exchangeNetns);
      for (let i = 1; i <= o.clusters; i++) {
        const name = `cluster${i}`;
        const intermediate = await root.issueIntermediate(name);
        const perCluster = o.trustDomains === 'per-cluster';
        const td = perCluster ? `cluster${i}.local` : trustDomain;
        const aliases = perCluster ? Array.from({ length: o.clusters }, (_, k) => `cluster${k + 1}.local`).filter((x) => x !== td) : [];
        const mesh = await LocalMesh.create({
          prefix: `${o.prefix}c${i}`, stateDir: join(o.stateDir, name), nodes: o.nodes ?? ['node1'],
          trustDomain: td, ...(aliases.length ? { trustDomainAliases: aliases } : {}), base: `10.${76 + i}`, intermediate, clusterId: name, network: `network${i}`,
          ...(o.detached ? { detached: true } : {}), ...(o.logLevel ? { logLevel: o.logLevel } : {}),
        });
        const c: LocalCluster = { name, network: `network${i}`, index: i, mesh, edgeIp: edgeAddress(i) };
        mc.clusters.push(c);
        joinExchange(mc.exchangeNetns, mesh.net, i);
        mc.#writeGatewayToken(c);
      }
      // The gateways answer callers of other clusters (agents, and waypoints from their pod address).
      routeBetweenEdges(mc.clusters.map((c) => ({ net: c.mesh.net, edgeIp: c.edgeIp })));
    } catch (err) {
      await mc.destroy();
      throw err;
    }
    return mc;
  }

  cluster(name: string): LocalCluster {
    const c = this.clusters.find((x) => x.name === name);
    if (!c) throw new Error(`no cluster ${name} (have ${this.clusters.map((x) => x.name).join(', ')})`);
    return c;
  }

  /**
   * The east-west gateway's token for the controller's certificate service: a workload token of
   * ServiceAccount weft-system/weft-eastwest (controller/src/ca/token-review.ts), so the gateway obtains
   * exactly spiffe://<td>/ns/weft-system/sa/weft-eastwest from the cluster's CA and renews it as
   * a waypoint does.
   */
  #writeGatewayToken(c: LocalCluster): void {
    const token = randomBytes(24).toString('base64url');
    c.mesh.tokens.set(gatewayTokenKey(), token);
    writeFileSync(join(c.mesh.o.stateDir, 'tokens.yaml'), stringify(Object.fromEntries(c.mesh.tokens)), { mode: 0o600 });
    const dir = join(c.mesh.o.stateDir, 'eastwest');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'token'), token, { mode: 0o600 });
  }

  /** Each controller with its network, gateway address, federation listener and every other cluster as a remote. */
  startControllers(): void {
    for (const c of this.clusters) {
      c.mesh.controllerArgs = [
        '--federation-listen', `${c.edgeIp}:${FEDERATION_PORT}`,
        '--network-gateway', `${c.edgeIp}:15008`,
        '--remote-stale-after', this.o.remoteStaleAfter ?? '30s',
        ...this.clusters.filter((o) => o !== c).flatMap((o) => ['--remote-cluster', `${o.name}=https://${o.edgeIp}:${FEDERATION_PORT}`]),
      ];
      c.mesh.startController();
    }
  }

  /** Each cluster's east-west gateway, in its wire namespace, on the exchange. */
  startGateways(): void {
    for (const c of this.clusters) {
      const dir = join(c.mesh.o.stateDir, 'eastwest');
      c.gateway = c.mesh.net.spawn({ netns: c.mesh.net.wireNetns, cgroup: join(c.mesh.net.cgroupDir, 'system') }, process.execPath, [
        join(REPO_ROOT, 'eastwest/src/main.ts'),
        '--listen', c.edgeIp,
        '--ca-address', `${c.mesh.controllerIp}:${PORTS.xds}`, '--token-file', join(dir, 'token'), '--trust-bundle', c.mesh.caFile,
        '--controller', `https://${c.edgeIp}:${FEDERATION_PORT}`,
        '--trust-domain', c.mesh.trustDomain,
        ...trustDomainAliasArgs(c.mesh.o.trustDomainAliases),
        '--log-level', this.o.logLevel ?? 'info',
      ], { logFile: join(c.mesh.logDir, 'eastwest.log'), detached: this.o.detached ?? false, env: { ...process.env, NODE_COMPILE_CACHE: LOCAL_COMPILE_CACHE } });
      if (this.o.detached) c.gateway.unref();
    }
  }

  /** Waits until every gateway knows its cluster's endpoints (readiness on :15021). */
  async waitGatewaysReady(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const c of this.clusters) {
      for (;;) {
        if (c.gateway && (c.gateway.exitCode !== null || c.gateway.signalCode !== null)) throw new Error(`the ${c.name} gateway exited:\n${c.mesh.logTail('eastwest.log')}`);
        const r = await requestInNetns(`/var/run/netns/${c.mesh.net.wireNetns}`, `http://${c.edgeIp}:15021/healthz/ready`, { timeoutMs: 2_000 }).catch(() => undefined);
        if (r?.status === 200) break;
        if (Date.now() > deadline) throw new Error(`the ${c.name} gateway is not ready after ${timeoutMs} ms:\n${c.mesh.logTail('eastwest.log')}`);
        await new Promise((res) => setTimeout(res, 200));
      }
    }
  }

  /** GET on a gateway's metrics (inside its wire namespace). */
  async gatewayMetrics(name: string): Promise<string> {
    const c = this.cluster(name);
    return (await requestInNetns(`/var/run/netns/${c.mesh.net.wireNetns}`, `http://${c.edgeIp}:15020/metrics`)).body;
  }

  /** Cuts (or restores) a cluster's link to the exchange: its network is alone until restored. */
  setLink(name: string, up: boolean): void {
    setEdgeLink(this.cluster(name).mesh.net, up);
  }

  async destroy(): Promise<void> {
    for (const c of this.clusters) await c.mesh.destroy();
    destroyExchange(this.exchangeNetns);
  }
}
