import { Socket } from 'node:net';
import { constants as h2 } from 'node:http2';
import type { Duplex } from 'node:stream';
import { isPooledChunk, releaseChunk } from './read-pool.ts';

/** What a finished tunnel did, for telemetry and access logs. */
export interface PipeResult {
  /** Bytes read from `a` and written to `b`. */
  bytesAtoB: number;
  /** Bytes read from `b` and written to `a`. */
  bytesBtoA: number;
  /** The first error on either side, when the tunnel did not end cleanly. */
  error?: Error;
  /** Which side failed or was reset first, when one did. */
  abortedBy?: 'a' | 'b';
  /** No bytes went either way for `idleTimeoutMs`: the pipe closed both sides itself (no peer reset them). */
  idledOut?: boolean;
}

export interface PipeOptions {
  /**
   * Make net.Socket sides allowHalfOpen so that a FIN from one peer half-closes only that direction
   * (default true). Without it Node ends a socket's writable side as soon as its readable side ends.
   */
  halfClose?: boolean;
  /**
   * Bytes a destination may hold in its write buffer before the source is paused (default
   * DEFAULT_PIPE_BUFFER). Streams ask for a pause at their own, smaller high-water mark on nearly
   * every 64 KiB chunk; pausing and resuming that often costs more than the copy.
   */
  maxBuffered?: number;
  /**
   * Closes both sides once no bytes have gone either way for this long (Envoy's tcp_proxy
   * idle_timeout); the result says `idledOut`. Default: never.
   */
  idleTimeoutMs?: number;
}

/** Chunks at least this big start a write batch (see the pipe's data handlers). */
const CORK_MIN_CHUNK = 8 * 1024;

/** Per direction and tunnel: bounds memory at 2 x this per tunnel when the far side is slow. */
export const DEFAULT_PIPE_BUFFER = 256 * 1024;

interface Http2StreamLike extends Duplex {
  readonly rstCode: number | undefined;
  readonly closed: boolean;
  close(code?: number): void;
}

function isHttp2Stream(d: Duplex): d is Http2StreamLike {
  return 'rstCode' in d && typeof (d as Partial<Http2StreamLike>).close === 'function';
}

/**
 * Tears one side down the way RFC 9113 section 8.5 asks a CONNECT proxy to: a TCP error or RST
 * becomes RST_STREAM(CONNECT_ERROR) and a stream error becomes a TCP RST.
 */
export function abortSide(d: Duplex): void {
  if (d.destroyed) return;
  if (isHttp2Stream(d)) {
    if (d.closed) return;
    // close() ends the writable side first, and Node flushes that END_STREAM before the RST, so the
    // far side would see a clean FIN. destroy(err) resets without it (as INTERNAL_ERROR).
    if (d.writableEnded) d.close(h2.NGHTTP2_CONNECT_ERROR);
    else d.destroy(new Error('HBONE tunnel peer reset'));
    return;
  }
  if (d instanceof Socket) {
    try {
      d.resetAndDestroy();
      return;
    } catch {
      // Not a TCP handle (TLS socket, pipe): a plain destroy is the closest thing.
    }
  }
  d.destroy();
}

/**
 * Copies a → b and b → a with backpressure until both directions are done. An end on one side's
 * readable ends the other side's writable (half-close) while the opposite direction keeps flowing.
 * An error, reset or premature close on either side aborts the other side. The promise never
 * rejects; it resolves once both sides are closed.
 */
