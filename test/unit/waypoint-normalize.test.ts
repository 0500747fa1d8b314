// Request target normalization before routing and policy (issue 16): every path trick from the issue
// against an Istio-style `DENY paths: ["/admin*"]`, and each pathNormalization mode doing what its
// name says (istio.io "Authorization Policy Normalization"; RFC 3986 sections 5.2.4 and 6.2.2;
// RFC 9112 section 3.2; RFC 9110 section 9.1).
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy } from '../../lib/model/mesh.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { normalizePath, normalizeRequestTarget, removeDotSegments, type NormalizeOptions, type PathNormalization } from '../../waypoint/src/normalize.ts';
import { STAGES } from '../../waypoint/src/proxy.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  config, echo, endpoint, h2request, metricSamples, service, startHttpBackend, startTunnelListener, type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

const opts = (pathNormalization: PathNormalization, escapedSlashes: NormalizeOptions['escapedSlashes'] = 'KEEP_UNCHANGED'): NormalizeOptions => ({ pathNormalization, escapedSlashes });

describe('path normalization (pure)', () => {
  it('runs once, after admission and before the Service is resolved, a token is checked, policy judges or a route matches', () => {
    assert.deepEqual(STAGES.map(([name]) => name), ['admit', 'normalize', 'resolve', 'authenticate', 'authorize', 'rate-limit', 'quota', 'route', 'fault', 'forward']);
  });

  it('removes dot segments as RFC 3986 section 5.2.4 does', () => {
    const cases: Array<[string, string]> = [
      ['/a/b/c/./../../g', '/a/g'], ['/mid/content=5/../6', '/mid/6'], ['/x/../admin', '/admin'], ['/./admin', '/admin'],
      ['/..', '/'], ['/../../a', '/a'], ['/a/..', '/'], ['/a/.', '/a/'], ['/a/b/..', '/a/'], ['/', '/'], ['/a//b', '/a//b'],
    ];
    for (const [input, want] of cases) assert.equal(removeDotSegments(input), want, input);
  });

  it('each mode does what its name says (Istio pathNormalization)', () => {
    const table: Array<[string, Record<PathNormalization, string>]> = [
      ['/a/../b', { NONE: '/a/../b', BASE: '/b', MERGE_SLASHES: '/b', DECODE_AND_MERGE_SLASHES: '/b' }],
      ['/%61dmin', { NONE: '/%61dmin', BASE: '/admin', MERGE_SLASHES: '/admin', DECODE_AND_MERGE_SLASHES: '/admin' }],
      ['/%2e%2E/admin', { NONE: '/%2e%2E/admin', BASE: '/admin', MERGE_SLASHES: '/admin', DECODE_AND_MERGE_SLASHES: '/admin' }],
      ['\\da', { NONE: '\\da', BASE: '/da', MERGE_SLASHES: '/da', DECODE_AND_MERGE_SLASHES: '/da' }],
      ['/a//b', { NONE: '/a//b', BASE: '/a//b', MERGE_SLASHES: '/a/b', DECODE_AND_MERGE_SLASHES: '/a/b' }],
      ['/a%2fb', { NONE: '/a%2fb', BASE: '/a%2Fb', MERGE_SLASHES: '/a%2Fb', DECODE_AND_MERGE_SLASHES: '/a/b' }],
      ['/a%5Cb', { NONE: '/a%5Cb', BASE: '/a%5Cb', MERGE_SLASHES: '/a%5Cb', DECODE_AND_MERGE_SLASHES: '/a/b' }],
      ['/admin%2F..', { NONE: '/admin%2F..', BASE: '/admin%2F..', MERGE_SLASHES: '/admin%2F..', DECODE_AND_MERGE_SLASHES: '/' }],
      // Decoded once, never twice; reserved and other bytes stay encoded, hex upper-cased (RFC 3986 6.2.2.1).
      ['/%252F%3a%7e', { NONE: '/%252F%3a%7e', BASE: '/%252F%3A~', MERGE_SLASHES: '/%252F%3A~', DECODE_AND_MERGE_SLASHES: '/%252F%3A~' }],
      // Raw characters RFC 3986 allows only encoded are encoded, as Envoy's normalize_path does
      // (Chromium's url_canon_path.cc marks them ESCAPE); `[`, `]` and `'` pass, as there.
      ['/f/{x}|"<>^`[\']', { NONE: '/f/{x}|"<>^`[\']', BASE: '/f/%7Bx%7D%7C%22%3C%3E%5E%60[\']', MERGE_SLASHES: '/f/%7Bx%7D%7C%22%3C%3E%5E%60[\']', DECODE_AND_MERGE_SLASHES: '/f/%7Bx%7D%7C%22%3C%3E%5E%60[\']' }],
    ];
    for (const [input, want] of table) {
      for (const mode of Object.keys(want) as PathNormalization[]) {
        const r = normalizePath(input.startsWith('\\') ? input : input, opts(mode));
        assert.ok(r.ok, `${mode} ${input}`);
        // A leading backslash is not origin-form; normalizePath sees only the path.
        assert.equal(r.path, want[mode], `${mode} ${input}`);
      }
    }
  });

  it('refuses %00 in every mode, malformed escapes, and (REJECT_REQUEST) encoded slashes', () => {
    for (const mode of ['NONE', 'BASE', 'MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES'] as const) {
      assert.deepEqual(pick(normalizePath('/a%00b', opts(mode))), 'null_character', mode);
      assert.deepEqual(pick(normalizePath('/a%zz', opts(mode))), 'invalid_percent_encoding', mode);
      assert.deepEqual(pick(normalizePath('/a%2', opts(mode))), 'invalid_percent_encoding', mode);
    }
    assert.equal(pick(normalizePath('/admin%2F..', opts('BASE', 'REJECT_REQUEST'))), 'escaped_slash');
    assert.equal(pick(normalizePath('/a%5cb', opts('MERGE_SLASHES', 'REJECT_REQUEST'))), 'escaped_slash');
    // DECODE_AND_MERGE_SLASHES decodes them (UNESCAPE_AND_FORWARD) whatever escapedSlashes says.
    assert.equal(normalizePath('/a%2Fb', opts('DECODE_AND_MERGE_SLASHES', 'REJECT_REQUEST')).ok, true);
  });

  it('turns absolute-form into origin-form and checks its authority against Host (RFC 9112 3.2.2)', () => {
    const b = opts('BASE');
    assert.deepEqual(normalizeRequestTarget('GET', 'http://reviews.shop/admin?x=1', 'reviews.shop', b), { ok: true, target: '/admin?x=1', path: '/admin', query: '?x=1' });
    assert.deepEqual(normalizeRequestTarget('GET', 'http://Reviews.Shop:80', 'reviews.shop', b), { ok: true, target: '/', path: '/', query: '' });
    assert.equal(pick(normalizeRequestTarget('GET', 'http://payments.bank/admin', 'reviews.shop', b)), 'absolute_form_host_mismatch');
    assert.equal(pick(normalizeRequestTarget('GET', 'http://reviews.shop:8080/', 'reviews.shop', b)), 'absolute_form_host_mismatch');
    assert.equal(pick(normalizeRequestTarget('GET', 'http://u:p@reviews.shop/', 'reviews.shop', b)), 'absolute_form_userinfo');
    assert.equal(pick(normalizeRequestTarget('GET', 'ftp://reviews.shop/', 'reviews.shop', b)), 'invalid_request_target');
    assert.equal(pick(normalizeRequestTarget('GET', 'admin', 'reviews.shop', b)), 'invalid_request_target');
    assert.equal(pick(normalizeRequestTarget('GET', '/a#frag', 'reviews.shop', b)), 'fragment');
    assert.equal(pick(normalizeRequestTarget('GET', '/a b', 'reviews.shop', b)), 'invalid_character');
    assert.deepEqual(normalizeRequestTarget('OPTIONS', '*', 'reviews.shop', b), { ok: true, target: '*', path: '*', query: '' });
    assert.equal(pick(normalizeRequestTarget('GET', '*', 'reviews.shop', b)), 'invalid_request_target');
    // The query is not normalized (Istio: policies ignore it; the backend sees it unchanged).
    assert.deepEqual(normalizeRequestTarget('GET', '/x/../a?p=/../%2F', 'h', b), { ok: true, target: '/a?p=/../%2F', path: '/a', query: '?p=/../%2F' });
  });

  it('refuses a Host or :authority that is not uri-host [":" port], for either protocol (RFC 9110 section 7.2, RFC 9113 section 8.3.1)', () => {
    const b = opts('BASE');
    for (const host of ['reviews evil', 'reviews/admin', 'admin@reviews', 'reviews:80:81', 'reviews:8o', '[::1', 'reviews]']) {
      const n = normalizeRequestTarget('GET', '/a', host, b);
      assert.equal(pick(n), 'invalid_host', host);
      assert.match(n.ok ? '' : n.message, /invalid Host \(or :authority\)/);
    }
    for (const host of ['reviews', 'reviews.shop.svc.cluster.local:80', '10.96.0.10', '[fd00::1]:80', '', undefined]) {
      assert.equal(normalizeRequestTarget('GET', '/a', host, b).ok, true, host);
    }
  });

  it('names a long refused Host or request target by its first 64 characters and how many more it had (lib/log.ts clip), not the whole value', () => {
    const b = opts('BASE');
    const host = `reviews/${'x'.repeat(992)}`;
    const h = normalizeRequestTarget('GET', '/a', host, b);
    assert.equal(h.ok ? '' : h.message, `invalid Host (or :authority) ${JSON.stringify(`${host.slice(0, 64)}... (936 more characters)`)}: not a host and optional port (RFC 9110 section 7.2)`);
    const target = `a${'b'.repeat(199)}`;
    const t = normalizeRequestTarget('GET', target, 'reviews', b);
    assert.equal(t.ok ? '' : t.message, `request target ${JSON.stringify(`${target.slice(0, 64)}... (136 more characters)`)} is not origin-form`);
    // A short value is named whole.
    const s = normalizeRequestTarget('GET', '/a', 'reviews evil', b);
    assert.match(s.ok ? '' : s.message, /^invalid Host \(or :authority\) "reviews evil": /);
  });

  it('compares methods case-sensitively and refuses lower-case ones, as Istio does (RFC 9110 9.1)', () => {
    assert.equal(pick(normalizeRequestTarget('delete', '/x', 'h', opts('BASE'))), 'method_not_uppercase');
    assert.equal(pick(normalizeRequestTarget('Get', '/x', 'h', opts('NONE'))), 'method_not_uppercase');
    assert.equal(pick(normalizeRequestTarget('GE T', '/x', 'h', opts('BASE'))), 'invalid_method');
    assert.equal(normalizeRequestTarget('PROPFIND', '/x', 'h', opts('BASE')).ok, true);
  });
});

