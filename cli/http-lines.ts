// Newline-delimited HTTP answers (a component's /flows stream), on either transport.
import type http from 'node:http';

/**
 * The longest line taken: an access-log entry is a few KiB (its fields are bounded by the
 * proxies' header limits). A source that sends more without a newline (a pod wearing a component's
 * label, a broken component) would otherwise grow the reader without bound.
 */
export const MAX_LINE_CHARS = 1 << 20;

/** A newline-delimited answer held a line longer than MAX_LINE_CHARS; the stream was closed. */
export class LineTooLongError extends Error {
  readonly code = 'WEFT_LINE_TOO_LONG';
  constructor() {
    super(`a line longer than ${MAX_LINE_CHARS} characters: the stream was closed (not an access-log stream, or a broken one)`);
    this.name = 'LineTooLongError';
  }
}

/**
 * Hands each non-empty line of `res` to `onLine`; resolves at its end (or when `signal` aborts),
 * rejects with LineTooLongError (and closes `res`) at a line past MAX_LINE_CHARS.
 */
export function readLines(res: http.IncomingMessage, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let rest = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      // Only the new chunk can hold the next newline: `rest` has none.
      let from = rest.length;
      rest += c;
      let nl: number;
      while ((nl = rest.indexOf('\n', from)) >= 0) {
        const line = rest.slice(0, nl);
        rest = rest.slice(nl + 1);
        from = 0;
        if (line.length > MAX_LINE_CHARS) break;
        if (line.trim()) onLine(line);
      }
      if (rest.length > MAX_LINE_CHARS || nl >= 0) {
        res.destroy();
        reject(new LineTooLongError());
      }
    });
    res.on('end', () => resolve());
    res.on('close', () => resolve());
    res.on('error', (e) => (signal?.aborted ? resolve() : reject(e)));
  });
}
