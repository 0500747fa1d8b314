// Newline-delimited HTTP answers (a component's /flows stream), on either transport.
import type http from 'node:http';

/** Hands each non-empty line of `res` to `onLine`; resolves at its end (or when `signal` aborts). */
export function readLines(res: http.IncomingMessage, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let rest = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      rest += c;
      let nl: number;
      while ((nl = rest.indexOf('\n')) >= 0) {
        const line = rest.slice(0, nl);
        rest = rest.slice(nl + 1);
        if (line.trim()) onLine(line);
      }
    });
    res.on('end', () => resolve());
    res.on('close', () => resolve());
    res.on('error', (e) => (signal?.aborted ? resolve() : reject(e)));
  });
}
