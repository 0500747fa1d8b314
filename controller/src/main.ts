// weft controller: reads a config directory (--config-dir) or Kubernetes (--kube), compiles the
// mesh model, serves it on the config stream next to the certificate service (gRPC over TLS,
// :15012), reconciles waypoints, writes status, exposes /metrics (:15020) and /healthz/ready
// (:15021) and a loopback admin port (:15000). `runController` is the embeddable entry point (the local mesh runner passes its
// waypoint launcher); running this file parses the command line.
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { statusListenerLimits } from '../../lib/listener-limits.ts';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { countFlag, oneOfFlag, runMain, trustDomainFlags, UsageError } from '../../lib/main.ts';
import { isIP } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { KubeConfig } from '@kubernetes/client-node';
import { Counter, Gauge, Registry } from 'prom-client';
import { registerProcessMetrics } from '../../lib/telemetry/process.ts';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import type { CompileOptions } from './compile.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, ESCAPED_SLASHES_ACTIONS, MAX_TRUSTED_PROXIES, PATH_NORMALIZATIONS, spiffeIdOf, type MeshHttpSettings } from '../../lib/model/mesh.ts';
import { listenHttp, metricsHandler, readinessServer } from '../../lib/status-http.ts';
import { PORTS, agentServiceAccountUser, controllerAddress, controllerSpiffeId, CONTROLLER_NAME, CONTROLLER_DEBUG_CLIENTS_PATH, CONTROLLER_DEBUG_GRANT_PATH } from '../../lib/defaults.ts';
import { admitDebugRequest, DEBUG_TOKEN_SECRET, type DebugTokenAccess } from '../../lib/debug-http.ts';
import { DEBUG_GRANT_HEADER, debugGrantAudience } from '../../lib/identity/debug-grant.ts';
import { DNS1123_LABEL, DNS1123_SUBDOMAIN } from '../../lib/model/validate.ts';
import type { EventRecorder } from './cluster/events.ts';
import type { LeaseElector } from './cluster/leader.ts';
import type { TrustBundlePublisher } from './cluster/trust-bundle.ts';
import {
  addCertificateService,
  type CertificateService,
  createControllerCredentials,
  StaticTokenAuthenticator,
  type ControllerCredentials,
  type NodeAuthenticator,
  type PodDirectory,
} from './ca/index.ts';
import { Controller } from './controller.ts';
import { Federation, type RemoteCluster } from './federation.ts';
import { DEFAULT_IMPORT_QUOTA, EASTWEST_SERVICE_ACCOUNT, type ImportQuota } from '../../lib/model/federation.ts';
import { DEFAULT_CLUSTER_ID } from '../../lib/model/workload-meta.ts';
import { parseDuration } from '../../lib/model/duration.ts';
import { isLogLevel, jsonLogger, type Logger, type LogLevel } from './log.ts';
import { withMemoryRelease } from '../../lib/sys/memory.ts';
import { ConfigDirSource } from './sources/files.ts';
import type { ConfigSource } from './sources/source.ts';
import { LocalWaypointDriver, type LocalWaypointLauncher } from './waypoints.ts';
import { isOwnWaypointIdentity, type WaypointAllowList } from './waypoint-admission.ts';
import { ConfigServer, addConfigStreamService } from './xds/server.ts';
import { spiffeStreamAuthorizer } from './xds/authz.ts';

export const DEFAULT_GRPC_PORT = PORTS.xds;
export const DEFAULT_METRICS_PORT = PORTS.metrics;
export const DEFAULT_READY_PORT = PORTS.readiness;
export const DEFAULT_ADMIN_PORT = PORTS.admin;

export { UsageError };

