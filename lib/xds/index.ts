// Config stream: client and wire protocol.
export { ConfigClient, ConfigRejectedError, ConfigStreamProtocolError, agentConfigClient, waypointConfigClient } from './client.ts';
export type { ConfigClientOptions, SnapshotOf, ClientKind } from './client.ts';
export { TYPE_URLS, CLIENT_TYPES, SERVICE_NAME, PROTO_PATH } from './protocol.ts';
export type { ResourceType } from './protocol.ts';
