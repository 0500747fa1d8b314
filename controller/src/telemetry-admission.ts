// Which OTLP endpoints a Telemetry may send to. The agent is shared by every namespace of its node
// and runs in the node's network, so an endpoint a namespace names would have the node's agent
// POST that namespace's access logs to any address the node reaches (its own loopback services, a
// cloud metadata server, another tenant's collector): a request forgery from the node. Istio lets a
// Telemetry name only the providers the mesh's operator defined (MeshConfig extensionProviders,
// https://istio.io/latest/docs/tasks/observability/telemetry/); Weft's equivalent is the root
// namespace: a Telemetry there may name any endpoint, one elsewhere only an endpoint some
// Telemetry of the root namespace names. A Telemetry refused here does not apply (its workloads
// fall back to the levels above it) and its status names the field.
import type { Telemetry } from '../../lib/model/objects.ts';

export interface TelemetryRefusal {
  path: string;
  reason: 'EndpointNotAllowed';
  message: string;
}

const ENDPOINT_FIELDS = [
  ['spec.tracing.otlp.endpoint', (t: Telemetry) => t.spec?.tracing?.otlp?.endpoint],
  ['spec.accessLogging.otlp.endpoint', (t: Telemetry) => t.spec?.accessLogging?.otlp?.endpoint],
] as const;

/** The OTLP endpoints the root namespace's Telemetries name: the mesh's providers. */
export function meshTelemetryEndpoints(telemetries: readonly Telemetry[], rootNamespace: string): Set<string> {
  const out = new Set<string>();
  for (const t of telemetries) {
    if (t.metadata.namespace !== rootNamespace) continue;
    for (const [, get] of ENDPOINT_FIELDS) {
      const e = get(t);
      if (e !== undefined) out.add(e);
    }
  }
  return out;
}

export function admitTelemetry(t: Telemetry, rootNamespace: string, meshEndpoints: ReadonlySet<string>): TelemetryRefusal | undefined {
  if (t.metadata.namespace === rootNamespace) return undefined;
  for (const [path, get] of ENDPOINT_FIELDS) {
    const e = get(t);
    if (e === undefined || meshEndpoints.has(e)) continue;
    return {
      path,
      reason: 'EndpointNotAllowed',
      message: `OTLP endpoint "${e}" is not one of the mesh's (those a Telemetry in ${rootNamespace} names${meshEndpoints.size ? `: ${[...meshEndpoints].sort().join(', ')}` : '; it names none'}); node agents would send this namespace's telemetry there from the node's network. Ask the mesh operator to declare it in ${rootNamespace}`,
    };
  }
  return undefined;
}
