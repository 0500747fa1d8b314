// The agent's Prometheus metrics, with the names and labels Istio users already graph.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { CertManager } from './certs/index.ts';

export const TCP_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_service',
  'connection_security_policy',
] as const;
export type TcpLabels = Partial<Record<(typeof TCP_LABELS)[number], string>>;

export class AgentMetrics {
  readonly registry = new Registry();
  readonly opened: Counter<(typeof TCP_LABELS)[number]>;
  readonly closed: Counter<(typeof TCP_LABELS)[number]>;
  readonly sent: Counter<(typeof TCP_LABELS)[number]>;
  readonly received: Counter<(typeof TCP_LABELS)[number]>;
  readonly denied: Counter<'reporter' | 'reason' | 'destination_workload' | 'destination_workload_namespace'>;
  readonly failed: Counter<'reporter' | 'reason'>;
  readonly forwardedIgnored: Counter<'reason'>;
  readonly active: Gauge<'direction'>;

  constructor() {
    const registers = [this.registry];
    this.opened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections opened', labelNames: TCP_LABELS, registers });
    this.closed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed', labelNames: TCP_LABELS, registers });
    this.sent = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent toward the destination', labelNames: TCP_LABELS, registers });
    this.received = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received from the destination', labelNames: TCP_LABELS, registers });
    const metrics = this;
    this.denied = new Counter({
      name: 'weft_connections_denied_total',
      help: 'Connections refused by authorization, identity or mTLS mode, by reason (reporter="kernel": refused by the BPF programs)',
      labelNames: ['reporter', 'reason', 'destination_workload', 'destination_workload_namespace'],
      registers,
      collect() {
        metrics.#refreshKernel?.();
      },
    });
    this.failed = new Counter({ name: 'weft_connections_failed_total', help: 'Connections that could not be established, by reason', labelNames: ['reporter', 'reason'], registers });
    this.forwardedIgnored = new Counter({
      name: 'weft_hbone_forwarded_ignored_total',
      help: 'HBONE forwarded for= claims not honoured (the peer may not speak for that client), by reason',
      labelNames: ['reason'],
      registers,
    });
    this.active = new Gauge({ name: 'weft_connections_active', help: 'Connections currently proxied', labelNames: ['direction'], registers });
    collectDefaultMetrics({ register: this.registry });
  }

  #certs: CertManager | undefined;
  #kernelSeen = new Map<string, number>();
  #refreshKernel: (() => void) | undefined;

  /**
   * Refusals the kernel made before any connection reached the agent (a RST to a STRICT pod, a
   * dropped fragment, IPv6, no agent listener), added at each scrape to
   * weft_connections_denied_total{reporter="kernel", reason=<BPF counter>}; `read` returns the
   * node-wide BPF counters by name.
   */
  watchKernelRefusals(read: () => Record<string, number>): void {
    const seen = this.#kernelSeen;
    this.#refreshKernel = () => {
      let now: Record<string, number>;
      try { now = read(); } catch { return; }
      for (const [reason, n] of Object.entries(now)) {
        const delta = n - (seen.get(reason) ?? 0);
        if (delta > 0) this.denied.inc({ reporter: 'kernel', reason, destination_workload: 'unknown', destination_workload_namespace: 'unknown' }, delta);
        seen.set(reason, n);
      }
    };
  }

  /**
   * Certificate metrics of `certs` (call once, after creating the CertManager):
   * - weft_certificate_renewal_failures_total{reason}: failed signing attempts (initial issue or
   *   renewal), by error code (WEFT_CA_UNAVAILABLE while the controller is down);
   * - weft_certificate_rotations_total: certificates replaced by a renewed one;
   * - weft_certificates{state}: certificates held, by state (valid, renewing, expired).
   */
  watchCertificates(certs: CertManager): void {
    if (this.#certs) throw new Error('AgentMetrics.watchCertificates: already watching a certificate manager');
    this.#certs = certs;
    const registers = [this.registry];
    const failures = new Counter({
      name: 'weft_certificate_renewal_failures_total',
      help: 'Failed attempts to get a workload certificate signed (initial or renewal), by error code',
      labelNames: ['reason'],
      registers,
    });
    const rotations = new Counter({ name: 'weft_certificate_rotations_total', help: 'Workload certificates replaced by a renewed one', registers });
    new Gauge({
      name: 'weft_certificates',
      help: 'Workload certificates held, by state (valid, renewing, expired)',
      labelNames: ['state'],
      registers,
      collect() {
        const counts = { valid: 0, renewing: 0, expired: 0 };
        for (const c of certs.list()) counts[c.state]++;
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    });
    certs.on('renewalFailed', (_identity, err) => failures.inc({ reason: err.code }));
    certs.on('rotated', () => rotations.inc());
  }
}