export interface ControllerMainOptions {
  /** Exactly one of configDir and kube. */
  configDir?: string;
  kube?: boolean;
  /** Path of a kubeconfig; default in-cluster, then $KUBECONFIG / ~/.kube/config. */
  kubeconfig?: string;
  /** Address the gRPC, metrics and health listeners bind; default 0.0.0.0. */
  listenAddress?: string;
  /** Defaults 15012 / 15020 / 15021; 0 picks a free port. */
  grpcPort?: number;
  metricsPort?: number;
  readyPort?: number;
  /** Admin (loopback only): /debug/model, /debug/status, /debug/clients, /debug/waypoint-grant; default 15000. */
  adminPort?: number;
  /**
   * Serve /debug/clients also on the metrics port (weftctl proxy-status on a cluster), and with a
   * debug token /debug/waypoint-grant (weftctl's reads of waypoints). Default false.
   */
  debugEndpoints?: boolean;
  /**
   * With debugEndpoints: the token those paths want (DEBUG_TOKEN_HEADER), read at each request.
   * Kubernetes mode: the install's Secret, which the controller makes. Without one (local mode) the
   * metrics port serves /debug/clients and waypoint grants to anyone, as an agent without a token
   * file serves its /debug paths (weftctl's cluster transport over a local mesh reads waypoints so).
   */
  debugToken?: () => string | undefined;
  trustDomain?: string;
  rootNamespace?: string;
  /** Cluster ID in telemetry labels (`*_cluster`); default `Kubernetes`, as Istio's. */
  clusterId?: string;
  /** Multi-cluster: this cluster's network (default: the cluster ID). */
  network?: string;
  /** Multi-cluster: serve this cluster's export (controller/src/federation.ts) here. */
  federationListen?: { host: string; port: number };
  /** Multi-cluster: this network's east-west gateway as other networks reach it. */
  networkGateway?: { address: string; port: number };
  /** Multi-cluster: other clusters' controllers, read for their services and endpoints. */
  remoteClusters?: RemoteCluster[];
  /** How long an unreachable remote cluster keeps its last known endpoints; default 30 s. */
  remoteStaleAfterMs?: number;
  /** Most Services / endpoints / destinations (VIPs x ports) imported from one remote cluster; default 5,000 / 50,000 / 16,384 (DEFAULT_IMPORT_QUOTA). */
  remoteMaxServices?: number;
  remoteMaxEndpoints?: number;
  remoteMaxDestinations?: number;
  /**
   * Kubernetes mode, multi-cluster: read remote clusters' API servers through the kubeconfig
   * Secrets labelled weft.dev/multicluster=true in the controller's namespace
   * (controller/src/sources/remote-secrets.ts).
   */
  remoteSecrets?: boolean;
  /**
   * Remote secrets may name a plain-HTTP API server or `insecure-skip-tls-verify` (refused by
   * default: anyone on the path could answer for the remote); warned at start.
   */
  remoteSecretsAllowInsecure?: boolean;
  /** Most bytes of one response (a list) or watch event from a remote API server; default 64 MiB (DEFAULT_MAX_RESPONSE_BYTES). */
  remoteMaxResponseBytes?: number;
  /** Trust domains whose controllers and gateways are federation peers too (per-cluster trust domains). */
  trustDomainAliases?: string[];
  /**
   * The controller's own namespace: its SPIFFE ID, DNS names, the agents' ServiceAccount, the CA
   * Secret, the trust bundle and the Lease live there. Default $POD_NAMESPACE, else rootNamespace.
   */
  namespace?: string;
  /** This replica's name for the Lease and Events; default $POD_NAME, else the host name. */
  instance?: string;
  /**
   * CA material; without it a Kubernetes-mode controller uses the cluster's CA Secret (weft-ca,
   * created once with a new root), a local one generates a root (lost on restart).
   */
  caCertFile?: string;
  caKeyFile?: string;
  caRootsFile?: string;
  /**
   * A mounted CA Secret: tls.crt, tls.key (+ ca.crt), or Istio's cacerts layout ca-cert.pem,
   * ca-key.pem, root-cert.pem (+ cert-chain.pem).
   */
  caDir?: string;
  /** Kubernetes mode: Lease renewal period (tests shorten it); default 2 s. */
  leaseRetryMs?: number;
  /** Kubernetes mode: lease duration; default 15 s. */
  leaseDurationSeconds?: number;
  /** Local mode: YAML map of node name → bootstrap token for the certificate service. */
  bootstrapTokensFile?: string;
  /** SANs of the controller's serving certificate. */
  dnsNames?: string[];
  ipAddresses?: string[];
  /** Plaintext gRPC without the certificate service: debugging only. */
  insecure?: boolean;
  /**
   * Config stream: agents must present their node certificate, waypoints a workload certificate of
   * their namespace. Default: on whenever the controller serves TLS (off only with `insecure`);
   * false lets anonymous TLS clients read any node's config (`--allow-anonymous-clients`, debugging).
   */
  requireClientIdentity?: boolean;
  /** Kubernetes mode: waypoint image and the address waypoints dial back. */
  waypointImage?: string;
  /** ServiceAccounts and images a Waypoint may name (controller/src/waypoint-admission.ts). */
  waypointAllowList?: WaypointAllowList;
  /** Mesh-wide HTTP settings for every waypoint (path normalization, trusted proxies). */
  meshHttp?: MeshHttpSettings;
  /**
   * PEM file of CAs trusted for https jwksUri fetches besides Node's (istiod's
   * /cacerts/extra.pem: an identity provider behind a private CA); default none.
   */
  jwksCaFile?: string;
  controllerAddress?: string;
  /** Local mode: starts waypoint processes; without it Waypoints stay NotReady. */
  launcher?: LocalWaypointLauncher;
  logLevel?: LogLevel;
  logger?: Logger;
}

export interface RunningController {
  controller: Controller;
  configServer: ConfigServer;
  grpcPort: number;
  metricsPort: number;
  readyPort: number;
  /** Undefined when the admin port could not be bound. */
  adminPort: number | undefined;
  registry: Registry;
  /** The CA behind the certificate service and the serving certificate (absent with --insecure). */
  ca?: CertificateAuthority;
  /** Kubernetes mode: the Lease elector (only the leader writes). */
  elector?: LeaseElector;
  /** Kubernetes mode: the trust-bundle ConfigMaps this replica keeps current. */
  trustBundle?: TrustBundlePublisher;
  stop(): Promise<void>;
}

const listen = async (server: Server, port: number, host: string): Promise<number> => (await listenHttp(server, port, host)).port;

/**
 * What the controller compiles with, from its options: weftctl computes a cluster's views with the
 * same (cli/mesh-view.ts, from the controller Deployment's command line).
 */
export function compileOptionsOf(o: ControllerMainOptions): CompileOptions {
  return {
    trustDomain: o.trustDomain ?? DEFAULT_TRUST_DOMAIN,
    ...(o.trustDomainAliases?.length ? { trustDomainAliases: o.trustDomainAliases } : {}),
    rootNamespace: o.rootNamespace ?? DEFAULT_ROOT_NAMESPACE,
    ...(o.clusterId ? { clusterId: o.clusterId } : {}),
    ...(o.waypointAllowList ? { waypointAllowList: o.waypointAllowList } : {}),
    ...(o.meshHttp ? { meshHttp: o.meshHttp } : {}),
  };
}

