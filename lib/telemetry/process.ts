// The metrics every Weft process exports besides its own: Node's process metrics with
// prom-client's standard names (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
// `nodejs_*`, unprefixed, as Istio's own components export Go's `process_*`), and the build it runs.
import { readFileSync } from 'node:fs';
import { Gauge, collectDefaultMetrics, type Registry } from 'prom-client';

export type Component = 'agent' | 'waypoint' | 'controller';

/**
 * The Istio component that plays the same role, for `istio_build{component}`: the version panels
 * of Istio's dashboards query `istio_build{component="ztunnel"}` (node proxies), `"proxy"`
 * (waypoints, Envoy) and `"pilot"` (istiod).
 */
export const ISTIO_COMPONENT: Record<Component, string> = { agent: 'ztunnel', waypoint: 'proxy', controller: 'pilot' };

let version: string | undefined;
/** The release (package.json `version`), read once. */
export function weftVersion(): string {
  if (version === undefined) {
    try {
      version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown';
    } catch {
      version = 'unknown';
    }
  }
  return version;
}

/**
 * Registers the process metrics and the build-info gauges in `registry` (once per registry):
 * - `istio_build{component,tag}` = 1, with Istio's component name for the role (ISTIO_COMPONENT);
 * - `weft_build_info{component,version,node_version}` = 1.
 */
export function registerProcessMetrics(registry: Registry, component: Component): void {
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const tag = weftVersion();
  new Gauge({ name: 'istio_build', help: 'Build of this component (Istio\'s metric: component and tag)', labelNames: ['component', 'tag'], registers })
    .set({ component: ISTIO_COMPONENT[component], tag }, 1);
  new Gauge({ name: 'weft_build_info', help: 'Build of this Weft component', labelNames: ['component', 'version', 'node_version'], registers })
    .set({ component, version: tag, node_version: process.versions.node }, 1);
}
