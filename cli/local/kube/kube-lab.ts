// The kube lab: a cluster-shaped stand-in on one machine, for the parts of Kubernetes Weft depends
// on (no real cluster can run here). It is made of
//   - the API server stand-in (fake-apiserver.ts), served to pods over TLS as the `kubernetes`
//     Service in `default` (KUBERNETES_SERVICE_HOST, a lab CA in each pod's ca.crt), and to the
//     test and kubectl on loopback;
//   - nodes: the local mesh's network (cli/local/network.ts), one network namespace per node with a
//     Node object each, and a lab kubelet per node (kubelet.ts);
//   - the controllers and the scheduler (kube-controllers.ts);
//   - the Service network: THIS IS NOT kube-proxy OR CoreDNS. Every Service's cluster IP is an
//     address of the wire namespace (nodes route 10.96.0.0/16 there), where this process listens (a
//     socket made inside that netns) and relays each connection to a ready endpoint from the
//     Service's EndpointSlices (kube-proxy's old userspace mode: the endpoint sees the wire's
//     address as the client); a hosts file mounted as every container's /etc/hosts names each
//     Service `<svc>.<ns>.svc[.cluster.local]`;
//   - the API server's pod proxy reaches pods from the wire namespace too, as a control plane
//     reaches pod IPs over the cluster network (`weftctl --kubeconfig` reads components that way);
//   - multi-cluster (`exchange`): the lab's wire joins an exchange (../exchange.ts) where other
//     labs' networks meet it, and offers there, on its edge address, what a cloud makes reachable
//     from outside a cluster: the API server (TLS, :6443, a certificate of the lab CA valid for
//     that address; `tlsKubeconfigFile` names it as an admin's kubeconfig would, through a TLS
//     front on loopback) and every LoadBalancer Service: the lab writes the edge address into its
//     status.loadBalancer.ingress and relays each of its ports there to a ready endpoint, as the
//     cluster IP relays do (THIS IS NOT A CLOUD LOAD BALANCER: one address per lab, so a second
//     LoadBalancer Service asking for a port already offered gets no address, as a cloud without
//     quota leaves one pending).
// Used by test/k8s/* and `weftctl up --kube`.
import { mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { FakeApiServer, type ProxyTarget } from './fake-apiserver.ts';
import { LabControllers } from './kube-controllers.ts';
import { LabKubelet, labImages, type LabImage } from './kubelet.ts';
import { LocalNetwork } from '../network.ts';
import { CertificateAuthority } from '../../../lib/identity/index.ts';
import { createSocketInNetns } from '../../../agent/libbpf/index.ts';
import { run } from '../../../lib/sys/exec.ts';
import { edgeAddress, joinExchange } from '../exchange.ts';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';

export interface KubeLabOptions {
  /** Names every netns, cgroup and pin of this lab (test/lab's `wt????` in tests). */
  prefix: string;
  stateDir: string;
  nodes: string[];
  /** First two octets of the lab's node and pod addresses; default a random 10.100-10.199. */
  subnet?: string;
  /** More images than labImages() knows. */
  images?: (image: string) => LabImage | undefined;
  /** First two octets of the cluster IP range (a /16); default 10.96. */
  serviceNet?: string;
  /** Multi-cluster: join this exchange (its namespace, made by exchange.ts) as network `index`. */
  exchange?: { netns: string; index: number };
}

interface Listener { server: net.Server; key: string }

/** Where the lab API server allocates cluster IPs by default (fake-apiserver.ts). */
const SERVICE_NET = '10.96';
/** The `kubernetes` Service's port, as in every cluster. */
const API_SERVICE_PORT = 443;
/** The API server's port on the lab's edge (kube-apiserver's default secure port). */
export const API_EDGE_PORT = 6443;

export class KubeLab {
  readonly o: KubeLabOptions;
  readonly api: FakeApiServer;
  readonly net: LocalNetwork;
  readonly controllers: LabControllers;
  readonly kubelets = new Map<string, LabKubelet>();
  readonly hostsFile: string;
  readonly kubeconfigFile: string;
  /** Multi-cluster: the lab's address on the exchange (API server, LoadBalancer Services). */
  readonly edgeIp: string | undefined;
  /** Multi-cluster: a kubeconfig naming the API server over TLS with the lab CA (see above). */
  readonly tlsKubeconfigFile: string;
  #apiCert: { certPem: string; keyPem: string; caPem: string } | undefined;
  readonly #listeners = new Map<string, Listener>();
  readonly #addresses = new Set<string>();
  readonly #rr = new Map<string, number>();
  /** The API server's TLS listeners on the edge and on loopback (multi-cluster). */
  readonly #apiFronts: net.Server[] = [];
  #timer: NodeJS.Timeout | undefined;

  private constructor(o: KubeLabOptions, api: FakeApiServer, net: LocalNetwork) {
    this.o = o;
    this.api = api;
    this.net = net;
    this.controllers = new LabControllers(api);
    this.hostsFile = join(o.stateDir, 'hosts');
    this.kubeconfigFile = join(o.stateDir, 'kubeconfig');
    this.tlsKubeconfigFile = join(o.stateDir, 'kubeconfig-tls');
    this.edgeIp = o.exchange ? edgeAddress(o.exchange.index) : undefined;
  }

  /** The cluster IP range (a /16). */
  get serviceCidr(): string {
    return `${this.o.serviceNet ?? SERVICE_NET}.0.0/16`;
  }

  static async create(o: KubeLabOptions): Promise<KubeLab> {
    mkdirSync(o.stateDir, { recursive: true });
    const api = new FakeApiServer({ crdsFromApi: true, ...(o.serviceNet ? { serviceNet: o.serviceNet } : {}) });
    await api.start();
    // A range of its own: agents look pods up by address, and other meshes on this machine use 10.77.
    const net = LocalNetwork.create(o.prefix, { base: o.subnet ?? `10.${100 + Math.floor(Math.random() * 100)}` });
    const lab = new KubeLab(o, api, net);
    api.podProxyTarget = (namespace, name, port) => lab.#podProxyTarget(namespace, name, port);
    try {
      writeFileSync(lab.kubeconfigFile, api.kubeconfig());
      api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'default' } });
      api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kube-system' } });
      const svc = api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'kubernetes', namespace: 'default' }, spec: { ports: [{ name: 'https', port: API_SERVICE_PORT, targetPort: 6443 }] } });
      const apiIp = (svc['spec'] as { clusterIP: string }).clusterIP;
      const ca = await CertificateAuthority.generateRoot({ trustDomain: 'kube-lab.local' });
      const serving = await ca.issueServingCertificate({
        dnsNames: ['kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local'],
        ipAddresses: [apiIp, ...(lab.edgeIp ? [lab.edgeIp, '127.0.0.1'] : [])],
      });
      lab.#apiCert = { certPem: serving.certChain.join(''), keyPem: serving.keyPem, caPem: ca.trustBundle().join('') };
      writeFileSync(lab.hostsFile, '127.0.0.1 localhost\n');
      const images = labImages(o.stateDir);
      for (const name of o.nodes) {
        const node = net.addNode(name);
        // Cluster IPs live on the wire, where the Service relays listen (not on the nodes, whose
        // ports belong to hostNetwork pods).
        run('ip', ['-n', node.netns, 'route', 'add', lab.serviceCidr, 'via', `${net.base}.0.254`]);
        api.apply({
          apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux' } },
          status: { addresses: [{ type: 'InternalIP', address: node.ip }, { type: 'Hostname', address: name }], conditions: [{ type: 'Ready', status: 'True' }] },
        });
        const kubelet = new LabKubelet({
          api, net, node: name, stateDir: join(o.stateDir, 'nodes', name), hostsFile: lab.hostsFile,
          images: (i) => o.images?.(i) ?? images(i), apiServer: { host: apiIp, port: API_SERVICE_PORT, caPem: lab.#apiCert.caPem }, maxGraceMs: 25_000,
        });
        lab.kubelets.set(name, kubelet);
      }
      if (o.exchange) await lab.#joinExchange(o.exchange);
    } catch (e) {
      for (const s of lab.#apiFronts) s.close();
      await api.stop();
      await net.destroy();
      throw e;
    }
    return lab;
  }

  /** Joins the exchange; the API server on the edge (TLS) and on loopback (TLS, for the admin's kubeconfig). */
  async #joinExchange(x: { netns: string; index: number }): Promise<void> {
    joinExchange(x.netns, this.net, x.index);
    this.#addresses.add(`${this.net.wireNetns}/${this.edgeIp}`);
    const front = () => {
      const s = tls.createServer({ cert: this.#apiCert!.certPem, key: this.#apiCert!.keyPem }, (c) => this.#relayToApi(c));
      s.on('error', () => undefined);
      this.#apiFronts.push(s);
      return s;
    };
    front().listen({ fd: createSocketInNetns(`/var/run/netns/${this.net.wireNetns}`, { listen: { host: this.edgeIp!, port: API_EDGE_PORT } }) });
    const local = front();
    await new Promise<void>((resolve) => local.listen(0, '127.0.0.1', resolve));
    const kc = parseYaml(this.api.kubeconfig()) as { clusters: Array<{ cluster: Record<string, unknown> }> };
    kc.clusters[0]!.cluster = { server: `https://127.0.0.1:${(local.address() as net.AddressInfo).port}`, 'certificate-authority-data': Buffer.from(this.#apiCert!.caPem).toString('base64') };
    writeFileSync(this.tlsKubeconfigFile, stringifyYaml(kc));
  }

  /** The API server's pod proxy: the pod's IP, connected to from the wire namespace. */
  #podProxyTarget(namespace: string, name: string, port: number): ProxyTarget | undefined {
    const ip = (this.api.get('Pod', namespace, name)?.['status'] as { podIP?: string } | undefined)?.podIP;
    if (!ip) return undefined;
    const wire = `/var/run/netns/${this.net.wireNetns}`;
    return { host: ip, port, connect: () => new net.Socket({ fd: createSocketInNetns(wire) }).connect(port, ip) };
  }

  /** Starts the controllers, the Service network and every kubelet. */
  start(): void {
    this.controllers.start();
    const tick = () => {
      try {
        this.#syncServices();
      } catch {
        /* next pass */
      }
      this.#timer = setTimeout(tick, 200);
    };
    tick();
    for (const k of this.kubelets.values()) k.start();
  }

  /** The lab's DNS and Service network: a hosts file and a relay per (node, cluster IP, port). */
  #syncServices(): void {
    const want = new Map<string, { netnsPath: string; netns: string; ip: string; port: number; ns: string; svc: string; portName?: string; targetPort?: number | string }>();
    const hosts = ['127.0.0.1 localhost'];
    /** Edge ports already offered, by the `namespace/name` of the LoadBalancer Service offering them. */
    const edgePorts = new Map<number, string>([[API_EDGE_PORT, 'the API server']]);
    for (const s of this.api.list('Service')) {
      const spec = s['spec'] as { type?: string; clusterIP?: string; ports?: Array<{ name?: string; port: number; targetPort?: number | string }> };
      if (!spec.clusterIP || spec.clusterIP === 'None') continue;
      const { name, namespace } = s.metadata;
      hosts.push(`${spec.clusterIP} ${name}.${namespace}.svc.cluster.local ${name}.${namespace}.svc`);
      const wire = this.net.wireNetns;
      const relay = (ip: string, p: { name?: string; port: number; targetPort?: number | string }) => want.set(`${wire}/${ip}:${p.port}`, {
        netnsPath: `/var/run/netns/${wire}`, netns: wire, ip, port: p.port, ns: namespace!, svc: name, ...(p.name ? { portName: p.name } : {}), ...(p.targetPort !== undefined ? { targetPort: p.targetPort } : {}),
      });
      for (const p of spec.ports ?? []) relay(spec.clusterIP, p);
      if (spec.type === 'LoadBalancer' && this.edgeIp) {
        const ports = spec.ports ?? [];
        const id = `${namespace}/${name}`;
        if (ports.some((p) => (edgePorts.get(p.port) ?? id) !== id)) continue;
        for (const p of ports) {
          edgePorts.set(p.port, id);
          relay(this.edgeIp, p);
        }
        this.#offerOnEdge(s);
      }
    }
    writeFileSync(this.hostsFile, `${hosts.join('\n')}\n`);
    for (const [key, l] of this.#listeners) {
      if (!want.has(key)) {
        l.server.close();
        this.#listeners.delete(key);
      }
    }
    for (const [key, w] of want) {
      if (this.#listeners.has(key)) continue;
      const addrKey = `${w.netns}/${w.ip}`;
      if (!this.#addresses.has(addrKey)) {
        run('ip', ['-n', w.netns, 'addr', 'add', `${w.ip}/32`, 'dev', 'lo']);
        this.#addresses.add(addrKey);
      }
      const fd = createSocketInNetns(w.netnsPath, { listen: { host: w.ip, port: w.port } });
      const isApi = w.ns === 'default' && w.svc === 'kubernetes';
      const server = isApi
        ? tls.createServer({ cert: this.#apiCert!.certPem, key: this.#apiCert!.keyPem }, (c) => this.#relayToApi(c))
        : net.createServer((c) => this.#relay(c, w));
      server.on('error', () => undefined);
      server.listen({ fd });
      this.#listeners.set(key, { server, key });
    }
  }

  /** A LoadBalancer Service's address, as a cloud's controller writes it: the lab's edge. */
  #offerOnEdge(s: ReturnType<FakeApiServer['list']>[number]): void {
    const status = (s['status'] ?? {}) as { loadBalancer?: { ingress?: Array<{ ip?: string }> } };
    const ingress = status.loadBalancer?.ingress ?? [];
    if (ingress.length === 1 && ingress[0]!.ip === this.edgeIp) return;
    this.api.apply({ ...s, status: { ...status, loadBalancer: { ingress: [{ ip: this.edgeIp }] } } });
  }

  #relayToApi(c: net.Socket): void {
    const up = net.connect(this.api.port, '127.0.0.1');
    c.pipe(up).pipe(c);
    up.on('error', () => c.destroy());
    c.on('error', () => up.destroy());
  }

  #relay(c: net.Socket, w: { netnsPath: string; ns: string; svc: string; port: number; portName?: string; targetPort?: number | string }): void {
    const slices = this.api.list('EndpointSlice').filter((e) => e.metadata.namespace === w.ns && e.metadata.labels?.['kubernetes.io/service-name'] === w.svc);
    const candidates: Array<{ ip: string; port: number }> = [];
    for (const sl of slices) {
      const ports = (sl['ports'] ?? []) as Array<{ name?: string; port: number }>;
      const port = ports.find((p) => (p.name ?? '') === (w.portName ?? ''))?.port ?? (typeof w.targetPort === 'number' ? w.targetPort : w.port);
      for (const ep of (sl['endpoints'] ?? []) as Array<{ addresses: string[]; conditions?: { ready?: boolean } }>) {
        if (ep.conditions?.ready === false) continue;
        candidates.push({ ip: ep.addresses[0]!, port });
      }
    }
    if (candidates.length === 0) {
      c.destroy();
      return;
    }
    const key = `${w.ns}/${w.svc}:${w.port}`;
    const i = (this.#rr.get(key) ?? 0) % candidates.length;
    this.#rr.set(key, i + 1);
    const target = candidates[i]!;
    let up: net.Socket;
    try {
      up = new net.Socket({ fd: createSocketInNetns(w.netnsPath) });
    } catch {
      c.destroy();
      return;
    }
    up.connect(target.port, target.ip);
    c.pipe(up).pipe(c);
    up.on('error', () => c.destroy());
    c.on('error', () => up.destroy());
  }

  kubelet(node: string): LabKubelet {
    const k = this.kubelets.get(node);
    if (!k) throw new Error(`no lab node ${node}`);
    return k;
  }

  /** The node and running pod of a Pod object, by namespace/name. */
  running(namespace: string, name: string): { kubelet: LabKubelet; pod: NonNullable<ReturnType<LabKubelet['pod']>> } | undefined {
    for (const k of this.kubelets.values()) {
      const pod = k.pod(namespace, name);
      if (pod) return { kubelet: k, pod };
    }
    return undefined;
  }

  /** Everything the lab started, removed: processes, namespaces, cgroups, pins, the API server. */
  async destroy(): Promise<void> {
    clearTimeout(this.#timer);
    this.controllers.stop();
    await Promise.all([...this.kubelets.values()].map((k) => k.stop().catch(() => undefined)));
    for (const l of this.#listeners.values()) l.server.close();
    for (const s of this.#apiFronts) s.close();
    await this.api.stop();
    await this.net.destroy();
    rmSync(this.o.stateDir, { recursive: true, force: true });
  }
}
