// In-memory source: objects handed over by code (embedding, benchmarks, tests). Status goes to a
// map the caller can read.
import { KINDS, objectKey, type MeshKind } from '../../../lib/model/objects.ts';
import type { ConfigSource, ObjectStatus, RawObject, SourceHandler } from './source.ts';

export class MemorySource implements ConfigSource {
  readonly name = 'memory';
  readonly #initial: RawObject[];
  #handler: SourceHandler | undefined;
  #version = 0;
  readonly statuses = new Map<string, ObjectStatus>();

  constructor(initial: readonly object[] = []) {
    this.#initial = initial.map((o) => o as RawObject);
  }

  async start(handler: SourceHandler): Promise<void> {
    this.#handler = handler;
    handler([{ type: 'snapshot', kinds: Object.keys(KINDS) as MeshKind[], objects: this.#initial, resourceVersion: String(++this.#version) }]);
  }

  async stop(): Promise<void> {
    this.#handler = undefined;
  }

  async writeStatus(status: ObjectStatus): Promise<void> {
    this.statuses.set(objectKey(status), status);
  }

  /** Adds or replaces objects. */
  upsert(...objects: object[]): void {
    this.#handler?.(objects.map((o) => ({ type: 'upsert' as const, object: o as RawObject, resourceVersion: String(++this.#version) })));
  }

  delete(kind: MeshKind, namespace: string, name: string): void {
    this.#handler?.([{ type: 'delete', kind, namespace, name, resourceVersion: String(++this.#version) }]);
  }
}