export function pipeBidirectional(a: Duplex, b: Duplex, opts: PipeOptions = {}): Promise<PipeResult> {
  if (opts.halfClose !== false) {
    if (a instanceof Socket) a.allowHalfOpen = true;
    if (b instanceof Socket) b.allowHalfOpen = true;
  }
  const maxBuffered = opts.maxBuffered ?? DEFAULT_PIPE_BUFFER;
  return new Promise<PipeResult>((resolve) => {
    const result: PipeResult = { bytesAtoB: 0, bytesBtoA: 0 };
    let aborted = false;
    let doneAtoB = false;
    let doneBtoA = false;
    let closedA = a.destroyed;
    let closedB = b.destroyed;
    let settled = false;

    const idleMs = opts.idleTimeoutMs ?? 0;
    const idle = idleMs > 0
      ? setTimeout(() => {
        // Both sides closed by the pipe: neither peer aborted it.
        result.idledOut = true;
        aborted = true;
        a.destroy();
        b.destroy();
      }, idleMs)
      : undefined;

    const settle = (): void => {
      if (settled || !closedA || !closedB) return;
      settled = true;
      clearTimeout(idle);
      a.off('data', onDataA).off('end', onEndA).off('error', onErrorA).off('close', onCloseA).off('drain', onDrainA);
      b.off('data', onDataB).off('end', onEndB).off('error', onErrorB).off('close', onCloseB).off('drain', onDrainB);
      // Late errors from teardown must not become uncaught exceptions.
      a.on('error', noop);
      b.on('error', noop);
      resolve(result);
    };

    const abort = (side: 'a' | 'b', err: Error | undefined): void => {
      if (err && !result.error) result.error = err;
      if (aborted) return;
      aborted = true;
      result.abortedBy = side;
      if (side === 'a') { abortSide(b); if (!a.destroyed) a.destroy(); }
      else { abortSide(a); if (!b.destroyed) b.destroy(); }
    };

    const maybeFinish = (): void => {
      // A side that closed after its end was passed on can take nothing more (a CONNECT stream the
      // client closed with RST_STREAM(NO_ERROR)): once the other side has taken what was written
      // to it, it goes too, rather than stay open for a direction nobody can deliver.
      if (doneAtoB && closedA && !doneBtoA) { if (!b.destroyed) b.destroy(); return; }
      if (doneBtoA && closedB && !doneAtoB) { if (!a.destroyed) a.destroy(); return; }
      if (!doneAtoB || !doneBtoA) return;
      // Both directions delivered their FIN; release whatever does not close on its own.
      if (!a.destroyed) a.destroy();
      if (!b.destroyed) b.destroy();
    };

    // During bulk transfer one read from a TLS socket surfaces as several chunks (DATA frames split
    // at TLS record boundaries). Corking the destination until the event loop's check phase turns
    // them into one writev instead of a syscall each. Small chunks (request/response traffic) that
    // do not follow a large one are written at once, so they wait for nothing.
    let corkedA = false;
    let corkedB = false;
    const uncorkA = (): void => { corkedA = false; a.uncork(); };
    const uncorkB = (): void => { corkedB = false; b.uncork(); };
    const onDataA = (chunk: Buffer): void => {
      idle?.refresh();
      result.bytesAtoB += chunk.length;
      if (!corkedB && chunk.length >= CORK_MIN_CHUNK) { corkedB = true; b.cork(); setImmediate(uncorkB); }
      if (!write(b, chunk) && b.writableLength >= maxBuffered) a.pause();
    };
    const onDataB = (chunk: Buffer): void => {
      idle?.refresh();
      result.bytesBtoA += chunk.length;
      if (!corkedA && chunk.length >= CORK_MIN_CHUNK) { corkedA = true; a.cork(); setImmediate(uncorkA); }
      if (!write(a, chunk) && a.writableLength >= maxBuffered) b.pause();
    };
    const onDrainA = (): void => { b.resume(); };
    const onDrainB = (): void => { a.resume(); };
    const onEndA = (): void => {
      // Node ends an Http2Stream's readable side on RST_STREAM too; that is a reset, not a FIN.
      const reset = resetError(a);
      if (reset) { abort('a', reset); return; }
      b.end(() => { doneAtoB = true; maybeFinish(); });
    };
    const onEndB = (): void => {
      const reset = resetError(b);
      if (reset) { abort('b', reset); return; }
      a.end(() => { doneBtoA = true; maybeFinish(); });
    };
    const onErrorA = (err: Error): void => { abort('a', err); };
    const onErrorB = (err: Error): void => { abort('b', err); };
    const onCloseA = (): void => {
      closedA = true;
      const reset = resetError(a);
      if (reset || !a.readableEnded || !(a.writableFinished || doneBtoA)) abort('a', reset);
      else maybeFinish();
      settle();
    };
    const onCloseB = (): void => {
      closedB = true;
      const reset = resetError(b);
      if (reset || !b.readableEnded || !(b.writableFinished || doneAtoB)) abort('b', reset);
      else maybeFinish();
      settle();
    };

    a.on('data', onDataA).on('end', onEndA).on('error', onErrorA).on('close', onCloseA).on('drain', onDrainA);
    b.on('data', onDataB).on('end', onEndB).on('error', onErrorB).on('close', onCloseB).on('drain', onDrainB);
    // A side whose readable ended before the pipe began (a CONNECT that carried END_STREAM before
    // its answer) emits no 'end' again: its end is passed on now.
    if (a.readableEnded && !closedA) onEndA();
    if (b.readableEnded && !closedB) onEndB();
    if (closedA) abort('a', resetError(a));
    if (closedB) abort('b', resetError(b));
    settle();
  });
}

/**
 * Writes a chunk read from the other side. A chunk of the read pool (read-pool.ts: a socket that
 * reads through it) goes back to the pool from this write's callback, which Node calls once the
 * destination no longer reads its bytes, also when the write fails or is cancelled.
 */
function write(to: Duplex, chunk: Buffer): boolean {
  return isPooledChunk(chunk) ? to.write(chunk, () => releaseChunk(chunk)) : to.write(chunk);
}

function resetError(d: Duplex): Error | undefined {
  if (isHttp2Stream(d)) {
    const code = d.rstCode;
    if (code !== undefined && code !== h2.NGHTTP2_NO_ERROR) {
      const err = new Error(`HTTP/2 stream reset with code ${code}`) as Error & { code: string };
      err.code = 'ERR_HTTP2_STREAM_RESET';
      return err;
    }
    return undefined;
  }
  return undefined;
}

function noop(): void {}