export async function runController(o: ControllerMainOptions): Promise<RunningController> {
  if (!!o.configDir === !!o.kube) throw new UsageError('give exactly one of --config-dir <dir> or --kube');
  const log = o.logger ?? jsonLogger('controller', o.logLevel ?? 'info');
  const host = o.listenAddress ?? '0.0.0.0';
  const trustDomain = o.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  const registry = new Registry();
  registerProcessMetrics(registry, 'controller');

  // Kubernetes mode's modules (and @kubernetes/client-node) load only when it is asked for.
  const kube = o.kube ? await import('./kube-mode.ts') : undefined;
  let kubeConfig: KubeConfig | undefined;
  let source: ConfigSource;
  if (kube) {
    kubeConfig = new kube.KubeConfig();
    if (o.kubeconfig) kubeConfig.loadFromFile(o.kubeconfig);
    else kubeConfig.loadFromDefault();
    const kubeSource = new kube.KubeSource({ kubeConfig, logger: log });
    source = kubeSource;
    // An optional API group not being read (Istio's security.istio.io forbidden by RBAC, or failing)
    // leaves its policies unenforced: an alertable gauge beside the warning and health().
    new Gauge({
      name: 'weft_controller_source_unanswered', help: 'Resources of another API group than their kind\'s own (security.istio.io) the controller cannot read (forbidden, failing): 1 while their objects are not enforced', labelNames: ['resource'], registers: [registry],
      collect() {
        this.reset();
        for (const resource of kubeSource.unanswered()) this.set({ resource }, 1);
      },
    });
  } else {
    source = new ConfigDirSource({ dir: o.configDir!, logger: log });
  }
  const rootNamespace = o.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
  const namespace = o.namespace ?? process.env['POD_NAMESPACE'] ?? rootNamespace;
  const instance = o.instance ?? process.env['POD_NAME'] ?? hostname();
  if (o.caDir && (o.caCertFile || o.caKeyFile)) throw new UsageError('give --ca-dir or --ca-cert/--ca-key, not both');

  // The CA first: in Kubernetes mode the trust bundle it publishes is what waypoints mount.
  let authority: CertificateAuthority | undefined;
  if (!o.insecure) {
    if (o.caCertFile && o.caKeyFile) authority = await CertificateAuthority.fromFiles({ certFile: o.caCertFile, keyFile: o.caKeyFile, ...(o.caRootsFile ? { rootsFile: o.caRootsFile } : {}) }, { trustDomain });
    else if (o.caDir) authority = CertificateAuthority.fromSecretData(await readSecretDir(o.caDir), { trustDomain });
    else if (kube && kubeConfig) authority = (await kube.clusterCertificateAuthority({ kubeConfig, namespace, trustDomain, logger: log })).ca;
    else authority = await CertificateAuthority.generateRoot({ trustDomain });
  }
  const trustBundle = kube && kubeConfig && authority
    ? new kube.TrustBundlePublisher({ kubeConfig, roots: () => authority!.trustBundle(), onRootsChange: (l) => authority!.onTrustBundleChange(() => l()), logger: log })
    : undefined;
  await trustBundle?.ensure(namespace);
  // The debug paths' token, made once (the agents, and this controller, refuse every /debug request until it exists).
  let debugToken = o.debugToken;
  if (o.debugEndpoints && kube && kubeConfig && !debugToken) debugToken = await clusterDebugTokenReader(() => kube.clusterDebugToken({ kubeConfig: kubeConfig!, namespace, logger: log }), log);
  const elector = kube && kubeConfig
    ? new kube.LeaseElector({ kubeConfig, namespace, identity: instance, logger: log, ...(o.leaseRetryMs ? { retryPeriodMs: o.leaseRetryMs } : {}), ...(o.leaseDurationSeconds ? { leaseDurationSeconds: o.leaseDurationSeconds } : {}) })
    : undefined;
  const events = kube && kubeConfig ? new kube.EventRecorder({ kubeConfig, instance, logger: log }) : undefined;

  const waypoints = kube
    ? new kube.KubeWaypointDriver({
      kubeConfig: kubeConfig!, image: o.waypointImage ?? 'ghcr.io/weft-mesh/waypoint:latest', trustDomain, logger: log, registry, controllerNamespace: namespace,
      ...(o.trustDomainAliases?.length ? { trustDomainAliases: o.trustDomainAliases } : {}),
      ...(o.debugEndpoints ? { debugEndpoints: true } : {}),
      controllerAddress: o.controllerAddress ?? controllerAddress(namespace),
      ...(trustBundle ? { trustBundle } : {}),
    })
    : o.launcher
      ? new LocalWaypointDriver({ launcher: o.launcher, trustDomain, logger: log })
      : undefined;

  if (o.requireClientIdentity && o.insecure) throw new UsageError('--require-client-identity needs TLS; drop --insecure');
  const requireClientIdentity = o.requireClientIdentity ?? !o.insecure;
  if (!requireClientIdentity && !o.insecure) log.warn('config stream admits clients without a certificate: any client that reaches the gRPC port reads every node\'s config (--allow-anonymous-clients); debugging only');
  const configServer = new ConfigServer({ logger: log, registry, ...(requireClientIdentity ? { authorize: spiffeStreamAuthorizer(trustDomain, authority!) } : {}) });
  if (o.remoteSecrets && !kubeConfig) throw new UsageError('--remote-secrets reads Secrets: it needs --kube');
  if (o.remoteSecretsAllowInsecure && !o.remoteSecrets) throw new UsageError('--remote-secret-allow-insecure applies to --remote-secrets');
  if (o.remoteSecretsAllowInsecure) log.warn('remote secrets may name plain-HTTP API servers or skip TLS verification (--remote-secret-allow-insecure): anyone on the path to such a remote can answer for it, its endpoints and identities; testing only');
  const federated = !!(o.remoteClusters?.length || o.federationListen || o.remoteSecrets);
  if (federated && !authority) throw new UsageError('multi-cluster federation needs the CA (mutual TLS between controllers); drop --insecure');
  // The import quota, resolved here once: the federation cuts by it, a remote's reader bounds its objects by it.
  const importQuota: ImportQuota = {
    maxServices: o.remoteMaxServices ?? DEFAULT_IMPORT_QUOTA.maxServices,
    maxEndpoints: o.remoteMaxEndpoints ?? DEFAULT_IMPORT_QUOTA.maxEndpoints,
    maxDestinations: o.remoteMaxDestinations ?? DEFAULT_IMPORT_QUOTA.maxDestinations,
  };
  const federation = federated && authority
    ? await createFederation(o, importQuota, authority, trustDomain, rootNamespace, namespace, log, registry)
    : undefined;
  const remoteSecrets = o.remoteSecrets && federation && kube && kubeConfig
    ? new kube.RemoteSecrets({ kubeConfig, namespace, cluster: o.clusterId ?? DEFAULT_CLUSTER_ID, trustDomain, rootNamespace, federation, log, registry, allowInsecure: !!o.remoteSecretsAllowInsecure, ...(o.remoteMaxResponseBytes !== undefined ? { maxResponseBytes: o.remoteMaxResponseBytes } : {}), maxObjects: kube.remoteMaxObjects(importQuota) })
    : undefined;
  const controller = new Controller({
    ...(federation ? { federation } : {}),
    source,
    configServer,
    ...(waypoints ? { waypoints } : {}),
    compile: compileOptionsOf(o),
    logger: log,
    registry,
    ...(o.jwksCaFile ? { jwks: { extraCas: [await readFile(o.jwksCaFile, 'utf8')] } } : {}),
    ...(elector ? { leadership: elector } : {}),
    ...(events ? { onFindings: (f: Parameters<EventRecorder['record']>[0]) => events.record(f) } : {}),
  });

  const grpcServer = new grpc.Server({ 'grpc.keepalive_time_ms': 30_000, 'grpc.keepalive_permit_without_calls': 1 });
  addConfigStreamService(grpcServer, { configServer });
  let credentials: grpc.ServerCredentials;
  let controllerCreds: ControllerCredentials | undefined;
  let certService: CertificateService | undefined;
  if (o.insecure || !authority) {
    log.warn('serving the config stream in plaintext without the certificate service (--insecure)');
    credentials = grpc.ServerCredentials.createInsecure();
  } else {
    const ca = authority;
    let authenticator: NodeAuthenticator;
    if (kube) {
      authenticator = new kube.TokenReviewAuthenticator({
        kubeConfig: kubeConfig!,
        agentServiceAccounts: [agentServiceAccountUser(namespace)],
        // A waypoint's own projected token obtains the waypoint's identity (and nothing else); so
        // does the east-west gateway's (weft-eastwest in the root namespace), where this cluster
        // is part of a multi-cluster mesh.
        workloadServiceAccount: (ns, sa) => {
          if (federation && ns === rootNamespace && sa === EASTWEST_SERVICE_ACCOUNT) return true;
          const model = controller.ready ? controller.model : undefined;
          if (!model) return undefined;
          return isOwnWaypointIdentity(model.waypoints.values(), ns, spiffeIdOf(trustDomain, ns, sa));
        },
      });
    }
    else if (o.bootstrapTokensFile) authenticator = await StaticTokenAuthenticator.fromFile(o.bootstrapTokensFile);
    else throw new UsageError('local mode needs --bootstrap-tokens <file> (YAML map of node name to token) for the certificate service, or --insecure');
    const pods: PodDirectory = {
      identitiesOnNode(node: string): ReadonlySet<string> | undefined {
        const model = controller.ready ? controller.model : undefined;
        if (!model) return undefined;
        const ids = new Set<string>();
        for (const w of model.workloads.values()) if (w.node === node) ids.add(w.spiffeId);
        return ids;
      },
    };
    const requests = new Counter({ name: 'weft_ca_certificate_requests_total', help: 'Certificate requests to the certificate service, by outcome (issued, unauthenticated, denied, invalid, unavailable, rate_limited)', labelNames: ['outcome'], registers: [registry] });
    const watchesRefused = new Counter({ name: 'weft_ca_trust_bundle_watches_refused_total', help: 'Trust bundle watches refused because the client address, or the controller, holds as many as allowed', registers: [registry] });
    certService = addCertificateService(grpcServer, {
      ca, authenticator, pods,
      onOutcome: (outcome) => requests.inc({ outcome }),
      onWatchRefused: () => watchesRefused.inc(),
      log: ({ level, msg, ...fields }) => log[level](msg, fields),
    });
    controllerCreds = await createControllerCredentials(ca, {
      identity: controllerSpiffeId(trustDomain, namespace),
      dnsNames: o.dnsNames ?? [CONTROLLER_NAME, `${CONTROLLER_NAME}.${namespace}.svc`, `${CONTROLLER_NAME}.${namespace}.svc.cluster.local`, 'localhost'],
      ipAddresses: o.ipAddresses ?? ['127.0.0.1'],
    });
    credentials = controllerCreds.credentials;
  }
  const grpcPort = await new Promise<number>((resolve, reject) =>
    grpcServer.bindAsync(`${host}:${o.grpcPort ?? DEFAULT_GRPC_PORT}`, credentials, (err, port) => (err ? reject(err) : resolve(port))),
  );

  // Each client's acknowledged config version (weftctl proxy-status) and waypoint debug grants
  // (weftctl's reads of waypoints), read-only, also here: the API server's pod proxy reaches this
  // port, not the loopback admin one. Every pod reaches it too, so with a token (Kubernetes mode)
  // only requests carrying it are answered (lib/debug-http.ts, the agents' check); a grant is signed
  // for nobody else.
  // Every pod reaches the metrics and readiness ports: bounded as the other components' (one source, a slowloris).
  const status = statusListenerLimits({ registry, metric: 'weft_controller_listener_refused_total', log });
  const debugAccess: DebugTokenAccess | undefined = debugToken ? {
    token: debugToken,
    refused: (req, why, detail) => status.refused('metrics', `debug-token-${why}`, req.socket.remoteAddress, `${req.url ?? ''}: ${detail}`),
  } : undefined;
  // Without a token (a local mesh) both are answered to anyone, as that mesh's agents answer their
  // /debug paths: the waypoints' then open to whoever asks the controller for a grant, as the agents'.
  const metricsDebugPaths = new Set([CONTROLLER_DEBUG_CLIENTS_PATH, ...(authority ? [CONTROLLER_DEBUG_GRANT_PATH] : [])]);
  const prom = metricsHandler(registry);
  const metrics = createServer((req, res) => {
    const path = req.url?.split('?')[0] ?? '/';
    if (o.debugEndpoints && metricsDebugPaths.has(path) && req.method === 'GET') {
      if (debugAccess && !admitDebugRequest(debugAccess, req, res, path)) return;
      admin.emit('request', req, res);
      return;
    }
    prom(req, res);
  });
  const ready = readinessServer(() => controller.ready || 'initial config not loaded yet');
  const admin = createServer((req, res) => {
    const path = req.url?.split('?')[0];
    const send = (body: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body, null, 2));
    const model = controller.model;
    if (path === '/debug/federation') {
      send(federation ? { export: federation.export(), leftOut: federation.leftOut(), remotes: federation.status(), ...(remoteSecrets ? { refusedSecrets: remoteSecrets.refused() } : {}) } : { remotes: [] });
    } else if (path === '/debug/model') {
      send(model ? Object.fromEntries(Object.entries(model).map(([k, m]) => [k, [...(m as Map<string, unknown>).values()]])) : {});
    } else if (path === '/debug/status') {
      send([...controller.statuses().values()]);
    } else if (path === CONTROLLER_DEBUG_CLIENTS_PATH) {
      send({ systemVersion: configServer.systemVersion, clients: configServer.clients() });
    } else if (path === CONTROLLER_DEBUG_GRANT_PATH && authority) {
      const query = new URL(req.url ?? '/', 'http://controller').searchParams;
      const waypoint = query.get('waypoint') ?? '';
      const pod = query.get('pod') ?? '';
      const [ns, name, ...rest] = waypoint.split('/');
      const bad = !ns || !name || rest.length > 0 || !DNS1123_LABEL.test(ns) || !DNS1123_LABEL.test(name)
        ? `waypoint: ${JSON.stringify(waypoint.slice(0, 256))} is not <namespace>/<name> (lower-case letters, digits and '-')`
        : pod.length > 253 || !DNS1123_SUBDOMAIN.test(pod) ? `pod: ${JSON.stringify(pod.slice(0, 256))} is not the name of one of the waypoint's pods` : undefined;
      if (bad) {
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: bad }) + '\n');
        return;
      }
      const audience = debugGrantAudience(ns, name, pod);
      let signed: { grant: string; expires: Date };
      try {
        signed = authority.signDebugGrant(audience);
      } catch (e) {
        // A CA key no grant algorithm covers (lib/identity/debug-grant.ts): said, not thrown out of the handler.
        log.warn('debug grant not signed', { audience, error: (e as Error).message });
        res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (e as Error).message }) + '\n');
        return;
      }
      log.info('debug grant signed', { audience, expires: signed.expires.toISOString(), address: req.socket.remoteAddress });
      send({ audience, header: DEBUG_GRANT_HEADER, grant: signed.grant, expires: signed.expires.toISOString() });
    } else res.writeHead(404).end();
  });
  status.limit({ metrics, readiness: ready });
  const metricsPort = await listen(metrics, o.metricsPort ?? DEFAULT_METRICS_PORT, host);
  // The admin port is a convenience: a controller that cannot bind it still serves the mesh.
  const adminPort = await listen(admin, o.adminPort ?? DEFAULT_ADMIN_PORT, '127.0.0.1').catch((e: Error) => {
    log.warn('admin port not available; continuing without it', { port: o.adminPort ?? DEFAULT_ADMIN_PORT, error: e.message });
    return undefined;
  });
  const readyPort = await listen(ready, o.readyPort ?? DEFAULT_READY_PORT, host);

  await elector?.start();
  await federation?.start();
  await remoteSecrets?.start();
  await controller.start();
  log.info('controller ready', { source: source.name, grpcPort, metricsPort, readyPort, adminPort, tls: !o.insecure });

  return {
    controller,
    configServer,
    grpcPort,
    metricsPort,
    readyPort,
    adminPort,
    registry,
    ...(authority ? { ca: authority } : {}),
    /**
     * Ends the config streams, gives in-flight calls (a certificate being signed) up to `graceMs`,
     * then cuts what is left: the agents' long-lived streams (trust bundle watches) would otherwise
     * hold a graceful shutdown open until the kubelet's SIGKILL. Agents reconnect to the next one.
     */
    ...(elector ? { elector } : {}),
    ...(trustBundle ? { trustBundle } : {}),
    // No parameter: runMain passes the signal's name, which is not a grace period.
    async stop() {
      // Each step is named, so a stop that hangs says on what (the kubelet's SIGKILL would say nothing).
      let step = 'leader election';
      const started = Date.now();
      const watchdog = setInterval(() => log.warn('stopping is slow', { waitingOn: step, ms: Date.now() - started }), 3_000);
      try {
        await elector?.stop();
        step = 'remote clusters';
        await remoteSecrets?.stop();
        step = 'federation';
        await federation?.stop();
        await trustBundle?.close();
        step = 'config source and reconcile';
        await controller.stop();
        configServer.closeAll();
        // The agents' trust bundle watches too: otherwise they hold the gRPC stop for its whole grace.
        certService?.closeStreams();
        step = 'gRPC server';
        // After the grace, forceShutdown cuts the sessions it knows; but a connection still in its
        // TLS handshake then becomes a session grpc-js never closes, and tryShutdown would wait
        // for it forever (seen: a controller that never exited on SIGTERM while agents
        // reconnected). So the wait ends a moment after the force, whatever is left: the process
        // exits next, which closes every socket.
        await new Promise<void>((r) => {
          let left: NodeJS.Timeout | undefined;
          const force = setTimeout(() => {
            grpcServer.forceShutdown();
            left = setTimeout(() => {
              log.warn('gRPC connections still open after the forced shutdown; exiting anyway', { graceMs: STOP_GRACE_MS });
              r();
            }, STOP_FORCE_WAIT_MS);
          }, STOP_GRACE_MS);
          grpcServer.tryShutdown(() => {
            clearTimeout(force);
            clearTimeout(left);
            r();
          });
        });
        controllerCreds?.close();
        step = 'HTTP servers';
        const servers = [metrics, ready, ...(adminPort !== undefined ? [admin] : [])];
        await Promise.all(servers.map((s) => new Promise<void>((r) => {
          s.close(() => r());
          s.closeAllConnections();
        })));
      } finally {
        clearInterval(watchdog);
      }
    },
  };
}

