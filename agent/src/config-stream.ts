// The agent's config stream: one DeltaConfig stream to the controller (lib/xds/client.ts), opened
// with this node's certificate (spiffe://<td>/node/<node>) so that the controller serves it only
// its node's config, and opened again whenever that certificate is renewed. Until the first
// stream is up it keeps retrying with backoff; an open stream keeps serving the last good config.
//
// The node certificate is renewed (renew(), each counted weft_node_certificate_renewals_total{reason}
// and logged; one renewal however many ask while it is on its way, and none for what a stream
// already replaced said) at its renewal time (`scheduled`), when the roots change (`roots-changed`), when the
// CA's trust-bundle stream announces a signer that did not issue it (`signer-changed`, found by the
// signer), and when the controller refuses the stream (PERMISSION_DENIED: `config-stream-refused`).
// The controller takes a node certificate only from its own CA (controller/src/xds/authz.ts: the
// clusters of a mesh share the root and name their nodes alike), so after it restarted on a new
// intermediate under the same root (Istio's plug-in CA rotated) every agent's certificate, from the
// intermediate before, is refused until renewed: at half its lifetime, hours, without this. A
// renewal after a refusal waits REFUSED_RENEWAL_BACKOFF, growing while the controller keeps
// refusing, so that one refusing everyone does not have every agent ask for a certificate at each
// reconnect.
import * as grpc from '@grpc/grpc-js';
import { agentConfigClient, type ConfigClient } from '../../lib/xds/index.ts';
import { backoffDelay, type BackoffOptions } from '../../lib/backoff.ts';
import { spiffeIdOfCertificate } from '../../lib/identity/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';

/** This node's certificate, as the node-credentials signer holds it (GrpcCertificateSigner). */
export interface NodeCredentialsSource {
  /** The node certificate, fetched (or renewed, once due) when needed. */
  nodeCredentials(): Promise<{ keyPem: string; certChain: readonly string[]; renewAt: number }>;
  /** Makes the node certificate whose leaf is `leafPem` due, if it is still the one held. */
  renewNodeCertificate(leafPem: string): void;
}

/** Why the config stream asked for a new node certificate: the `reason` of weft_node_certificate_renewals_total (stable strings). */
export type NodeRenewalReason = 'scheduled' | 'roots-changed' | 'signer-changed' | 'config-stream-refused';

/** Waits before a renewal for a refused stream: the first within about 250 ms, doubling (±20 %) to a minute while refusals go on. */
export const REFUSED_RENEWAL_BACKOFF: Readonly<BackoffOptions> = { initialMs: 250, maxMs: 60_000 };

export interface NodeConfigStreamOptions {
  /** The node name: the config stream's id. */
  node: string;
  /** Controller gRPC address, host:port (15012). */
  controller: string;
  /** The SPIFFE ID the controller must present. */
  controllerId: string;
  signer: NodeCredentialsSource;
  /** The roots to verify the controller with, read at each (re)open. */
  trustBundle: () => readonly string[];
  validate: (config: AgentConfig) => void;
  onConfig: (config: AgentConfig, version: string) => void;
  log: Logger;
  /** Counts each renewal by reason (AgentMetrics.nodeCertificateRenewals). */
  renewals: { inc(labels: { reason: NodeRenewalReason }): void };
  /** The waits before a renewal for a refused stream (default REFUSED_RENEWAL_BACKOFF). */
  refusedBackoff?: Readonly<BackoffOptions>;
}

export class NodeConfigStream {
  readonly #o: NodeConfigStreamOptions;
  #client: ConfigClient<'agent'> | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** The leaf of the node certificate the current stream presents. */
  #leaf: string | undefined;
  /** A renewal is on its way (the stream opens again once the new certificate is there). */
  #renewing = false;
  /** A renewal for a refused stream, waiting its turn. */
  #refusedTimer: NodeJS.Timeout | undefined;
  /** Renewals for refused streams since the controller last answered one. */
  #refusals = 0;
  #closed = false;

  constructor(o: NodeConfigStreamOptions) {
    this.#o = o;
  }

  /** True while a stream is up and the controller has answered on it. */
  get connected(): boolean {
    return this.#client?.connected ?? false;
  }

  /** Whether a renewal for a refused stream is waiting its turn (#refused; a new stream clears it). */
  get refusalRenewalWaiting(): boolean {
    return this.#refusedTimer !== undefined;
  }

