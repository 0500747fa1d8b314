// The datapath's public surface: what the rest of the agent (and weftctl) may use.
export {
  Datapath,
  CGROUP_PROGRAMS,
  DEFAULT_AGENT_PORT,
  DEFAULT_PIN_DIR,
  INBOUND_PROGRAM,
  LOOKUP_PROGRAM,
  MESH_PORTS,
  SPLICE_PROGRAM,
  type DatapathOptions,
  type EnrollOptions,
  type EnrolledPod,
  type LinkState,
  type PeerRegistration,
  type SplicedConnection,
  type SplicedPair,
  type SplicedSocket,
} from './datapath.ts';
export {
  COUNTER_FIELDS,
  POD_COUNTER_FIELDS,
  REFUSAL_COUNTERS,
  type CounterName,
  type Counters,
  type Destination,
  type Endpoint,
  type Mode,
  type OriginalDestination,
  type PodCounterName,
  type PodCounters,
  type Refusal,
} from './codecs.ts';
export * from './errors.ts';