/** The federation (multi-cluster discovery) of this controller, with its own identity certificate. */
async function createFederation(o: ControllerMainOptions, importQuota: ImportQuota, ca: CertificateAuthority, trustDomain: string, rootNamespace: string, namespace: string, log: Logger, registry: Registry): Promise<Federation> {
  const cluster = o.clusterId ?? DEFAULT_CLUSTER_ID;
  const network = o.network ?? cluster;
  const domains = [trustDomain, ...(o.trustDomainAliases ?? [])];
  const ids = (sa: string, ns: string) => domains.map((td) => `spiffe://${td}/ns/${ns}/sa/${sa}`);
  const controllers = new Set(ids(CONTROLLER_NAME, namespace));
  const readers = new Set([...controllers, ...ids(EASTWEST_SERVICE_ACCOUNT, rootNamespace)]);
  const issue = async () => {
    const issued = await ca.issueServingCertificate({ uris: [controllerSpiffeId(trustDomain, namespace)], ...(o.federationListen ? { ipAddresses: [o.federationListen.host] } : {}) });
    return { tls: { key: issued.keyPem, cert: issued.certChain.join(''), ca: ca.trustBundle() }, lifetimeMs: issued.notAfter.getTime() - issued.notBefore.getTime() };
  };
  const first = await issue();
  let tls = first.tls;
  // Renewed at half-life, and at once when the trust bundle changes (root rotation).
  const renew = () => void issue().then((next) => {
    tls = next.tls;
    federation.renewedTls();
  }, (e: Error) => log.error('federation certificate not renewed; retrying', { error: e.message }));
  setInterval(renew, Math.max(60_000, first.lifetimeMs / 2)).unref();
  ca.onTrustBundleChange(renew);
  const federation = new Federation({
    cluster, network,
    ...(o.networkGateway ? { gateway: { network, ...o.networkGateway, spiffeId: spiffeIdOf(trustDomain, rootNamespace, EASTWEST_SERVICE_ACCOUNT) } } : {}),
    ...(o.federationListen ? { listen: o.federationListen } : {}),
    remotes: o.remoteClusters ?? [],
    tls: () => tls,
    mayRead: (id) => readers.has(id),
    isController: (id) => controllers.has(id),
    ...(o.remoteStaleAfterMs !== undefined ? { staleAfterMs: o.remoteStaleAfterMs } : {}),
    importQuota,
    log, registry,
  });
  return federation;
}

