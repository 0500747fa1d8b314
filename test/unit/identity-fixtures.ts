// Shared helpers for the identity tests: workload credentials from an in-process CA, and an
// HBONE-configured TLS echo server plus client on 127.0.0.1 for real handshakes.
import { connect as tlsConnect, createServer, type Server, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { CertificateAuthority, IssueOptions } from '../../lib/identity/ca.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from '../../lib/identity/csr.ts';
import type { IdentityError } from '../../lib/identity/errors.ts';
import {
  classifyTlsError, guardHboneServer, hboneClientOptions, hboneServerOptions, peerIdentity, secureContextOptions,
  type PeerExpectation, type TlsCredentials,
} from '../../lib/identity/tls.ts';

export const TD = 'cluster.local';
export const id = (ns: string, sa: string): string => `spiffe://${TD}/ns/${ns}/sa/${sa}`;

/** Key + certificate for `identity` signed by `ca`, trusting `trustBundle` (default: the CA's). */
export async function workloadCreds(ca: CertificateAuthority, identity: string, opts: IssueOptions & { trustBundle?: readonly string[] } = {}): Promise<TlsCredentials> {
  const { privateKey } = await generateKeyPair();
  const issued = ca.signCsr(createCsr(identity, privateKey), identity, opts);
  return { key: privateKeyToPem(privateKey), certChain: issued.certChain, trustBundle: opts.trustBundle ?? ca.trustBundle() };
}

/** A TLS echo server with the HBONE server options and guard; records peers and refusals. */
export class EchoServer {
  readonly server: Server;
  readonly failures: IdentityError[] = [];
  readonly peers: string[] = [];
  port = 0;

  constructor(creds: TlsCredentials, accept?: PeerExpectation) {
    this.server = createServer(hboneServerOptions({ credentials: creds }));
    guardHboneServer(this.server, { ...(accept ? { accept } : {}), onFailure: (err) => this.failures.push(err) });
    this.server.on('secureConnection', (socket: TLSSocket) => {
      if (socket.destroyed) return;
      this.peers.push(peerIdentity(socket).uri);
      socket.on('error', () => undefined);
      socket.pipe(socket);
    });
  }

  static async start(creds: TlsCredentials, accept?: PeerExpectation): Promise<EchoServer> {
    const s = new EchoServer(creds, accept);
    await new Promise<void>((resolve) => s.server.listen(0, '127.0.0.1', resolve));
    s.port = (s.server.address() as AddressInfo).port;
    return s;
  }

  /** Switches certificate and/or trust bundle for new connections. */
  update(creds: TlsCredentials): void {
    this.server.setSecureContext(secureContextOptions(creds));
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export interface Connection {
  socket: TLSSocket;
  /** SPIFFE ID of the server as seen by the client. */
  serverId: string;
  /** Sends `text` and resolves with the echo. */
  echo(text: string): Promise<string>;
}

/**
 * Connects as `creds` to the echo server expecting `expected`, and completes one echo round
 * trip (with TLS 1.3 the server's verdict on the client certificate arrives after the client's
 * handshake is done, so only a round trip proves acceptance). Rejects with a typed error.
 */
export async function connectHbone(port: number, creds: TlsCredentials, expected: PeerExpectation): Promise<Connection> {
  const socket = tlsConnect({ host: '127.0.0.1', port, ...hboneClientOptions(creds, expected) });
  const echo = (text: string) => new Promise<string>((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        cleanup();
        resolve(got);
      }
    };
    const onErr = (err: Error) => {
      cleanup();
      reject(classifyTlsError(err));
    };
    const onClose = () => {
      cleanup();
      reject(classifyTlsError(new Error('peer closed the connection right after the handshake; the server refused this client (certificate untrusted, expired or identity not accepted)')));
    };
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('error', onErr);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('error', onErr);
    socket.on('close', onClose);
    socket.write(text);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', (err) => reject(classifyTlsError(err)));
    socket.once('close', () => reject(classifyTlsError(new Error('peer closed the connection during the handshake'))));
  });
  const serverId = peerIdentity(socket).uri;
  await echo('hello');
  return { socket, serverId, echo };
}
