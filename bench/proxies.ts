// The reference tools of `make bench`: configuration text for nginx (the one backend every case
// hits), an stunnel mTLS pair and an HAProxy mTLS pair, and the certificates they use (made with
// the openssl CLI, as an operator would). Pure text builders plus one certificate helper.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';

/** The fixed body nginx answers every request with (64 bytes). */
export const NGINX_BODY = 'weft-bench-0123456789abcdef0123456789abcdef0123456789abcdefghij\n';

/** nginx: one worker, no access log, keep-alive without a request cap, a fixed 200 on every path. */
export function nginxConf(dir: string, port: number): string {
  return `daemon off;
master_process on;
worker_processes 1;
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {
    listen ${port} reuseport backlog=4096;
    default_type text/plain;
    location / { return 200 ${JSON.stringify(NGINX_BODY)}; }
  }
}
`;
}

export interface PairPorts {
  /** Where the client-side end listens (node1), HTTP and TCP (iperf3). */
  frontHttp: number;
  frontTcp: number;
  /** Where the server-side end listens for TLS from the client side (node2). */
  backHttp: number;
  backTcp: number;
}

export interface PairSpec {
  ports: PairPorts;
  /** node1's and node2's addresses on the wire. */
  clientNodeIp: string;
  serverNodeIp: string;
  /** The backends behind the server-side end. */
  httpTarget: string;
  tcpTarget: string;
  certs: PairCerts;
}

export interface PairCerts {
  ca: string;
  serverCert: string;
  serverKey: string;
  serverPem: string;
  clientCert: string;
  clientKey: string;
  clientPem: string;
}

/** A CA and two leaves (EC P-256) for the reference pairs, written into `dir`. */
export function makePairCerts(dir: string): PairCerts {
  const p = (name: string) => join(dir, name);
  const ossl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=weft-bench-ca', '-keyout', p('ca.key'), '-out', p('ca.crt'),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const leaf = (name: string, eku: string) => {
    ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`,
      '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`)]);
    writeFileSync(p(`${name}.ext`), `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${eku}\nsubjectAltName=DNS:${name}\n`);
    ossl(['x509', '-req', '-in', p(`${name}.csr`), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial',
      '-days', '2', '-extfile', p(`${name}.ext`), '-out', p(`${name}.crt`)]);
    execFileSync('sh', ['-c', `cat "$0" "$1" > "$2"`, p(`${name}.crt`), p(`${name}.key`), p(`${name}.pem`)]);
  };
  leaf('bench-server', 'serverAuth');
  leaf('bench-client', 'clientAuth');
  return {
    ca: p('ca.crt'),
    serverCert: p('bench-server.crt'), serverKey: p('bench-server.key'), serverPem: p('bench-server.pem'),
    clientCert: p('bench-client.crt'), clientKey: p('bench-client.key'), clientPem: p('bench-client.pem'),
  };
}

const STUNNEL_HEAD = 'foreground = yes\npid =\ndebug = 3\nsyslog = no\n';

/** stunnel, client side (node1): plaintext in, TLS 1.3 with a client certificate out. */
export function stunnelClientConf(s: PairSpec): string {
  const common = `client = yes\ncert = ${s.certs.clientCert}\nkey = ${s.certs.clientKey}\nCAfile = ${s.certs.ca}\n` +
    'verifyChain = yes\ncheckHost = bench-server\nsslVersionMin = TLSv1.3\n';
  return STUNNEL_HEAD +
    `[http]\naccept = ${s.clientNodeIp}:${s.ports.frontHttp}\nconnect = ${s.serverNodeIp}:${s.ports.backHttp}\n${common}` +
    `[tcp]\naccept = ${s.clientNodeIp}:${s.ports.frontTcp}\nconnect = ${s.serverNodeIp}:${s.ports.backTcp}\n${common}`;
}

/** stunnel, server side (node2): TLS 1.3 in, client certificate required, plaintext to the backend. */
export function stunnelServerConf(s: PairSpec): string {
  const common = `cert = ${s.certs.serverCert}\nkey = ${s.certs.serverKey}\nCAfile = ${s.certs.ca}\n` +
    'verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n';
  return STUNNEL_HEAD +
    `[http]\naccept = ${s.serverNodeIp}:${s.ports.backHttp}\nconnect = ${s.httpTarget}\n${common}` +
    `[tcp]\naccept = ${s.serverNodeIp}:${s.ports.backTcp}\nconnect = ${s.tcpTarget}\n${common}`;
}

// One thread per HAProxy, as an agent is one event loop; HTTP mode for requests (L7, keep-alive to
// the next hop), TCP mode for the bulk stream.
const HAPROXY_HEAD = `global
  nbthread 1
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
`;

/** HAProxy, client side (node1): HTTP in, HTTP over TLS 1.3 with a client certificate to node2. */
export function haproxyClientConf(s: PairSpec): string {
  const tls = `ssl crt ${s.certs.clientPem} ca-file ${s.certs.ca} verify required verifyhost bench-server`;
  return HAPROXY_HEAD + `frontend http_in
  mode http
  bind ${s.clientNodeIp}:${s.ports.frontHttp}
  default_backend to_node2
backend to_node2
  mode http
  http-reuse always
  server node2 ${s.serverNodeIp}:${s.ports.backHttp} ${tls}
listen tcp_in
  mode tcp
  bind ${s.clientNodeIp}:${s.ports.frontTcp}
  server node2 ${s.serverNodeIp}:${s.ports.backTcp} ${tls}
`;
}

/** HAProxy, server side (node2): TLS 1.3 in with a verified client certificate, HTTP to nginx. */
export function haproxyServerConf(s: PairSpec): string {
  const tls = `ssl crt ${s.certs.serverPem} ca-file ${s.certs.ca} verify required`;
  return HAPROXY_HEAD + `frontend mtls_in
  mode http
  bind ${s.serverNodeIp}:${s.ports.backHttp} ${tls}
  default_backend nginx
backend nginx
  mode http
  http-reuse always
  server web ${s.httpTarget}
listen tcp_in
  mode tcp
  bind ${s.serverNodeIp}:${s.ports.backTcp} ${tls}
  server iperf ${s.tcpTarget}
`;
}