/** How long the controller waits before asking again for a debug token it could not read or make at start. */
const DEBUG_TOKEN_RETRY_MS = 60_000;

/**
 * The install's debug token as the controller's debug paths read it: the one `read`
 * (clusterDebugToken: read-or-create) returned at start, kept (the Secret is made once; a token
 * rotated by deleting it is made again, and taken, when the controller restarts). Only while it holds
 * none (the API server did not answer at start) is `read` asked again, in the background, at most
 * every DEBUG_TOKEN_RETRY_MS; undefined (every /debug request refused) until then.
 */
export async function clusterDebugTokenReader(read: () => Promise<{ token: string | undefined }>, log: Logger, now: () => number = Date.now): Promise<() => string | undefined> {
  let token: string | undefined;
  let at = 0;
  let reading: Promise<void> | undefined;
  const refresh = (): Promise<void> => (reading ??= read().then(
    (r) => { token = r.token ?? token; },
    (e: Error) => log.warn(`the debug token Secret ${DEBUG_TOKEN_SECRET} could not be read or made; ${token === undefined ? 'the agents and the controller refuse every /debug request until it exists' : 'the token read before stays in use'}`, { error: e.message }),
  ).finally(() => { at = now(); reading = undefined; }));
  await refresh();
  // Read again, in the background, at most every DEBUG_TOKEN_RETRY_MS and only when asked: a token
  // an operator rotates (the Secret replaced) is taken within a minute, as the agents' mounted copy
  // is; a failed read keeps the token held.
  return () => {
    if (now() - at > DEBUG_TOKEN_RETRY_MS) void refresh();
    return token;
  };
}

