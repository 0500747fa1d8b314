// What a conformance case expects of a response, and the comparison (pure: unit-tested in
// test/unit/conformance-expect.test.ts). Upstream compares status, backend pod, request and
// response headers; this also compares the path the backend received and the whole Location.
import type { ClientRequest, ClientResponse } from './client-protocol.ts';

/** The namespace an answering pod is expected in unless a case says otherwise. */
export const DEFAULT_NAMESPACE = 'gamma';

export interface Expected {
  /** HTTP status or gRPC code; default 200 (gRPC: 0). */
  status?: number;
  /** The answering pod's name starts with this (upstream `Backend`). */
  backend?: string;
  /** Namespace of the answering pod; default DEFAULT_NAMESPACE when `backend` is set. */
  namespace?: string;
  /** Path (with query) the backend received. */
  path?: string;
  requestHeaders?: Record<string, string>;
  absentRequestHeaders?: string[];
  responseHeaders?: Record<string, string>;
  absentResponseHeaders?: string[];
  /** A redirect: fields of the Location URL; unset ones must keep the request's. */
  redirect?: { scheme?: string; host?: string; port?: string; path?: string };
}

/** All values of a header as one string, `,` between values (the upstream suite's join). */
export function joined(v: string | string[] | undefined): string | undefined {
  if (v === undefined) return undefined;
  return (Array.isArray(v) ? v : [v]).flatMap((x) => x.split(',')).map((x) => x.trim()).join(',');
}

function lowerKeys<T>(o: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k.toLowerCase(), v]));
}

/** What differs between a response and the expectation; empty when it conforms. */
export function mismatches(req: ClientRequest, r: ClientResponse, exp: Expected): string[] {
  const out: string[] = [];
  const grpc = req.protocol === 'grpc';
  const wantStatus = exp.status ?? (grpc ? 0 : 200);
  if (r.status !== wantStatus) {
    out.push(`status ${r.status} (want ${wantStatus})${r.error ? `: ${r.error}` : r.body ? `: ${r.body.trim().slice(0, 200)}` : ''}`);
    return out;
  }
  const echo = r.echo;
  const needsEcho = exp.backend !== undefined || exp.path !== undefined || exp.requestHeaders !== undefined || exp.absentRequestHeaders !== undefined;
  if (needsEcho && !echo) {
    out.push(`no echo backend answered (body: ${(r.body ?? '').slice(0, 200)})`);
    return out;
  }
  if (echo && exp.backend !== undefined) {
    if (!echo.pod.startsWith(exp.backend)) out.push(`served by ${echo.namespace}/${echo.pod} (want ${exp.backend})`);
    const ns = exp.namespace ?? DEFAULT_NAMESPACE;
    if (echo.namespace !== ns) out.push(`served from namespace ${echo.namespace} (want ${ns})`);
  }
  if (echo && exp.path !== undefined && echo.path !== exp.path) out.push(`backend saw path ${echo.path} (want ${exp.path})`);
  if (echo) {
    const seen = lowerKeys(echo.headers);
    for (const [k, v] of Object.entries(exp.requestHeaders ?? {})) {
      const got = joined(seen[k.toLowerCase()]);
      if (got !== v) out.push(`backend saw ${k}: ${got ?? '(absent)'} (want ${v})`);
    }
    for (const k of exp.absentRequestHeaders ?? []) {
      const got = seen[k.toLowerCase()];
      if (got !== undefined) out.push(`backend saw ${k}: ${joined(got)} (want it absent)`);
    }
  }
  const rh = lowerKeys(r.headers);
  for (const [k, v] of Object.entries(exp.responseHeaders ?? {})) {
    const got = joined(rh[k.toLowerCase()]);
    if (got !== v) out.push(`response ${k}: ${got ?? '(absent)'} (want ${v})`);
  }
  for (const k of exp.absentResponseHeaders ?? []) {
    const got = rh[k.toLowerCase()];
    if (got !== undefined) out.push(`response ${k}: ${joined(got)} (want it absent)`);
  }
  if (exp.redirect) {
    const loc = rh['location']?.[0];
    if (!loc) out.push('no Location header');
    else {
      const u = new URL(loc);
      const reqHost = req.host.replace(/:\d+$/, '');
      const want = { scheme: exp.redirect.scheme ?? 'http', host: exp.redirect.host ?? reqHost, port: exp.redirect.port ?? '', path: exp.redirect.path ?? (req.path ?? '/') };
      const got = { scheme: u.protocol.replace(/:$/, ''), host: u.hostname, port: u.port, path: u.pathname + u.search };
      for (const k of ['scheme', 'host', 'port', 'path'] as const) {
        if (got[k] !== want[k]) out.push(`Location ${loc}: ${k} ${JSON.stringify(got[k])} (want ${JSON.stringify(want[k])})`);
      }
    }
  }
  return out;
}

