// The config stream's wire types and type URLs, shared by the controller's server and the client.
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type {
  AddressOwner,
  AgentConfig,
  AuthorizationPolicy,
  PeerAuthentication,
  RequestAuthentication,
  Route,
  Service,
  TrafficPolicy,
  Waypoint,
  WaypointConfig,
  Workload,
} from '../model/mesh.ts';

export const PROTO_PATH = fileURLToPath(new URL('../../proto/weft/xds.proto', import.meta.url));
export const SERVICE_NAME = 'weft.xds.v1.ConfigStream';

export const TYPE_URLS = {
  Workload: 'type.weft.dev/weft.model.Workload',
  Service: 'type.weft.dev/weft.model.Service',
  AuthorizationPolicy: 'type.weft.dev/weft.model.AuthorizationPolicy',
  PeerAuthentication: 'type.weft.dev/weft.model.PeerAuthentication',
  Waypoint: 'type.weft.dev/weft.model.Waypoint',
  TrafficPolicy: 'type.weft.dev/weft.model.TrafficPolicy',
  Route: 'type.weft.dev/weft.model.Route',
  AddressOwner: 'type.weft.dev/weft.model.AddressOwner',
  RequestAuthentication: 'type.weft.dev/weft.model.RequestAuthentication',
} as const;

export type ResourceType = keyof typeof TYPE_URLS;
export type TypeUrl = (typeof TYPE_URLS)[ResourceType];

/** The model type carried under each resource type. */
export interface ResourceBodies {
  Workload: Workload;
  Service: Service;
  AuthorizationPolicy: AuthorizationPolicy;
  PeerAuthentication: PeerAuthentication;
  Waypoint: Waypoint;
  TrafficPolicy: TrafficPolicy;
  Route: Route;
  AddressOwner: AddressOwner;
  RequestAuthentication: RequestAuthentication;
}

export type ClientKind = 'agent' | 'waypoint';

/** The types each kind of client subscribes to. */
export const CLIENT_TYPES: Readonly<Record<ClientKind, readonly ResourceType[]>> = {
  agent: ['Workload', 'Service', 'AuthorizationPolicy', 'PeerAuthentication', 'Waypoint', 'TrafficPolicy'],
  // AddressOwner: who holds each client address (a waypoint judges callers' for= as agents do);
  // not Workload: a waypoint needs none of a workload's other fields.
  // RequestAuthentication: the JWT rules of its Services (only a waypoint sees a request's token).
  waypoint: ['Service', 'Route', 'TrafficPolicy', 'AuthorizationPolicy', 'Waypoint', 'AddressOwner', 'RequestAuthentication'],
};

/**
 * Types the server still serves to a kind that no longer subscribes to them, so that clients of
 * the previous release keep working while a rollout replaces them: waypoints before AddressOwner
 * subscribed to every Workload.
 */
export const LEGACY_CLIENT_TYPES: Readonly<Record<ClientKind, readonly ResourceType[]>> = {
  agent: [],
  waypoint: ['Workload'],
};

const TYPE_BY_URL = new Map<string, ResourceType>(Object.entries(TYPE_URLS).map(([t, u]) => [u, t as ResourceType]));

export function resourceTypeOf(url: string): ResourceType | undefined {
  return TYPE_BY_URL.get(url);
}

export interface ClientNode {
  id: string;
  kind: string;
  namespace: string;
  user_agent: string;
}

export interface WireStatus {
  code: number;
  message: string;
}

export interface DeltaConfigRequest {
  node?: ClientNode | null;
  type_url: string;
  resource_names_subscribe: string[];
  resource_names_unsubscribe: string[];
  initial_resource_versions: Record<string, string>;
  response_nonce: string;
  error_detail?: WireStatus | null;
}

export interface WireResource {
  name: string;
  version: string;
  body: string;
}

export interface DeltaConfigResponse {
  system_version_info: string;
  type_url: string;
  resources: WireResource[];
  removed_resources: string[];
  nonce: string;
}

export type ConfigStreamCall = grpc.ServerDuplexStream<DeltaConfigRequest, DeltaConfigResponse>;
export type ConfigStreamClientCall = grpc.ClientDuplexStream<DeltaConfigRequest, DeltaConfigResponse>;

let loaded: grpc.GrpcObject | undefined;

/** The loaded proto package (cached). Fields keep their proto names (snake_case). */
export function loadConfigStreamProto(): grpc.GrpcObject {
  if (!loaded) {
    const def = protoLoader.loadSync(PROTO_PATH, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    loaded = grpc.loadPackageDefinition(def);
  }
  return loaded;
}

export function configStreamServiceDefinition(): grpc.ServiceDefinition {
  const pkg = loadConfigStreamProto() as unknown as { weft: { xds: { v1: { ConfigStream: grpc.ServiceClientConstructor } } } };
  return pkg.weft.xds.v1.ConfigStream.service;
}

export function configStreamClientConstructor(): grpc.ServiceClientConstructor {
  const pkg = loadConfigStreamProto() as unknown as { weft: { xds: { v1: { ConfigStream: grpc.ServiceClientConstructor } } } };
  return pkg.weft.xds.v1.ConfigStream;
}

/** Resources by type, then by name: what a client holds. */
export type ResourceSet = { [T in ResourceType]?: Map<string, ResourceBodies[T]> };

function values<T>(m: Map<string, T> | undefined): T[] {
  return m ? [...m.values()] : [];
}

export function agentConfigOf(node: string, set: ResourceSet): AgentConfig {
  return {
    node,
    workloads: values(set.Workload),
    services: values(set.Service),
    policies: values(set.AuthorizationPolicy),
    peerAuthentications: values(set.PeerAuthentication),
    waypoints: values(set.Waypoint),
    trafficPolicies: values(set.TrafficPolicy),
  };
}

export function waypointConfigOf(namespace: string, set: ResourceSet): WaypointConfig {
  return {
    namespace,
    services: values(set.Service),
    routes: values(set.Route),
    trafficPolicies: values(set.TrafficPolicy),
    policies: values(set.AuthorizationPolicy),
    requestAuthentications: values(set.RequestAuthentication),
    waypoints: values(set.Waypoint),
    addressOwners: values(set.AddressOwner),
  };
}