/** A Secret mounted as files (one file per key; the kubelet's `..data` links skipped). */
async function readSecretDir(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new UsageError(`--ca-dir ${dir}: ${(e as Error).message}`);
  }
  for (const n of names) {
    if (n.startsWith('.')) continue;
    out[n] = await readFile(join(dir, n), 'utf8').catch(() => '');
  }
  return out;
}

/** How long a stopping controller lets in-flight gRPC calls finish. */
export const STOP_GRACE_MS = 2_000;
/** After the forced shutdown, how long the stop still waits for connections to close. */
const STOP_FORCE_WAIT_MS = 500;

export const USAGE = `usage: controller/src/main.ts (--config-dir <dir> | --kube [--kubeconfig <file>]) [options]
  --listen-address <ip>       bind address (default 0.0.0.0)
  --grpc-port <n>             config stream + certificate service, TLS (default 15012)
  --metrics-port <n>          Prometheus /metrics (default 15020)
  --ready-port <n>            /healthz/ready (default 15021)
  --admin-port <n>            127.0.0.1 only: /debug/model, /debug/status, /debug/clients (default 15000)
  --debug-endpoints           also serve /debug/clients and /debug/waypoint-grant on the metrics port
                              (weftctl proxy-status and its reads of waypoints on a cluster), with
                              --kube only to requests carrying the install's debug token (Secret
                              weft-debug-token, made here); default off
  --trust-domain <td>         SPIFFE trust domain (default cluster.local)
  --root-namespace <ns>       mesh-wide policy namespace (default weft-system)
  --cluster-id <id>           cluster name in metric labels (default Kubernetes)
  --network <name>            multi-cluster: this cluster's network (default: the cluster ID)
  --federation-listen <ip:port>  multi-cluster: serve this cluster's services and endpoints (mTLS) here
  --network-gateway <ip:port> multi-cluster: this network's east-west gateway, as other networks reach it
  --remote-cluster <name>=https://<ip>:<port>  multi-cluster: read another cluster's controller (repeatable)
  --remote-secrets            Kubernetes mode, multi-cluster: read the remote clusters named by the
                              kubeconfig Secrets labelled weft.dev/multicluster=true in --namespace
  --remote-secret-allow-insecure  remote secrets may name an http:// API server or
                              insecure-skip-tls-verify (refused by default; testing only)
  --remote-stale-after <dur>  how long an unreachable remote keeps its endpoints (default 30s)
  --remote-max-services <n>   multi-cluster: most Services imported from one remote cluster; past it
                              the Services last by namespace/name are left out, named (default 5000)
  --remote-max-endpoints <n>  multi-cluster: most endpoints imported from one remote cluster (default 50000)
  --remote-max-destinations <n>  multi-cluster: most VIPs x ports imported from one remote cluster, each an
                              entry of every agent's weft_dests of 65536 (default 16384)
  --trust-domain-alias <td>   another trust domain of the mesh (repeatable): its controllers are peers, and
                              AuthorizationPolicy principals of the trust domain, an alias or cluster.local
                              stand for the same service account under each (Istio's trust-domain migration)
  --namespace <ns>            the controller's own namespace (default $POD_NAMESPACE, else --root-namespace)
  --ca-cert <f> --ca-key <f> [--ca-roots <f>]   CA material (default: Kubernetes: the weft-ca Secret,
                              created once; local: generate a root)
  --ca-dir <dir>              a mounted CA Secret: tls.crt/tls.key[/ca.crt] or Istio's cacerts
                              (ca-cert.pem, ca-key.pem, root-cert.pem[, cert-chain.pem])
  --bootstrap-tokens <file>   local mode: YAML map node → token for the certificate service
  --dns-name <n>, --ip-address <ip>   SANs of the serving certificate (repeatable)
  --waypoint-image <ref>      Kubernetes mode: waypoint image
  --waypoint-service-accounts <sa,...>  ServiceAccounts a Waypoint may name besides its own name ("default" never)
  --waypoint-images <ref,...> images a Waypoint may name in spec.image (exact, or prefix*); default none
  --controller-address <h:p>  Kubernetes mode: address waypoints dial back
  --path-normalization <mode> every waypoint's path normalization, as Istio's MeshConfig
                              pathNormalization: NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES
                              (default: the waypoint's own, BASE)
  --escaped-slashes <action>  every waypoint's %2F/%5C handling: KEEP_UNCHANGED or REJECT_REQUEST
  --num-trusted-proxies <n>   proxies in front of waypoints that append X-Forwarded-For (Istio
                              gatewayTopology.numTrustedProxies; remote.ip is the entry n places
                              from the right; default 0, the last entry)
  --jwks-ca <file>            PEM CAs trusted for https RequestAuthentication jwksUri fetches besides
                              Node's default ones, bundled and NODE_EXTRA_CA_CERTS (istiod's
                              /cacerts/extra.pem beside the system pool); default none
  --insecure                  plaintext gRPC, no certificate service (debugging only)
  --require-client-identity   config stream needs node / namespace certificates (mTLS); the
                              default whenever the controller serves TLS
  --allow-anonymous-clients   config stream also serves clients without a certificate (debugging
                              only: they read every node's config)
  --log-level <debug|info|warn|error>`;

