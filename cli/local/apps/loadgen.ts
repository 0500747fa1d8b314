// Sample application for the local mesh: sends HTTP requests to a list of URLs at a steady rate,
// forever, and logs a summary line every few seconds (which versions answered, how many failed).
//   node cli/local/apps/loadgen.ts --rate 5 http://10.96.0.10/ http://10.96.0.20/reviews
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { rate: { type: 'string', default: '5' }, header: { type: 'string', multiple: true } } });
const interval = 1000 / Number(values.rate);
const headers = Object.fromEntries((values.header ?? []).map((h) => h.split(/:\s*/, 2) as [string, string]));
const agent = new http.Agent({ keepAlive: false });
const tally = new Map<string, number>();

function once(url: string): void {
  const req = http.get(url, { agent, headers, timeout: 5_000 }, (res) => {
    const who = `${res.statusCode} ${res.headers['x-served-by'] ?? '?'}`;
    tally.set(`${url} ${who}`, (tally.get(`${url} ${who}`) ?? 0) + 1);
    res.resume();
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e: Error & { code?: string }) => tally.set(`${url} error ${e.code ?? e.message}`, (tally.get(`${url} error ${e.code ?? e.message}`) ?? 0) + 1));
}

let i = 0;
setInterval(() => once(positionals[i++ % positionals.length]!), interval);
setInterval(() => {
  console.log(JSON.stringify({ time: new Date().toISOString(), msg: 'loadgen', last5s: Object.fromEntries(tally) }));
  tally.clear();
}, 5_000);
