// Local config directory source: every *.yaml / *.yml / *.json file under the directory (recursively)
// holds one or more YAML documents, each a Kubernetes-shaped object. Watched with fs.watch and a
// debounce. A file that fails to parse is reported by file (and line) and the objects last read
// from it stay; an object that fails validation is reported by file and object name (by the
// store) and its last good version stays.
import { watch, type FSWatcher } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { KINDS, groupOf, isMeshKind, keyOf, objectKey, type MeshKind } from '../../../lib/model/objects.ts';
import { formatManifestProblem, parseManifest } from '../../../lib/model/manifest.ts';
import { silentLogger, type Logger } from '../log.ts';
import type { ConfigSource, ObjectStatus, RawObject, SourceEvent, SourceHandler } from './source.ts';

/** A config file could not be read or parsed; its previous objects stay in force. */
export class ConfigFileError extends Error {
  readonly code = 'WEFT_CONFIG_FILE';
  readonly file: string;
  constructor(file: string, message: string, keptPrevious = true) {
    super(`${file}: ${message}${keptPrevious ? ' (the objects last read from this file stay in force)' : ''}`);
    this.name = 'ConfigFileError';
    this.file = file;
  }
}

export interface ConfigDirSourceOptions {
  dir: string;
  /** Quiet time after a change before re-reading; default 50 ms. */
  debounceMs?: number;
  /** Namespace of namespaced objects that give none; default `default`. */
  defaultNamespace?: string;
  logger?: Logger;
  /** Called for each file that fails to parse. */
  onFileError?: (err: ConfigFileError) => void;
  /** Called for each status the controller computes (a directory has nowhere to write them). */
  onStatus?: (status: ObjectStatus) => void;
}

const EXTENSIONS = /\.(ya?ml|json)$/;
const ALL_KINDS = Object.keys(KINDS) as MeshKind[];

export class ConfigDirSource implements ConfigSource {
  readonly name = 'config-dir';
  readonly #o: ConfigDirSourceOptions;
  readonly #log: Logger;
  /** file → identity (key and API group, idFor) → JSON of the object last read from it. */
  #files = new Map<string, Map<string, string>>();
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #handler: SourceHandler | undefined;
  #version = 0;
  #scanning: Promise<void> = Promise.resolve();
  readonly #statuses = new Map<string, ObjectStatus>();

