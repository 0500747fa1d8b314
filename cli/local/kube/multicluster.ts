// Several kube-lab clusters on one machine, each on a network of its own, meeting only at the
// exchange (../exchange.ts), as Istio's multi-primary, multi-network set-up: cluster<i> is a
// KubeLab with prefix `<prefix>c<i>`, its own node and pod range (10.<random>), its own Service
// range (10.(95+i).0.0/16), its own API server, controllers and kubelets; its edge 192.168.77.<i>
// offers its API server (:6443) and its LoadBalancer Services (the east-west gateway's 15008).
// One root CA issues an intermediate per cluster, given to each install as Istio's `cacerts`
// Secret (plug-in CA), so identities verify across clusters.
//
// `install` does what the operator does, with the real kubectl, in every cluster: the namespace
// and the `cacerts` Secret (`kubectl create`), then `weftctl install --cluster-id cluster<i>
// --network network<i> --eastwest --ca-secret cacerts` applied unedited; `linkClusters` runs
// `weftctl create-remote-secret` (its command, in this process) against each cluster, naming its
// edge address as the others reach it, and applies the Secret in every other cluster.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CertificateAuthority } from '../../../lib/identity/index.ts';
import { renderInstall, toYaml } from '../../install/render.ts';
import { DEFAULT_NAMESPACE } from '../../install/options.ts';
import { createRemoteSecretCommand } from '../../commands/create-remote-secret.ts';
import { createExchange, destroyExchange, exchangeNetnsOf, routeBetweenEdges } from '../exchange.ts';
import { API_EDGE_PORT, KubeLab } from './kube-lab.ts';
import type { LabImage } from './kubelet.ts';
import { kubectl } from './kubectl.ts';

/** The Secret (Istio's name and layout) each cluster's controller takes its intermediate from. */
export const CA_SECRET = 'cacerts';
const CA_FILES = ['ca-cert.pem', 'ca-key.pem', 'root-cert.pem', 'cert-chain.pem'];
const INSTALL_NAMESPACE = DEFAULT_NAMESPACE;

export interface KubeMultiClusterOptions {
  /** 2-8 lowercase letters or digits; each cluster's lab is `<prefix>c<i>`. */
  prefix: string;
  stateDir: string;
  /** How many clusters; 2 to 9. */
  clusters: number;
  /** Nodes of each cluster; default ['node1']. */
  nodes?: string[];
  images?: (image: string) => LabImage | undefined;
}

/** What installing and linking a cluster takes: names, its edge and files (no live object, so another process can do it). */
export interface KubeClusterAccess {
  /** `cluster<i>`: its cluster ID. */
  name: string;
  /** `network<i>`. */
  network: string;
  /** Its address on the exchange. */
  edgeIp: string;
  /** Its lab's folder (install files are written under it). */
  dir: string;
  kubeconfig: string;
  /** The API server over TLS with the lab CA (KubeLab.tlsKubeconfigFile). */
  tlsKubeconfig: string;
  /** Its CA, an intermediate of the shared root, as Istio's cacerts files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem). */
  caDir: string;
}

export interface KubeCluster extends KubeClusterAccess {
  index: number;
  lab: KubeLab;
}

export class KubeMultiClusterError extends Error {
  readonly code = 'WEFT_KUBE_MULTICLUSTER';
  constructor(message: string) {
    super(message);
    this.name = 'KubeMultiClusterError';
  }
}

export class KubeMultiCluster {
  readonly o: KubeMultiClusterOptions;
  readonly clusters: KubeCluster[] = [];
  readonly exchangeNetns: string;

  private constructor(o: KubeMultiClusterOptions) {
    this.o = o;
    this.exchangeNetns = exchangeNetnsOf(o.prefix);
  }

  /** Every cluster's lab on its own network, the exchange, and the CAs; nothing runs yet. */
  static async create(o: KubeMultiClusterOptions): Promise<KubeMultiCluster> {
    if (!Number.isInteger(o.clusters) || o.clusters < 2 || o.clusters > 9) throw new KubeMultiClusterError(`clusters must be 2 to 9, not ${o.clusters}`);
    const mc = new KubeMultiCluster(o);
    // A range of their own (agents look pods up by address, other labs on this machine use others).
    const first = 100 + Math.floor(Math.random() * 90);
    try {
      const root = await CertificateAuthority.generateRoot({ trustDomain: 'cluster.local' });
      createExchange(mc.exchangeNetns);
      for (let i = 1; i <= o.clusters; i++) {
        const name = `cluster${i}`;
        const lab = await KubeLab.create({
          prefix: `${o.prefix}c${i}`, stateDir: join(o.stateDir, name), nodes: o.nodes ?? ['node1'], subnet: `10.${first + i - 1}`,
          serviceNet: `10.${95 + i}`, exchange: { netns: mc.exchangeNetns, index: i }, ...(o.images ? { images: o.images } : {}),
        });
        const caDir = join(lab.o.stateDir, CA_SECRET);
        const ca = await root.issueIntermediate(name);
        mkdirSync(caDir, { recursive: true });
        const pems = [ca.certPem, ca.keyPem, ca.rootPem, ca.certPem];
        CA_FILES.forEach((f, k) => writeFileSync(join(caDir, f), pems[k]!, { mode: 0o600 }));
        mc.clusters.push({
          name, network: `network${i}`, index: i, lab, edgeIp: lab.edgeIp!, dir: lab.o.stateDir, kubeconfig: lab.kubeconfigFile, tlsKubeconfig: lab.tlsKubeconfigFile, caDir,
        });
      }
      routeBetweenEdges(mc.clusters.map((c) => ({ net: c.lab.net, edgeIp: c.edgeIp })));
    } catch (e) {
      await mc.destroy();
      throw e;
    }
    return mc;
  }

