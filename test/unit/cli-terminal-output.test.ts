// weftctl prints what others wrote (object names and fields from a tenant's manifests or the API,
// request paths and headers from live flows) to an operator's terminal. A control character in
// that data must reach the terminal as visible text, never as a control: ESC starts ANSI/OSC
// sequences (colours, a window title, OSC 52 which writes the clipboard), CR overwrites the line
// being read, BEL, and C1 controls (U+0080-U+009F; U+009B is CSI to a terminal that takes 8-bit
// controls). The class of CVE-2021-25743 (kubectl, fixed by kubernetes/kubernetes#112553); ECMA-48
// section 5. JSON and YAML output stay valid and carry the exact values.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { parse } from 'yaml';
import { weftctl } from '../e2e/weftctl-run.ts';
import { flowLine } from '../../cli/commands/tap.ts';
import { table, terminalSafe } from '../../cli/commands/output.ts';
import type { Flow } from '../../cli/flows.ts';

/** C0 controls but TAB and LF, DEL, C1 controls: what must never reach a terminal raw. */
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/;

const dir = mkdtempSync(join(tmpdir(), 'weft-term-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const NAME = 'evil\x1b]52;c;ZWNobyBwd25lZA==\x07\rOVERWRITTEN\u009b2J';
const HOST = 'x\x1b]0;title\x07.example';
const manifest = join(dir, 'evil.yaml');
writeFileSync(manifest, [
  'apiVersion: weft.dev/v1alpha1', 'kind: AuthorizationPolicy', 'metadata:', `  name: ${JSON.stringify(NAME)}`, '  namespace: "demo\\e[31mRED"',
  'spec:', '  action: ALLOW', '---',
  'apiVersion: gateway.networking.k8s.io/v1', 'kind: HTTPRoute', 'metadata:', '  name: r1', '  namespace: demo', 'spec:',
  '  parentRefs: [{kind: Service, group: "", name: echo}]', `  hostnames: [${JSON.stringify(HOST)}]`, '',
].join('\n'));

test('weftctl analyze of a hostile manifest prints its names and values as visible text, no control reaches the terminal', async () => {
  const r = await weftctl(['analyze', '-f', manifest]);
  assert.equal(r.code, 1, r.err);
  assert.doesNotMatch(r.out + r.err, CONTROL, JSON.stringify(r.out));
  assert.match(r.out, /evil\\u001b\]52;c;ZWNobyBwd25lZA==\\u0007\\u000dOVERWRITTEN\\u009b2J/, 'the name is shown, its controls escaped');
  assert.match(r.out, /x\\u001b\]0;title\\u0007\.example/);
  assert.equal(r.out.trimEnd().split('\n').length, 4, 'one line per finding and the summary: a CR or LF in a value cannot forge a line');
});

test('weftctl analyze -o json and -o yaml stay valid and carry the exact values', async () => {
  const j = await weftctl(['analyze', '-f', manifest, '-o', 'json']);
  assert.doesNotMatch(j.out, CONTROL);
  const findings = JSON.parse(j.out) as Array<{ name: string; message: string }>;
  assert.ok(findings.some((f) => f.name === NAME), JSON.stringify(findings.map((f) => f.name)));
  const y = await weftctl(['analyze', '-f', manifest, '-o', 'yaml']);
  assert.doesNotMatch(y.out, CONTROL);
  assert.ok((parse(y.out) as Array<{ name: string }>).some((f) => f.name === NAME));
});

test('weftctl tap: one line per flow, a hostile path, reason or name shown escaped', () => {
  const f: Flow = {
    time: '2026-12-06T10:00:00.000Z', reporter: 'waypoint demo/waypoint', kind: 'http', direction: 'waypoint', verdict: 'denied',
    source: { namespace: 'demo', workload: 'client\x1b[8m' }, destination: { service: 'echo.demo.svc.cluster.local' },
    method: 'GET', path: '/a\u009b2J\x1b]52;c;eA==\x07', status: 403, reason: 'denied\r\nFAKE 10:00:00 ALLOWED', policy: 'demo/deny',
  };
  const line = flowLine(f);
  assert.doesNotMatch(line, CONTROL);
  assert.doesNotMatch(line, /\n/);
  assert.match(line, /\/a\\u009b2J\\u001b\]52;c;eA==\\u0007/);
  assert.match(line, /denied\\u000d\\u000aFAKE/);
});

test('tables: a cell cannot carry a control, a newline or a tab; the rows stay rows', () => {
  const out = table(['NAME', 'STATUS'], [['a\x1b[2J', 'ok\r'], ['b\nc\td', 'x']]);
  assert.doesNotMatch(out, CONTROL);
  assert.equal(out.trimEnd().split('\n').length, 3);
  assert.match(out, /b\\u000ac\\u0009d/);
});

test('terminalSafe keeps text, TAB and LF, and escapes the rest as \\u00XX (valid in JSON strings and YAML double quotes)', () => {
  assert.equal(terminalSafe('plain text\twith tab\nand a line, ünïcödé ✓'), 'plain text\twith tab\nand a line, ünïcödé ✓');
  assert.equal(terminalSafe('\x1b[31m\x07\r\x7f\u0085\u009b'), '\\u001b[31m\\u0007\\u000d\\u007f\\u0085\\u009b');
  assert.equal(JSON.parse(terminalSafe(JSON.stringify({ v: 'a\x7f\u009bb' }))).v, 'a\x7f\u009bb', 'a JSON text stays the same JSON value');
});
