// Counters and histograms that share their label sets, for metrics recorded on every request.
//
// prom-client's Counter and Histogram validate, sort and hash the label object on every inc() and
// observe(): with Istio's 25 request labels and four metrics per request, that was about a tenth
// of the waypoint's CPU (docs/PERFORMANCE.md, "cheaper request telemetry"). A SeriesTable finds a
// label set once per request (one Map lookup on its values joined) and updates every family of it
// in place. Each family is registered in the prom-client Registry as a metric of its own, so
// /metrics, getSingleMetric() and registry merges see it exactly as they saw a prom-client metric:
// the same names, label order and exposition text (test/unit/telemetry-series.test.ts compares them).
import type { Metric, Registry } from 'prom-client';

export interface FamilySpec {
  name: string;
  help: string;
  /** A histogram's upper bounds, ascending; absent for a counter. */
  buckets?: readonly number[];
}

interface Family {
  spec: FamilySpec;
  /** Where this family's numbers start in a series' array. */
  offset: number;
  buckets: readonly number[] | undefined;
}

/** One label set: its values in every family of the table. */
export class Series {
  readonly labels: Readonly<Record<string, string>>;
  /** @internal the label values, in the table's label order (to tell a key collision apart). */
  readonly values: readonly string[];
  /** Per family, from its offset: a counter's value; a histogram's per-bucket counts, then sum and count. */
  readonly numbers: Float64Array;
  readonly #families: readonly Family[];

  constructor(labels: Record<string, string>, values: readonly string[], families: readonly Family[], size: number) {
    this.labels = labels;
    this.values = values;
    this.#families = families;
    this.numbers = new Float64Array(size);
  }

  /** Adds `n` (≥ 0) to the counter family at `index`. */
  inc(index: number, n = 1): void {
    if (n >= 0 && Number.isFinite(n)) this.numbers[this.#families[index]!.offset] += n;
  }

  /** Observes `value` in the histogram family at `index`; a value that is not a finite number is left out. */
  observe(index: number, value: number): void {
    if (!Number.isFinite(value)) return;
    const f = this.#families[index]!;
    const bounds = f.buckets!;
    const n = this.numbers;
    // As prom-client: the first bound at or above the value; above all of them only +Inf (the count).
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]!) { n[f.offset + i]! += 1; break; }
    }
    n[f.offset + bounds.length] += value;
    n[f.offset + bounds.length + 1] += 1;
  }
}

/** prom-client's shape of one exported value. */
interface ExportedValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
  sharedLabels?: Record<string, string>;
  /** Exemplars are not kept; prom-client's entries carry the key all the same (null on buckets). */
  exemplar?: null | undefined;
}

export class SeriesTable<L extends string> {
  readonly labelNames: readonly L[];
  readonly #families: Family[] = [];
  readonly #size: number;
  #series = new Map<string, Series>();

  constructor(registry: Registry, labelNames: readonly L[], families: readonly FamilySpec[]) {
    this.labelNames = labelNames;
    let size = 0;
    for (const spec of families) {
      if (spec.buckets && spec.buckets.some((b, i) => i > 0 && b <= spec.buckets![i - 1]!)) throw new Error(`${spec.name}: buckets must ascend`);
      this.#families.push({ spec, offset: size, buckets: spec.buckets });
      size += spec.buckets ? spec.buckets.length + 2 : 1;
    }
    this.#size = size;
    for (let i = 0; i < this.#families.length; i++) registry.registerMetric(this.#view(i) as unknown as Metric);
  }

  /** The series of one label set, its values in `labelNames` order; created on first use. */
  get(values: readonly string[]): Series {
    const key = values.join('\0');
    const found = this.#series.get(key);
    if (found && sameValues(found.values, values)) return found;
    // A value holding the separator can make two label sets join alike: those are keyed apart, by JSON.
    const k = found ? `\u0001${JSON.stringify(values)}` : key;
    const again = found ? this.#series.get(k) : undefined;
    if (again) return again;
    const labels: Record<string, string> = {};
    for (let i = 0; i < this.labelNames.length; i++) labels[this.labelNames[i]!] = values[i] ?? '';
    const s = new Series(labels, values.slice(), this.#families, this.#size);
    this.#series.set(k, s);
    return s;
  }

  /** Forgets every series (prom-client's registry.resetMetrics()). */
  reset(): void {
    this.#series = new Map();
  }

  /** One family as a metric of the prom-client Registry. */
  #view(index: number): object {
    const f = this.#families[index]!;
    const table = this;
    const type = f.buckets ? 'histogram' : 'counter';
    const exported = (): ExportedValue[] => {
      const out: ExportedValue[] = [];
      for (const s of table.#series.values()) {
        const n = s.numbers;
        if (!f.buckets) {
          out.push({ value: n[f.offset]!, labels: { ...s.labels } });
          continue;
        }
        const bucket = `${f.spec.name}_bucket`;
        let acc = 0;
        for (let i = 0; i < f.buckets.length; i++) {
          acc += n[f.offset + i]!;
          out.push({ value: acc, labels: { le: f.buckets[i]! }, metricName: bucket, exemplar: null, sharedLabels: s.labels });
        }
        const count = n[f.offset + f.buckets.length + 1]!;
        out.push({ value: count, labels: { le: '+Inf' }, metricName: bucket, exemplar: null, sharedLabels: s.labels });
        out.push({ value: n[f.offset + f.buckets.length]!, labels: {}, metricName: `${f.spec.name}_sum`, exemplar: undefined, sharedLabels: s.labels });
        out.push({ value: count, labels: {}, metricName: `${f.spec.name}_count`, exemplar: undefined, sharedLabels: s.labels });
      }
      return out;
    };
    return {
      name: f.spec.name,
      help: f.spec.help,
      type,
      aggregator: 'sum',
      // The registry writes /metrics from this one: histogram lines carry `le` first, then the set's labels.
      getForPromString: async () => ({ name: f.spec.name, help: f.spec.help, type, values: exported(), aggregator: 'sum' }),
      // What getSingleMetric(...).get() and getMetricsAsJSON() give: every label in `labels`.
      get: async () => ({
        name: f.spec.name, help: f.spec.help, type, aggregator: 'sum',
        values: exported().map(({ sharedLabels, labels, ...v }) => ({ ...v, labels: { ...labels, ...sharedLabels } })),
      }),
      reset: () => table.reset(),
    };
  }
}

function sameValues(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