  /** Version of the last accepted config ('' before the first). */
  get version(): string {
    return this.#client?.version ?? '';
  }

  /** Opens the stream (once the node certificate is there). */
  open(): void {
    this.#connect(0);
  }

  /**
   * Renews the node certificate the stream presents and opens the stream again with the new one
   * (which reads the roots again). One renewal however many ask: nothing while one is on its way
   * (one announcement of a new signer and new roots), and nothing is counted or logged then.
   * Before the stream is first opened there is nothing to renew.
   */
  renew(reason: NodeRenewalReason, detail?: string): void {
    const leaf = this.#leaf;
    if (this.#closed || leaf === undefined || this.#renewing) return;
    this.#renewing = true;
    clearTimeout(this.#refusedTimer);
    this.#refusedTimer = undefined;
    this.#o.renewals.inc({ reason });
    const fields = { reason, ...(detail !== undefined ? { detail } : {}) };
    if (reason === 'config-stream-refused') this.#o.log.warn('renewing the node certificate for the config stream', { ...fields, refusalsInARow: this.#refusals });
    else this.#o.log.info('renewing the node certificate for the config stream', fields);
    this.#o.signer.renewNodeCertificate(leaf);
    this.#connect(0);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#refusedTimer);
    this.#client?.close();
  }

  /**
   * The controller refused the credentials of the current stream: a renewal after
   * REFUSED_RENEWAL_BACKOFF's wait, one pending at a time. A new stream clears it (#connect), so it
   * renews the certificate that stream presents, and it joins a renewal on its way as renew() does.
   */
  #refused(err: Error): void {
    if (this.#closed || this.#refusedTimer !== undefined) return;
    const delay = backoffDelay(this.#refusals++, this.#o.refusedBackoff ?? REFUSED_RENEWAL_BACKOFF);
    this.#refusedTimer = setTimeout(() => {
      this.#refusedTimer = undefined;
      this.renew('config-stream-refused', err.message);
    }, delay).unref();
  }

  #connect(attempt: number): void {
    const o = this.#o;
    o.signer.nodeCredentials().then(
      (node) => {
        if (this.#closed) return;
        const verify: grpc.VerifyOptions = {
          checkServerIdentity: (_host, cert) => {
            try {
              const id = spiffeIdOfCertificate(cert);
              return id.uri === o.controllerId ? undefined : new Error(`controller at ${o.controller} presented ${id.uri}, expected ${o.controllerId}`);
            } catch (err) {
              return err as Error;
            }
          },
        };
        const roots = Buffer.from(o.trustBundle().join(''));
        const client = agentConfigClient({
          target: o.controller,
          credentials: grpc.credentials.createSsl(roots, Buffer.from(node.keyPem), Buffer.from(node.certChain.join('')), verify),
          channelOptions: { 'grpc.ssl_target_name_override': 'weft-controller' },
          id: o.node,
          validate: (config) => o.validate(config),
        });
        const leaf = node.certChain[0]!;
        client.on('snapshot', (config, version) => o.onConfig(config, version));
        client.on('rejected', (err) => o.log.warn('config rejected, keeping the last good one', { error: err.message }));
        // What a stream already replaced says is not about the current one.
        client.on('disconnected', (err) => {
          o.log.warn('config stream disconnected; serving the last good config', { error: err?.message });
          if (client === this.#client && (err as Partial<grpc.ServiceError> | undefined)?.code === grpc.status.PERMISSION_DENIED) this.#refused(err!);
        });
        client.on('answered', () => {
          if (client !== this.#client) return;
          this.#refusals = 0;
          clearTimeout(this.#refusedTimer);
          this.#refusedTimer = undefined;
        });
        const previous = this.#client;
        this.#client = client;
        this.#leaf = leaf;
        this.#renewing = false;
        // A renewal waiting for a refusal of the stream replaced is not this one's.
        clearTimeout(this.#refusedTimer);
        this.#refusedTimer = undefined;
        previous?.close();
        clearTimeout(this.#timer);
        this.#timer = setTimeout(() => this.renew('scheduled'), Math.max(node.renewAt - Date.now(), 1_000) + 1_000).unref();
      },
      (err: Error) => {
        if (this.#closed) return;
        const delay = backoffDelay(attempt);
        o.log.warn('cannot get the node certificate for the config stream; retrying', { error: err.message, retryInMs: delay });
        clearTimeout(this.#timer);
        this.#timer = setTimeout(() => this.#connect(attempt + 1), delay).unref();
      },
    );
  }
}