  cluster(name: string): KubeCluster {
    const c = this.clusters.find((x) => x.name === name);
    if (!c) throw new KubeMultiClusterError(`no cluster ${name} (have ${this.clusters.map((x) => x.name).join(', ')})`);
    return c;
  }

  /** Starts every lab's controllers, Service network and kubelets. */
  start(): void {
    for (const c of this.clusters) c.lab.start();
  }

  kubectl(c: KubeClusterAccess, ...args: string[]): Promise<string> {
    return clusterKubectl(c, ...args);
  }

  install(o: InstallOptions): Promise<void> {
    return installClusters(this.clusters, o).then(() => undefined);
  }

  linkClusters(): Promise<void> {
    return linkClusters(this.clusters);
  }

  /** Everything every lab started, and the exchange. */
  async destroy(): Promise<void> {
    for (const c of this.clusters) await c.lab.destroy().catch(() => undefined);
    destroyExchange(this.exchangeNetns);
  }
}

/** The real kubectl against one cluster (its loopback kubeconfig); a failure names the cluster. */
export async function clusterKubectl(c: KubeClusterAccess, ...args: string[]): Promise<string> {
  try {
    return await kubectl({ kubeconfig: c.kubeconfig }, args);
  } catch (e) {
    throw new KubeMultiClusterError(`${c.name}: ${(e as Error).message}`);
  }
}

export interface InstallOptions { image: string; trustDomain?: string; logLevel?: string; debugEndpoints?: boolean }

/**
 * Installs Weft in every cluster as an operator does: the install namespace and the plug-in CA
 * Secret (`kubectl create`), then the rendered install (`--cluster-id cluster<i> --network
 * network<i> --eastwest --ca-secret cacerts`) with `kubectl apply --server-side`, unedited.
 * Returns each cluster's install file.
 */
export async function installClusters(clusters: readonly KubeClusterAccess[], o: InstallOptions): Promise<string[]> {
  return Promise.all(clusters.map(async (c) => {
    const dir = join(c.dir, 'install');
    mkdirSync(dir, { recursive: true });
    await clusterKubectl(c, 'create', 'namespace', INSTALL_NAMESPACE);
    await clusterKubectl(c, 'create', 'secret', 'generic', CA_SECRET, '-n', INSTALL_NAMESPACE, ...CA_FILES.map((f) => `--from-file=${f}=${join(c.caDir, f)}`));
    const file = join(dir, 'install.yaml');
    writeFileSync(file, toYaml(renderInstall({
      image: o.image, trustDomain: o.trustDomain ?? 'cluster.local', clusterId: c.name, network: c.network, eastwest: true, caSecret: CA_SECRET,
      ...(o.logLevel ? { logLevel: o.logLevel } : {}), ...(o.debugEndpoints ? { debugEndpoints: true } : {}), warn: () => {},
    })));
    await clusterKubectl(c, 'apply', '--server-side', '-f', file);
    return file;
  }));
}

/**
 * `weftctl create-remote-secret --name <cluster> --server https://<its edge>:6443` against each
 * cluster, applied in every other: each controller then reads the others' API servers.
 */
export async function linkClusters(clusters: readonly KubeClusterAccess[]): Promise<void> {
  await Promise.all(clusters.map(async (c) => {
    // The command itself (what `weftctl create-remote-secret` runs), in this process.
    let secret = '';
    let errors = '';
    let failed: number | undefined;
    await createRemoteSecretCommand({ out: (t) => (secret += t), err: (t) => (errors += t), exit: (code) => { throw new KubeMultiClusterError(`${c.name}: weftctl create-remote-secret exited ${code}: ${errors.trim()}`); }, setExitCode: (code) => { failed = code; } })
      .parseAsync(['--kubeconfig', c.tlsKubeconfig, '--name', c.name, '--server', `https://${c.edgeIp}:${API_EDGE_PORT}`], { from: 'user' });
    if (failed || !secret) throw new KubeMultiClusterError(`${c.name}: weftctl create-remote-secret failed (${failed ?? 'no output'}): ${errors.trim()}`);
    const file = join(c.dir, 'install', `remote-secret-${c.name}.yaml`);
    mkdirSync(join(c.dir, 'install'), { recursive: true });
    writeFileSync(file, secret, { mode: 0o600 });
    for (const other of clusters) if (other !== c) await clusterKubectl(other, 'apply', '-f', file);
  }));
}
