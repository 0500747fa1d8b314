// Live flows: the agent's and the waypoint's access-log entries, fanned out to whoever watches
// (`weftctl tap`, `weftctl dashboard`) as newline-delimited JSON over the admin port's `/flows`.
//
// A watcher never slows the proxy down: an entry is written to a watcher only while its socket
// takes it; a watcher whose socket is full (a slow terminal, a paused browser tab) misses entries
// until it drains, and each missed entry is counted (`dropped`, and a `{"type":"dropped"}` line
// the watcher gets once it drains). Nothing is queued per watcher beyond the socket's own buffer.
// A watcher whose access lapses (`signal`: the waypoint's debug grant expired, lib/debug-http.ts)
// gets a last `{"type":"closed","reason":...}` line and the stream ends.
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Entries kept for a watcher that asks for the recent past (`/flows?recent=1`). */
export const DEFAULT_TAP_RECENT = 256;
/** Watchers at once; beyond it a new one gets 503 (the admin port is local, but still bounded). */
export const DEFAULT_TAP_MAX_WATCHERS = 16;

export interface FlowTapOptions {
  /** Entries remembered for `?recent=1`. Default DEFAULT_TAP_RECENT. */
  recent?: number;
  /** Watchers at once. Default DEFAULT_TAP_MAX_WATCHERS. */
  maxWatchers?: number;
}

export interface FlowTapStats {
  watchers: number;
  published: number;
  /** Entries a watcher missed because its socket was full, over all watchers. */
  dropped: number;
}

interface Watcher {
  res: ServerResponse;
  blocked: boolean;
  missed: number;
}

/** A remembered entry: serialized only when someone reads it (a watcher, or `?recent=1`). */
interface Recent {
  entry: object;
  line: string | undefined;
}

export class FlowTap {
  /** A ring of the last #recentMax entries; #next is where the next one goes. */
  readonly #recent: Recent[] = [];
  #next = 0;
  readonly #recentMax: number;
  readonly #maxWatchers: number;
  readonly #watchers = new Set<Watcher>();
  #published = 0;
  #dropped = 0;

  constructor(opts: FlowTapOptions = {}) {
    this.#recentMax = opts.recent ?? DEFAULT_TAP_RECENT;
    this.#maxWatchers = opts.maxWatchers ?? DEFAULT_TAP_MAX_WATCHERS;
  }

  /**
   * Publishes one entry (an access-log object, not changed afterwards), with its JSON when the
   * caller already made it. Cheap when nobody watches: the entry is kept, not serialized.
   */
  publish(entry: object, json?: string): void {
    this.#published++;
    const r: Recent = { entry, line: json === undefined ? undefined : json + '\n' };
    if (this.#recentMax > 0) {
      this.#recent[this.#next] = r;
      this.#next = (this.#next + 1) % this.#recentMax;
    }
    if (this.#watchers.size === 0) return;
    const line = lineOf(r);
    for (const w of this.#watchers) this.#send(w, line);
  }

  stats(): FlowTapStats {
    return { watchers: this.#watchers.size, published: this.#published, dropped: this.#dropped };
  }

  /**
   * Serves `/flows`: NDJSON until the watcher goes away or `signal` aborts (then a last `closed`
   * line gives the abort's reason); `?recent=1` starts with the remembered entries.
   */
  serve(req: IncomingMessage, res: ServerResponse, signal?: AbortSignal): void {
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET', 'content-type': 'text/plain' }).end('flows are read-only: GET /flows\n');
      return;
    }
    if (this.#watchers.size >= this.#maxWatchers) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end(`${this.#maxWatchers} watchers already; try again later\n`);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    const w: Watcher = { res, blocked: false, missed: 0 };
    this.#watchers.add(w);
    res.on('drain', () => {
      w.blocked = false;
      if (w.missed > 0) {
        const missed = w.missed;
        w.missed = 0;
        this.#send(w, JSON.stringify({ type: 'dropped', count: missed }) + '\n');
      }
    });
    const gone = () => this.#watchers.delete(w);
    res.on('close', gone);
    req.on('close', gone);
    if (signal) {
      const lapsed = (): void => {
        gone();
        const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
        // Past a full socket too: the one line the watcher must not miss.
        if (!res.destroyed) res.end(JSON.stringify({ type: 'closed', reason, time: new Date().toISOString() }) + '\n');
      };
      signal.addEventListener('abort', lapsed, { once: true });
      res.on('close', () => signal.removeEventListener('abort', lapsed));
    }
    if (new URL(req.url ?? '/', 'http://x').searchParams.get('recent') === '1') {
      // Oldest first: from the slot the next entry would take, round the ring.
      const n = this.#recent.length;
      for (let i = 0; i < n; i++) this.#send(w, lineOf(this.#recent[(this.#next + i) % n]!));
    }
    // A first line, so a watcher knows the stream is open even when nothing flows.
    this.#send(w, JSON.stringify({ type: 'hello', time: new Date().toISOString() }) + '\n');
  }

  /** Ends every watcher's stream (the proxy is stopping). */
  close(): void {
    for (const w of this.#watchers) w.res.end();
    this.#watchers.clear();
  }

  #send(w: Watcher, line: string): void {
    if (w.blocked || w.res.destroyed) {
      w.missed++;
      this.#dropped++;
      return;
    }
    if (!w.res.write(line)) w.blocked = true;
  }
}

function lineOf(r: Recent): string {
  return (r.line ??= JSON.stringify(r.entry) + '\n');
}