function pick(r: { ok: true } | { ok: false; reason: string }): string | undefined {
  return r.ok ? undefined : r.reason;
}

/** One raw HTTP/1.1 exchange on a fresh connection; resolves with the response head and body. */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    s.on('data', (c: Buffer) => { out += c.toString('latin1'); if (/\r\n\r\n/.test(out) && responseComplete(out)) s.end(); });
    s.on('end', () => resolve(out));
    s.on('close', () => resolve(out));
    s.on('error', reject);
    s.write(text);
  });
}

function responseComplete(out: string): boolean {
  const head = out.slice(0, out.indexOf('\r\n\r\n'));
  const m = /content-length: *([0-9]+)/i.exec(head);
  return m !== null && out.length - head.length - 4 >= Number(m[1]);
}

const DENY_ADMIN: AuthorizationPolicy = {
  name: 'deny-admin', namespace: 'shop', scope: 'service', targetServices: ['shop/reviews'], action: 'DENY', layer: 'L7',
  rules: [{ from: [], to: [{ paths: ['/admin*'] }], when: [], layer: 'L7' }],
};

describe('DENY paths ["/admin*"] behind a waypoint (issue 16 path tricks)', () => {
  let b: Backend;
  const seen: string[] = [];
  const engines: WaypointEngine[] = [];
  const listeners: Listener[] = [];
  const logs: string[] = [];

  async function start(mode: PathNormalization, policies = [DENY_ADMIN]): Promise<{ engine: WaypointEngine; listener: Listener }> {
    const engine = new WaypointEngine({
      namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), pathNormalization: mode,
      telemetry: { accessLog: (l) => logs.push(l) },
    });
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])], policies }));
    const listener = await startTunnelListener(engine, '10.96.0.10:80');
    engines.push(engine);
    listeners.push(listener);
    return { engine, listener };
  }

  before(async () => {
    b = await startHttpBackend((req, res) => { seen.push(req.url ?? ''); echo('reviews')(req, res); });
  });

  after(async () => {
    for (const l of listeners) await l.close();
    for (const e of engines) await e.close();
    await b.close();
  });

  const status = (reply: string): number => Number(/^HTTP\/1\.1 ([0-9]{3})/.exec(reply)?.[1] ?? 0);
  const get = (target: string, host = 'reviews.shop'): string => `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;

  it('answers 403 to every trick under BASE (the default) and the backend never sees one', async () => {
    const { engine, listener } = await start('BASE');
    const before = seen.length;
    for (const target of ['/admin', '/%61dmin', '/x/../admin', '/./admin', '/%2e/admin', '/x\\..\\admin', '/admin%2F..', 'http://reviews.shop/admin']) {
      assert.equal(status(await raw(listener.port, get(target))), 403, target);
    }
    assert.equal(seen.length, before, `backend saw ${seen.slice(before).join(' ')}`);
    // The refusal is named: flag RBAC in the metric and the access log.
    const denied = (await metricSamples(engine, 'istio_requests_total')).filter((s) => s.labels['response_code'] === '403' && s.labels['response_flags'] === 'RBAC');
    assert.equal(denied.reduce((n, s) => n + s.value, 0), 8);
    // A harmless path is forwarded as judged: normalized.
    assert.equal(status(await raw(listener.port, get('/public/./x/../page'))), 200);
    assert.equal(seen.at(-1), '/public/page');
  });

  // RFC 3986 sections 2.1 and 6.2.2: `/files/{id}` and `/files/%7Bid%7D` name the same resource (a
  // backend decodes both to one path), so a DENY written with either spelling refuses both.
  it('holds a DENY on a path with a character RFC 3986 wants encoded for both of its spellings', async () => {
    const deny: AuthorizationPolicy = {
      name: 'deny-secret', namespace: 'shop', scope: 'service', targetServices: ['shop/reviews'], action: 'DENY', layer: 'L7',
      rules: [{ from: [], to: [{ paths: ['/files/%7Bsecret%7D', '/q/a|b'] }], when: [], layer: 'L7' }],
    };
    const { engine, listener } = await start('BASE', [deny]);
    const before = seen.length;
    for (const target of ['/files/%7Bsecret%7D', '/files/{secret}', '/files/%7bsecret%7d', '/q/a|b', '/q/a%7Cb', '/q/a%7cb']) {
      assert.equal(status(await raw(listener.port, get(target))), 403, target);
    }
    assert.equal(seen.length, before, `backend saw ${seen.slice(before).join(' ')}`);
    const denied = (await metricSamples(engine, 'istio_requests_total')).filter((s) => s.labels['response_code'] === '403' && s.labels['response_flags'] === 'RBAC');
    assert.equal(denied.reduce((n, s) => n + s.value, 0), 6);
    // Forwarded as judged: encoded.
    assert.equal(status(await raw(listener.port, get('/files/{public}'))), 200);
    assert.equal(seen.at(-1), '/files/%7Bpublic%7D');
  });

  it('answers 403 to //admin under MERGE_SLASHES and forwards merged paths', async () => {
    const { listener } = await start('MERGE_SLASHES');
    const before = seen.length;
    // Dot segments go first, then slashes merge (Istio's order): /x/..//admin is //admin, then /admin.
    for (const target of ['//admin', '///admin/x', '/x/..//admin', '/%61dmin']) {
      assert.equal(status(await raw(listener.port, get(target))), 403, target);
    }
    assert.equal(seen.length, before);
    assert.equal(status(await raw(listener.port, get('//public//page'))), 200);
    assert.equal(seen.at(-1), '/public/page');
  });

  it('under DECODE_AND_MERGE_SLASHES /admin%2F.. is / and that is what the backend gets', async () => {
    const { listener } = await start('DECODE_AND_MERGE_SLASHES');
    assert.equal(status(await raw(listener.port, get('/admin%2fx'))), 403);
    assert.equal(status(await raw(listener.port, get('/admin%2F..'))), 200);
    assert.equal(seen.at(-1), '/');
  });

  it('under NONE forwards the path exactly as received (and /admin itself is still denied)', async () => {
    const { listener } = await start('NONE');
    assert.equal(status(await raw(listener.port, get('/admin'))), 403);
    assert.equal(status(await raw(listener.port, get('/x/../y'))), 200);
    assert.equal(seen.at(-1), '/x/../y');
  });

  it('refuses an absolute-form target naming another host with 400 DPE, named in the access log', async () => {
    const { listener } = await start('BASE');
    const before = seen.length;
    const reply = await raw(listener.port, get('http://payments.bank/admin', 'reviews.shop'));
    assert.equal(status(reply), 400);
    assert.match(reply, /x-weft-flags: DPE/i);
    assert.equal(seen.length, before);
    assert.ok(logs.some((l) => l.includes('absolute_form_host_mismatch') && l.includes('"DPE"')), logs.at(-1));
  });

  it('refuses an HTTP/2 lower-case method with 400 and never forwards it (a DENY on DELETE cannot be sidestepped)', async () => {
    const { listener } = await start('BASE');
    const session = http2.connect(`http://127.0.0.1:${listener.port}`);
    try {
      const before = seen.length;
      const lower = await h2request(session, { ':method': 'get', ':path': '/admin', ':authority': 'reviews.shop' });
      assert.equal(lower.status, 400);
      const lowerDelete = await h2request(session, { ':method': 'delete', ':path': '/public', ':authority': 'reviews.shop' });
      assert.equal(lowerDelete.status, 400);
      const upper = await h2request(session, { ':method': 'GET', ':path': '/%61dmin', ':authority': 'reviews.shop' });
      assert.equal(upper.status, 403);
      assert.equal(seen.length, before);
      assert.ok(logs.some((l) => l.includes('method_not_uppercase')));
    } finally {
      session.close();
    }
  });
});