/**
 * The flags the compile reads (compileOptionsOf): parseControllerArgs takes them among all its
 * flags, compileOptionsOfArgs alone.
 */
const COMPILE_FLAGS = {
  'trust-domain': { type: 'string' },
  'trust-domain-alias': { type: 'string', multiple: true },
  'root-namespace': { type: 'string' },
  'cluster-id': { type: 'string' },
} as const;

/**
 * What a controller with this command line compiles with, read from its compile flags only
 * (COMPILE_FLAGS; every other flag, known or not, is passed over): weftctl reads an installed
 * controller's Deployment with it (cli/mesh-view.ts), which may be of another version than its own.
 * A compile flag without a value or with an invalid one throws.
 */
export function compileOptionsOfArgs(argv: string[]): CompileOptions {
  // The whole table, so a flag this version knows takes its value as the controller does; one it
  // does not know (a later version's) is passed over.
  const { values } = parseArgs({ args: argv, options: CONTROLLER_FLAGS, strict: false, allowPositionals: true });
  const str = (flag: keyof typeof COMPILE_FLAGS, v: unknown): string | undefined => {
    if (v !== undefined && typeof v !== 'string') throw new UsageError(`--${flag} has no value`);
    return v;
  };
  const trustDomain = str('trust-domain', values['trust-domain']);
  const aliases = (values['trust-domain-alias'] as unknown[] | undefined)?.map((v) => str('trust-domain-alias', v)!);
  trustDomainFlags(trustDomain, aliases);
  const o: ControllerMainOptions = {};
  if (trustDomain !== undefined) o.trustDomain = trustDomain;
  if (aliases !== undefined) o.trustDomainAliases = aliases;
  const rootNamespace = str('root-namespace', values['root-namespace']);
  if (rootNamespace !== undefined) o.rootNamespace = rootNamespace;
  const clusterId = str('cluster-id', values['cluster-id']);
  if (clusterId !== undefined) o.clusterId = clusterId;
  return compileOptionsOf(o);
}

