// What an incremental compile changed in a model map, so that publishing it looks at those names
// only: a map of the new model is recorded with the map of the previous model it was copied from
// and the names whose entry may differ (set, replaced or deleted). Keyed by the map itself, so a
// map built any other way (a full compile, a federation merge) has no record and is compared whole.

export interface MapDelta {
  /** The previous model's map this one was copied from, if it is still alive. */
  from: ReadonlyMap<string, unknown> | undefined;
  /** The only names whose entry may differ between `from` and the map. */
  names: ReadonlySet<string>;
}

// The previous map is held weakly: a strong reference would keep every earlier model's map alive,
// each through the record of the next.
const deltas = new WeakMap<ReadonlyMap<string, unknown>, { from: WeakRef<ReadonlyMap<string, unknown>>; names: ReadonlySet<string> }>();

export function recordDelta(map: ReadonlyMap<string, unknown>, from: ReadonlyMap<string, unknown>, names: ReadonlySet<string>): void {
  deltas.set(map, { from: new WeakRef(from), names });
}

export function deltaOf(map: ReadonlyMap<string, unknown>): MapDelta | undefined {
  const d = deltas.get(map);
  return d && { from: d.from.deref(), names: d.names };
}
