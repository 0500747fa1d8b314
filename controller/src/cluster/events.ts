// Kubernetes Events for the compiler's findings (a Service naming a Waypoint that does not exist, a
// route whose backend is missing, a policy whose target is gone), so `kubectl describe` and
// `kubectl get events` show them beside the object. One Event per (object, reason, message); a
// finding seen again bumps that Event's count and lastTimestamp instead of adding another, as the
// kubelet's recorder does. Only the leader records (see leader.ts), before its next compile: a
// tenant labelling thousands of its pods with a Waypoint that does not exist makes a finding each,
// so one call writes at most MAX_EVENT_WRITES_PER_RECORD Events (the rest at the next calls) and
// keeps at most MAX_TRACKED_EVENTS to bump, as client-go's EventCorrelator bounds a source's Events
// (k8s.io/client-go/tools/record/events_cache.go: a rate limit per object, an LRU of 4096).
import { CoreV1Api, PatchStrategy, setHeaderOptions, type CoreV1Event, type KubeConfig } from '@kubernetes/client-node';
import { CONTROLLER_NAME } from '../../../lib/defaults.ts';
import { KINDS, isMeshKind } from '../../../lib/model/objects.ts';
import type { CompileFinding } from '../compile.ts';
import { silentLogger, type Logger } from '../log.ts';

/** Event writes (creates and count bumps) one record() call makes at most; the findings left are written at the next calls. */
export const MAX_EVENT_WRITES_PER_RECORD = 100;
/** Events remembered to bump their count when their finding comes again (the least recently written go first), as client-go's LRU. */
export const MAX_TRACKED_EVENTS = 4096;

/** Where Events of cluster-scoped objects (Namespace, Node) are recorded, as Kubernetes records them. */
const CLUSTER_SCOPED_EVENTS_NAMESPACE = 'default';

export interface EventRecorderOptions {
  kubeConfig: KubeConfig;
  /** The reporting instance (pod name). */
  instance: string;
  logger?: Logger;
}

export class EventRecorder {
  readonly #api: CoreV1Api;
  readonly #o: EventRecorderOptions;
  readonly #log: Logger;
  /** finding fingerprint → the Event's name and count. */
  readonly #recorded = new Map<string, { name: string; namespace: string; count: number }>();
  /** Fingerprints of the findings of the last call: a finding still present is not recounted. */
  #current = new Set<string>();

  constructor(options: EventRecorderOptions) {
    this.#o = options;
    this.#api = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#log = options.logger ?? silentLogger;
  }

  /** How many Events are remembered to bump (at most MAX_TRACKED_EVENTS). */
  get tracked(): number {
    return this.#recorded.size;
  }

  /**
   * Records the findings that are new since the last call (a finding that persists is one Event),
   * at most MAX_EVENT_WRITES_PER_RECORD of them; the others are new again at the next call.
   */
  /** Writes the findings' new Events, at most MAX_EVENT_WRITES_PER_RECORD; true when some wait for the next call. */
  async record(findings: readonly CompileFinding[]): Promise<boolean> {
    const next = new Set<string>();
    let writes = 0;
    let deferred = 0;
    for (const f of findings) {
      const fp = JSON.stringify([f.kind, f.namespace, f.name, f.reason, f.message, f.apiVersion]);
      if (this.#current.has(fp)) {
        next.add(fp);
        continue;
      }
      if (writes >= MAX_EVENT_WRITES_PER_RECORD) {
        deferred++;
        continue;
      }
      writes++;
      try {
        await this.#emit(fp, f);
        next.add(fp);
      } catch (e) {
        this.#log.warn('event not recorded', { object: `${f.kind} ${f.namespace}/${f.name}`, reason: f.reason, error: (e as Error).message }); // tried again next time
      }
    }
    this.#current = next;
    if (deferred > 0) this.#log.warn('events deferred to the next compile (at most MAX_EVENT_WRITES_PER_RECORD written per compile; each finding is in weft_controller_findings)', { deferred, written: writes, perRecord: MAX_EVENT_WRITES_PER_RECORD });
    for (const fp of this.#recorded.keys()) {
      if (this.#recorded.size <= MAX_TRACKED_EVENTS) break;
      this.#recorded.delete(fp);
    }
    return deferred > 0;
  }

  async #emit(fp: string, f: CompileFinding): Promise<void> {
    const now = new Date();
    const prev = this.#recorded.get(fp);
    if (prev) {
      // The most recently written last: the first to go are the least recently written.
      this.#recorded.delete(fp);
      try {
        await this.#api.patchNamespacedEvent({ name: prev.name, namespace: prev.namespace, body: { count: prev.count + 1, lastTimestamp: now } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
        prev.count++;
        this.#recorded.set(fp, prev);
        return;
      } catch (e) {
        // The API server expired the Event (its TTL, an hour by default): a new one, not a patch
        // refused at every compile. Any other failure: tried again next time, the count unchanged.
        if ((e as { code?: number }).code !== 404) {
          this.#recorded.set(fp, prev);
          throw e;
        }
      }
    }
    const apiVersion = f.apiVersion ?? (isMeshKind(f.kind) ? KINDS[f.kind].apiVersion : 'v1');
    const name = `${f.name}.${Date.now().toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`;
    // A cluster-scoped object's (a Namespace's, a Node's) Events go to `default`, as Kubernetes
    // records them; an Event in namespace "" is refused, and was retried at every compile.
    const namespace = f.namespace || CLUSTER_SCOPED_EVENTS_NAMESPACE;
    const body: CoreV1Event = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name, namespace },
      involvedObject: { apiVersion, kind: f.kind, ...(f.namespace ? { namespace: f.namespace } : {}), name: f.name, fieldPath: f.path },
      reason: f.reason,
      message: f.message,
      type: 'Warning',
      count: 1,
      firstTimestamp: now,
      lastTimestamp: now,
      source: { component: CONTROLLER_NAME },
      reportingComponent: `weft.dev/${CONTROLLER_NAME}`,
      reportingInstance: this.#o.instance,
    };
    await this.#api.createNamespacedEvent({ namespace, body });
    this.#recorded.set(fp, { name, namespace, count: 1 });
  }
}