/** Every flag the controller takes (parseControllerArgs), so a lenient reader parses a command line as it does. */
const CONTROLLER_FLAGS = {
  ...COMPILE_FLAGS,
  'config-dir': { type: 'string' },
  kube: { type: 'boolean' },
  kubeconfig: { type: 'string' },
  'listen-address': { type: 'string' },
  'grpc-port': { type: 'string' },
  'metrics-port': { type: 'string' },
  'ready-port': { type: 'string' },
  'admin-port': { type: 'string' },
  'debug-endpoints': { type: 'boolean' },
  network: { type: 'string' },
  'federation-listen': { type: 'string' },
  'network-gateway': { type: 'string' },
  'remote-cluster': { type: 'string', multiple: true },
  'remote-stale-after': { type: 'string' },
  'remote-max-services': { type: 'string' },
  'remote-max-endpoints': { type: 'string' },
  'remote-max-destinations': { type: 'string' },
  'remote-secrets': { type: 'boolean' },
  'remote-secret-allow-insecure': { type: 'boolean' },
  'ca-cert': { type: 'string' },
  'ca-key': { type: 'string' },
  'ca-roots': { type: 'string' },
  'ca-dir': { type: 'string' },
  'jwks-ca': { type: 'string' },
  namespace: { type: 'string' },
  'bootstrap-tokens': { type: 'string' },
  'dns-name': { type: 'string', multiple: true },
  'ip-address': { type: 'string', multiple: true },
  'waypoint-image': { type: 'string' },
  'waypoint-service-accounts': { type: 'string', multiple: true },
  'waypoint-images': { type: 'string', multiple: true },
  'controller-address': { type: 'string' },
  'path-normalization': { type: 'string' },
  'escaped-slashes': { type: 'string' },
  'num-trusted-proxies': { type: 'string' },
  insecure: { type: 'boolean' },
  'require-client-identity': { type: 'boolean' },
  'allow-anonymous-clients': { type: 'boolean' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export function parseControllerArgs(argv: string[]): ControllerMainOptions {
  const { values } = parseArgs({
    args: argv,
    options: CONTROLLER_FLAGS,
    strict: true,
  });
  if (values.help) throw new UsageError(USAGE);
  const port = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new UsageError(`--${flag}: "${v}" is not a port number`);
    return n;
  };
  const level = values['log-level'];
  if (level !== undefined && !isLogLevel(level)) throw new UsageError(`--log-level: "${level}" is not debug, info, warn or error`);
  if (!!values['ca-cert'] !== !!values['ca-key']) throw new UsageError('--ca-cert and --ca-key go together');
  if (values['ca-dir'] && values['ca-cert']) throw new UsageError('give --ca-dir or --ca-cert/--ca-key, not both');
  const o: ControllerMainOptions = {};
  const set = <K extends keyof ControllerMainOptions>(k: K, v: ControllerMainOptions[K] | undefined) => {
    if (v !== undefined) o[k] = v;
  };
  set('configDir', values['config-dir']);
  set('kube', values.kube);
  set('kubeconfig', values.kubeconfig);
  set('listenAddress', values['listen-address']);
  set('grpcPort', port('grpc-port', values['grpc-port']));
  set('metricsPort', port('metrics-port', values['metrics-port']));
  set('readyPort', port('ready-port', values['ready-port']));
  set('adminPort', port('admin-port', values['admin-port']));
  if (values['debug-endpoints']) o.debugEndpoints = true;
  // The aliases go on to every waypoint's command line (waypoints-kube.ts): an invalid one is
  // refused here, naming the flag, not by each waypoint as it starts.
  trustDomainFlags(values['trust-domain'], values['trust-domain-alias']);
  set('trustDomain', values['trust-domain']);
  set('rootNamespace', values['root-namespace']);
  set('clusterId', values['cluster-id']);
  set('network', values.network);
  const hostPort = (flag: string, v: string | undefined): { host: string; port: number } | undefined => {
    if (v === undefined) return undefined;
    const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(v);
    if (!m || isIP(m[1]!) !== 4 || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new UsageError(`--${flag}: "${v}" is not <ipv4>:<port>`);
    return { host: m[1]!, port: Number(m[2]) };
  };
  set('federationListen', hostPort('federation-listen', values['federation-listen']));
  const gw = hostPort('network-gateway', values['network-gateway']);
  if (gw) set('networkGateway', { address: gw.host, port: gw.port });
  set('remoteClusters', values['remote-cluster']?.map((v) => {
    const m = /^([a-z0-9][a-z0-9-]{0,62})=(https:\/\/\d{1,3}(?:\.\d{1,3}){3}:\d{1,5})\/?$/.exec(v);
    if (!m) throw new UsageError(`--remote-cluster: "${v}" is not <cluster>=https://<ip>:<port>`);
    return { name: m[1]!, url: m[2]! };
  }));
  if (values['remote-secrets']) o.remoteSecrets = true;
  if (values['remote-secret-allow-insecure']) o.remoteSecretsAllowInsecure = true;
  if (values['remote-stale-after'] !== undefined) {
    try {
      set('remoteStaleAfterMs', parseDuration(values['remote-stale-after']));
    } catch (e) {
      throw new UsageError(`--remote-stale-after: ${(e as Error).message}`);
    }
  }
  for (const [key, flag, what] of [['remoteMaxServices', 'remote-max-services', 'Services'], ['remoteMaxEndpoints', 'remote-max-endpoints', 'endpoints'], ['remoteMaxDestinations', 'remote-max-destinations', 'destinations']] as const) {
    const v = values[flag];
    if (v !== undefined) set(key, countFlag(flag, v, what, 1));
  }
  set('trustDomainAliases', values['trust-domain-alias']);
  set('caCertFile', values['ca-cert']);
  set('caKeyFile', values['ca-key']);
  set('caRootsFile', values['ca-roots']);
  set('caDir', values['ca-dir']);
  set('jwksCaFile', values['jwks-ca']);
  set('namespace', values.namespace);
  set('bootstrapTokensFile', values['bootstrap-tokens']);
  set('dnsNames', values['dns-name']);
  set('ipAddresses', values['ip-address']);
  set('waypointImage', values['waypoint-image']);
  const list = (v: string[] | undefined) => v?.flatMap((x) => x.split(',')).map((x) => x.trim()).filter((x) => x !== '');
  const allowedSas = list(values['waypoint-service-accounts']);
  if (allowedSas?.includes('default')) throw new UsageError('--waypoint-service-accounts: "default" is never allowed (every pod of a namespace runs as it)');
  const allowedImages = list(values['waypoint-images']);
  if (allowedSas || allowedImages) set('waypointAllowList', { ...(allowedSas ? { serviceAccounts: allowedSas } : {}), ...(allowedImages ? { images: allowedImages } : {}) });
  const meshHttp: MeshHttpSettings = {};
  const pn = values['path-normalization'];
  if (pn !== undefined) meshHttp.pathNormalization = oneOfFlag('path-normalization', pn, PATH_NORMALIZATIONS);
  const es = values['escaped-slashes'];
  if (es !== undefined) meshHttp.escapedSlashes = oneOfFlag('escaped-slashes', es, ESCAPED_SLASHES_ACTIONS);
  const ntp = values['num-trusted-proxies'];
  if (ntp !== undefined) {
    meshHttp.numTrustedProxies = countFlag('num-trusted-proxies', ntp, 'proxies', 0, MAX_TRUSTED_PROXIES);
  }
  if (Object.keys(meshHttp).length > 0) set('meshHttp', meshHttp);
  set('controllerAddress', values['controller-address']);
  set('insecure', values.insecure);
  if (values['require-client-identity'] && values['allow-anonymous-clients']) throw new UsageError('give one of --require-client-identity or --allow-anonymous-clients');
  set('requireClientIdentity', values['allow-anonymous-clients'] ? false : values['require-client-identity']);
  set('logLevel', level as LogLevel | undefined);
  if (!!o.configDir === !!o.kube) throw new UsageError(`give exactly one of --config-dir <dir> or --kube\n${USAGE}`);
  return o;
}

// Starts as every part does (lib/main.ts): parseControllerArgs → runController → SIGTERM stops.
if (import.meta.main) await withMemoryRelease(jsonLogger('controller'), () => runMain('controller', () => parseControllerArgs(process.argv.slice(2)), runController));
