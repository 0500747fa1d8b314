// The echo app's gRPC side: service `weft.echo.Echo` with unary methods Echo, EchoTwo and EchoThree
// (three names, so GRPCRoute method matches can tell them apart). Messages are JSON in the gRPC
// frame (no .proto to keep in step): the request is any object, the reply says which pod answered
// and which metadata it received, as the HTTP side does. Server and clients share this definition.
import * as grpc from '@grpc/grpc-js';

export const ECHO_GRPC_SERVICE = 'weft.echo.Echo';
export const ECHO_GRPC_METHODS = ['Echo', 'EchoTwo', 'EchoThree'] as const;
export type EchoGrpcMethod = (typeof ECHO_GRPC_METHODS)[number];

export interface EchoGrpcReply {
  pod: string;
  namespace: string;
  version: string;
  /** The gRPC path the server saw, `/weft.echo.Echo/<Method>`. */
  method: string;
  /** Request metadata as received: lower-case keys, every value of a key in order. */
  metadata: Record<string, string[]>;
}

const json = {
  serialize: (v: unknown): Buffer => Buffer.from(JSON.stringify(v ?? {})),
  deserialize: (b: Buffer): unknown => (b.length === 0 ? {} : JSON.parse(b.toString('utf8'))),
};

export function echoGrpcPath(method: EchoGrpcMethod): string {
  return `/${ECHO_GRPC_SERVICE}/${method}`;
}

/** grpc-js service definition for addService (JSON codec). */
export function echoGrpcDefinition(): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of ECHO_GRPC_METHODS) {
    def[m] = {
      path: echoGrpcPath(m), requestStream: false, responseStream: false, originalName: m,
      requestSerialize: json.serialize, requestDeserialize: json.deserialize,
      responseSerialize: json.serialize, responseDeserialize: json.deserialize,
    };
  }
  return def as grpc.ServiceDefinition;
}

/** Starts the gRPC echo on `port`; every method answers with an EchoGrpcReply. */
export function startEchoGrpc(port: number, who: { pod: string; namespace: string; version: string }): Promise<grpc.Server> {
  const server = new grpc.Server();
  const impl: grpc.UntypedServiceImplementation = {};
  for (const m of ECHO_GRPC_METHODS) {
    impl[m] = (call: grpc.ServerUnaryCall<unknown, EchoGrpcReply>, cb: grpc.sendUnaryData<EchoGrpcReply>) => {
      const metadata: Record<string, string[]> = {};
      for (const [k, v] of Object.entries(call.metadata.toJSON())) metadata[k] = v.map((x) => (typeof x === 'string' ? x : x.toString('base64')));
      cb(null, { ...who, method: echoGrpcPath(m), metadata });
    };
  }
  server.addService(echoGrpcDefinition(), impl);
  return new Promise((resolve, reject) => {
    server.bindAsync(`0.0.0.0:${port}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve(server)));
  });
}

/** One unary call; resolves with the gRPC status code, details and the reply (when OK). */
export function callEchoGrpc(client: grpc.Client, method: EchoGrpcMethod, metadata: Record<string, string>, deadlineMs: number): Promise<{ code: number; details: string; reply?: EchoGrpcReply }> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.add(k, v);
  return new Promise((resolve) => {
    client.makeUnaryRequest(echoGrpcPath(method), json.serialize, json.deserialize as (b: Buffer) => EchoGrpcReply, {}, md, { deadline: Date.now() + deadlineMs }, (err, reply) => {
      if (err) resolve({ code: err.code, details: err.details });
      else resolve({ code: grpc.status.OK, details: '', ...(reply ? { reply } : {}) });
    });
  });
}