  constructor(options: ConfigDirSourceOptions) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
  }

  /** Statuses the controller reported, by `Kind/namespace/name`. */
  statuses(): ReadonlyMap<string, ObjectStatus> {
    return this.#statuses;
  }

  async start(handler: SourceHandler): Promise<void> {
    const st = await stat(this.#o.dir).catch(() => undefined);
    if (!st?.isDirectory()) throw new ConfigFileError(this.#o.dir, 'is not a readable directory; pass the config directory with --config-dir', false);
    this.#handler = handler;
    const objects: RawObject[] = [];
    for (const file of await this.#list()) {
      const parsed = await this.#read(file);
      if (!parsed) continue;
      this.#files.set(file, parsed.fingerprints);
      objects.push(...parsed.objects);
    }
    this.#reportDuplicates();
    handler([{ type: 'snapshot', kinds: ALL_KINDS, objects, resourceVersion: String(++this.#version) }]);
    this.#watcher = watch(this.#o.dir, { recursive: true }, () => this.#schedule());
    this.#watcher.on('error', (e) => this.#log.error('config directory watch failed', { dir: this.#o.dir, error: e.message }));
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#watcher?.close();
    this.#watcher = undefined;
    this.#handler = undefined;
    await this.#scanning;
  }

  async writeStatus(status: ObjectStatus): Promise<void> {
    const key = objectKey(status);
    // Already so (the controller re-checks statuses after a rescan): nothing new to report.
    if (isDeepStrictEqual(this.#statuses.get(key), status)) return;
    this.#statuses.set(key, status);
    this.#o.onStatus?.(status);
    const who = `${status.kind} ${status.namespace ? `${status.namespace}/` : ''}${status.name}${status.apiVersion ? ` (${status.apiVersion})` : ''}`;
    if (status.ok) this.#log.debug('status', { object: who, reason: status.reason });
    else this.#log.warn('status', { object: who, reason: status.reason, path: status.path, message: status.message });
  }

  /** Re-reads the directory now (tests; the watcher calls it after the debounce). */
  rescan(): Promise<void> {
    // A failed scan must not poison the chain: later changes are still read.
    this.#scanning = this.#scanning.catch(() => {}).then(() => this.#rescan());
    return this.#scanning;
  }

  #schedule(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.rescan().catch((e: Error) => this.#log.error('config directory scan failed; the previous objects stay in force', { dir: this.#o.dir, error: e.message }));
    }, this.#o.debounceMs ?? 50);
  }

  async #rescan(): Promise<void> {
    if (!this.#handler) return;
    const events: SourceEvent[] = [];
    const upserts: SourceEvent[] = [];
    const files = new Set(await this.#list());
    for (const [file, old] of this.#files) {
      if (files.has(file)) continue;
      this.#files.delete(file);
      for (const json of old.values()) events.push(deleteEvent(json, file, String(++this.#version)));
    }
    for (const file of files) {
      const parsed = await this.#read(file);
      if (!parsed) continue;
      const old = this.#files.get(file) ?? new Map<string, string>();
      for (const o of parsed.objects) {
        const key = objectKey(o);
        if (old.get(key) !== parsed.fingerprints.get(key)) upserts.push({ type: 'upsert', object: o, resourceVersion: '', origin: file });
      }
      for (const [key, json] of old) if (!parsed.fingerprints.has(key)) events.push(deleteEvent(json, file, String(++this.#version)));
      this.#files.set(file, parsed.fingerprints);
    }
    // Deletes first: an object moved to the other API group (its apiVersion edited) is not taken
    // for a second object of its name beside the one it replaces.
    for (const u of upserts) events.push({ ...u, resourceVersion: String(++this.#version) });
    // An object removed from one file but still defined in another comes back from that one.
    const resolved = events.map((e): SourceEvent => {
      if (e.type !== 'delete') return e;
      const key = keyOf(e.kind, isMeshKind(e.kind) && KINDS[e.kind].namespaced ? e.namespace : undefined, e.name, e.group);
      for (const [file, objects] of this.#files) {
        const json = objects.get(key);
        if (json !== undefined) return { type: 'upsert', object: JSON.parse(json) as RawObject, resourceVersion: e.resourceVersion, origin: file };
      }
      return e;
    });
    if (resolved.length > 0) {
      this.#reportDuplicates();
      this.#handler(resolved);
    }
  }

  /** Keys defined in more than one file (the last file read wins); reported once per scan. */
  #reportDuplicates(): void {
    const seen = new Map<string, string>();
    for (const [file, objects] of this.#files) {
      for (const key of objects.keys()) {
        const other = seen.get(key);
        if (other !== undefined) this.#log.warn('object defined in two files; the later one wins', { object: key, files: [other, file] });
        else seen.set(key, file);
      }
    }
  }

  async #list(): Promise<string[]> {
    try {
      const entries = await readdir(this.#o.dir, { recursive: true, withFileTypes: true });
      const out: string[] = [];
      for (const e of entries) {
        const rel = relative(this.#o.dir, join(e.parentPath, e.name));
        // Hidden files and folders are skipped: a mounted ConfigMap keeps its real files in
        // `..<timestamp>/` and exposes them through top-level symlinks, which are followed.
        if (!EXTENSIONS.test(e.name) || rel.split(sep).some((seg) => seg.startsWith('.'))) continue;
        if (e.isFile() || (e.isSymbolicLink() && (await stat(join(this.#o.dir, rel)).then((st) => st.isFile(), () => false)))) out.push(rel);
      }
      return out.sort();
    } catch (e) {
      this.#log.error('cannot read config directory', { dir: this.#o.dir, error: (e as Error).message });
      return [...this.#files.keys()];
    }
  }

  /** Objects of one file, or undefined (reported) when it does not parse. */
  async #read(file: string): Promise<{ objects: RawObject[]; fingerprints: Map<string, string> } | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.#o.dir, file), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { objects: [], fingerprints: new Map() };
      this.#fileError(new ConfigFileError(file, `cannot read: ${(e as Error).message}`));
      return undefined;
    }
    const parsed = parseManifest(text);
    for (const p of parsed.problems) {
      this.#fileError(new ConfigFileError(file, formatManifestProblem(p), p.fatal));
      if (p.fatal) return undefined;
    }
    const objects: RawObject[] = [];
    const fingerprints = new Map<string, string>();
    for (const o of parsed.objects) this.#add(o as RawObject, objects, fingerprints);
    return { objects, fingerprints };
  }

  #add(o: RawObject, objects: RawObject[], fingerprints: Map<string, string>): void {
    if (isMeshKind(o.kind) && KINDS[o.kind].namespaced && o.metadata && typeof o.metadata === 'object' && o.metadata.namespace === undefined) {
      o.metadata.namespace = this.#o.defaultNamespace ?? 'default';
    }
    objects.push(o);
    fingerprints.set(objectKey(o), JSON.stringify(o));
  }

  #fileError(err: ConfigFileError): void {
    this.#log.warn('config file refused', { file: err.file, error: err.message });
    this.#o.onFileError?.(err);
  }
}


/** The delete of an object last read from `file` as `json`, in its API group. */
function deleteEvent(json: string, file: string, resourceVersion: string): SourceEvent {
  const o = JSON.parse(json) as RawObject;
  const kind = o.kind as MeshKind;
  const namespace = isMeshKind(kind) && KINDS[kind].namespaced && typeof o.metadata?.namespace === 'string' ? o.metadata.namespace : '';
  return { type: 'delete', kind, namespace, name: String(o.metadata?.name ?? ''), ...(typeof o.apiVersion === 'string' ? { group: groupOf(o.apiVersion) } : {}), resourceVersion, origin: file };
}
