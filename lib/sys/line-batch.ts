// Log lines written once per event-loop turn instead of once each: stdout on a pipe or a file is a
// synchronous write(2) per call on Linux, so a per-request access log line cost each request a
// syscall on the hot path (issue 20). Lines keep their order; a process exit flushes what is left.

/** Flush at once above this many bytes buffered (bounds memory when a turn logs a burst). */
export const LINE_BATCH_MAX_BYTES = 64 * 1024;

export interface LineBatch {
  /** Queues one line (a newline is added). */
  (line: string): void;
  /** Writes everything queued now. */
  flush(): void;
}

/**
 * A line writer that queues lines and hands them to `write` joined, at the end of the current
 * event-loop turn (setImmediate), when LINE_BATCH_MAX_BYTES are queued, or on process exit.
 */
export function lineBatch(write: (chunk: string) => void = (chunk) => { process.stdout.write(chunk); }): LineBatch {
  let queued: string[] = [];
  let bytes = 0;
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (queued.length === 0) return;
    const chunk = queued.join('\n') + '\n';
    queued = [];
    bytes = 0;
    write(chunk);
  };
  const onFlush = (): void => { flush(); };
  const batch = ((line: string): void => {
    queued.push(line);
    bytes += line.length + 1;
    if (bytes >= LINE_BATCH_MAX_BYTES) { flush(); return; }
    if (!scheduled) {
      scheduled = true;
      setImmediate(onFlush);
    }
  }) as LineBatch;
  batch.flush = flush;
  process.on('exit', onFlush);
  return batch;
}

let stdout: LineBatch | undefined;

/** The process's one batched writer to stdout (shared, so that lines of all writers keep their order). */
export function stdoutLines(): LineBatch {
  stdout ??= lineBatch();
  return stdout;
}
