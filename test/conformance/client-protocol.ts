// What the harness and the in-pod client (fixtures/client.ts) say to each other, one JSON line each.

/** A request as a conformance case states it. */
export interface ClientRequest {
  /**
   * `http` (HTTP/1.1, default), `h2c` (HTTP/2 prior knowledge), `grpc`, or `ws`: a WebSocket
   * (RFC 6455) that sends a text and a binary message and reports what came back (status 101 once
   * the handshake succeeded; `body` is `text=<reply>;binary=<hex of the reply>`).
   */
  protocol?: 'http' | 'h2c' | 'grpc' | 'ws';
  /** `name[:port]` as a client would dial it (`echo`, `echo-v1.conf`, `10.77.2.3:8080`). */
  host: string;
  /** HTTP: path with query, default `/`. */
  path?: string;
  /** HTTP method, default GET. */
  method?: string;
  /** gRPC method of weft.echo.Echo, default Echo. */
  grpcMethod?: 'Echo' | 'EchoTwo' | 'EchoThree';
  /** Request headers (gRPC: metadata); `Host` overrides the authority sent. */
  headers?: Record<string, string>;
}

/** What the echo backend reported about the request it received. */
export interface EchoSeen {
  pod: string;
  namespace: string;
  method: string;
  /** HTTP: path with query as received; gRPC: the method path. */
  path: string;
  headers: Record<string, string | string[]>;
}

export interface ClientResponse {
  /** HTTP status, or the gRPC status code; 0 when no answer came (see `error`). */
  status: number;
  /** Response headers, lower-case, every value. */
  headers: Record<string, string[]>;
  echo?: EchoSeen;
  /** Body start (HTTP) or gRPC details when the answer is not from the echo backend. */
  body?: string;
  error?: string;
}

export interface WireRequest {
  id: number;
  request: ClientRequest;
  count: number;
}

export interface WireResult {
  id: number;
  responses: ClientResponse[];
}
