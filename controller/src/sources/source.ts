// A source of input objects: the Kubernetes API (kube.ts) or a local config directory (files.ts).
// Sources deliver raw objects (validation is the store's job, so both sources reject the same
// things in the same words) and write status back where they can.
import type { MeshKind } from '../../../lib/model/objects.ts';

export interface RawObject {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: { name?: unknown; namespace?: unknown; resourceVersion?: unknown; generation?: unknown; [k: string]: unknown };
  [k: string]: unknown;
}

export type SourceEvent =
  /** Replaces every object of `kinds` (initial load, relist). */
  | { type: 'snapshot'; kinds: MeshKind[]; objects: RawObject[]; resourceVersion: string; origin?: string }
  | { type: 'upsert'; object: RawObject; resourceVersion: string; origin?: string }
  /** `group`: the API group the object was deleted from, for a kind read in two (Istio's security kinds); absent, the object held. */
  | { type: 'delete'; kind: MeshKind; namespace: string; name: string; group?: string; resourceVersion: string; origin?: string };

export type SourceHandler = (events: SourceEvent[]) => void;

/** What the controller decided about one object, for its status. */
export interface ObjectStatus {
  kind: MeshKind;
  namespace: string;
  name: string;
  generation?: number;
  /** Accepted (policies, routes) or Ready (waypoints). */
  ok: boolean;
  reason: string;
  message: string;
  /** Field at fault when not ok. */
  path?: string;
  /** The object's apiVersion when in another API group than its kind's own (security.istio.io): keyed apart (keyOf), no Weft status in Kubernetes. */
  apiVersion?: string;
  /** Waypoint address, when known. */
  address?: string;
  /**
   * HTTPRoute/GRPCRoute: one entry per Service parentRef (Gateway API status.parents, written
   * under Weft's controllerName; other controllers' entries are kept). Absent for a route refused
   * as invalid: then every Service parent gets Accepted=False with `reason`.
   */
  parents?: Array<{
    parentRef: { group?: string; kind?: string; name: string; namespace?: string; port?: number; sectionName?: string };
    conditions: Array<{ type: string; status: boolean; reason: string; message: string }>;
  }>;
}

export interface ConfigSource {
  readonly name: string;
  /** Starts watching; resolves once the initial snapshot has been handed to `handler`. */
  start(handler: SourceHandler): Promise<void>;
  stop(): Promise<void>;
  /** Writes an object's status back (Kubernetes: the status subresource). */
  writeStatus(status: ObjectStatus): Promise<void>;
}
