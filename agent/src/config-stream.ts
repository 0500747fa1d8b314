// The agent's config stream: one DeltaConfig stream to the controller (lib/xds/client.ts), opened
// with this node's certificate (spiffe://<td>/node/<node>) so that the controller serves it only
// its node's config, and opened again whenever that certificate is renewed. Until the first
// stream is up it keeps retrying with backoff; an open stream keeps serving the last good config.
import * as grpc from '@grpc/grpc-js';
import { agentConfigClient, type ConfigClient } from '../../lib/xds/index.ts';
import { backoffDelay } from '../../lib/backoff.ts';
import { spiffeIdOfCertificate } from '../../lib/identity/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';

/** This node's certificate, as the node-credentials signer holds it (GrpcCertificateSigner). */
export interface NodeCredentialsSource {
  /** The node certificate, fetched (or renewed, once due) when needed. */
  nodeCredentials(): Promise<{ keyPem: string; certChain: readonly string[]; renewAt: number }>;
}

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
}

export class NodeConfigStream {
  readonly #o: NodeConfigStreamOptions;
  #client: ConfigClient<'agent'> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(o: NodeConfigStreamOptions) {
    this.#o = o;
  }

  /** True while a stream is up and the controller has answered on it. */
  get connected(): boolean {
    return this.#client?.connected ?? false;
  }

  /** Version of the last accepted config ('' before the first). */
  get version(): string {
    return this.#client?.version ?? '';
  }

  /** Opens the stream (once the node certificate is there). */
  open(): void {
    this.#connect(0);
  }

  /** Opens the stream again with the node certificate the signer holds now (e.g. the roots changed). */
  reopen(): void {
    if (this.#closed || !this.#client) return;
    this.#connect(0);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#client?.close();
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
        client.on('snapshot', (config, version) => o.onConfig(config, version));
        client.on('rejected', (err) => o.log.warn('config rejected, keeping the last good one', { error: err.message }));
        client.on('disconnected', (err) => o.log.warn('config stream disconnected; serving the last good config', { error: err?.message }));
        const previous = this.#client;
        this.#client = client;
        previous?.close();
        clearTimeout(this.#timer);
        this.#timer = setTimeout(() => this.#connect(0), Math.max(node.renewAt - Date.now(), 1_000) + 1_000).unref();
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
