// What destinations did to an HBONE pool's sessions (lib/hbone/pool.ts), as one counter for the
// agent's and the waypoint's registries alike.
import { Counter, type Registry } from 'prom-client';
import type { HbonePoolStats } from '../hbone/index.ts';

/** Event label → the pool's stats field it follows. */
const EVENTS = {
  failed: 'sessionFailures',
  setup_timeout: 'sessionsSetupTimedOut',
  ping_timeout: 'sessionsPingTimedOut',
  no_streams: 'sessionsRetiredNoStreams',
  refused_over_limit: 'streamsRefusedOverLimit',
  throttled: 'sessionsThrottled',
  settings_timeout: 'sessionsSettingsTimedOut',
} as const satisfies Record<string, keyof HbonePoolStats>;

/**
 * Registers weft_hbone_client_session_events_total{event}, following `read` (the pool's stats) at
 * each scrape: `failed` (TCP, TLS, identity or HTTP/2 setup), `setup_timeout` (no SETTINGS within
 * the connect timeout), `ping_timeout` (a PING unanswered: the destination went silent),
 * `no_streams` (retired: the server takes no stream of ours), `refused_over_limit` (a CONNECT
 * refused unprocessed), `throttled` (its tunnels held more than the session buffer),
 * `settings_timeout` (the server ignored a shrunk window).
 */
export function registerHbonePoolMetrics(registry: Registry, read: () => HbonePoolStats): void {
  const counted = new Map<string, number>();
  new Counter({
    name: 'weft_hbone_client_session_events_total',
    help: 'Outbound HBONE sessions: setup failures (failed, setup_timeout), sessions torn down or retired because of their destination (ping_timeout, no_streams, settings_timeout), CONNECTs refused over the limit, sessions throttled for unread data',
    labelNames: ['event'],
    registers: [registry],
    collect() {
      const now = read();
      for (const [event, field] of Object.entries(EVENTS)) {
        const due = now[field] - (counted.get(event) ?? 0);
        if (due > 0) this.inc({ event }, due);
        counted.set(event, Math.max(now[field], counted.get(event) ?? 0));
      }
    },
  });
}
