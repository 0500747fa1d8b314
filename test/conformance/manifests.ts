// Small builders for the objects the conformance tests apply (Gateway API v1 shapes), so a test's
// manifest reads as its rules and nothing else.
import { NS } from './harness.ts';

type Obj = Record<string, unknown>;

export interface Parent {
  service: string;
  namespace?: string;
  port?: number;
}

function parentRef(p: Parent): Obj {
  return { group: '', kind: 'Service', name: p.service, ...(p.namespace ? { namespace: p.namespace } : {}), ...(p.port !== undefined ? { port: p.port } : {}) };
}

export function httpRoute(name: string, parent: Parent, rules: Obj[], namespace = NS): Obj {
  return { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name, namespace }, spec: { parentRefs: [parentRef(parent)], rules } };
}

export function grpcRoute(name: string, parent: Parent, rules: Obj[], namespace = NS): Obj {
  return { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name, namespace }, spec: { parentRefs: [parentRef(parent)], rules } };
}

export function backend(name: string, port: number, extra: Obj = {}): Obj {
  return { name, port, ...extra };
}

export const prefix = (value: string): Obj => ({ path: { type: 'PathPrefix', value } });
export const exact = (value: string): Obj => ({ path: { type: 'Exact', value } });
export const header = (name: string, value: string): Obj => ({ name, value });

export function setResponseHeader(name: string, value: string): Obj {
  return { type: 'ResponseHeaderModifier', responseHeaderModifier: { set: [{ name, value }] } };
}

export function requestHeaders(edits: { set?: Array<[string, string]>; add?: Array<[string, string]>; remove?: string[] }): Obj {
  const pairs = (l?: Array<[string, string]>) => (l ?? []).map(([name, value]) => ({ name, value }));
  return {
    type: 'RequestHeaderModifier',
    requestHeaderModifier: { ...(edits.set ? { set: pairs(edits.set) } : {}), ...(edits.add ? { add: pairs(edits.add) } : {}), ...(edits.remove ? { remove: edits.remove } : {}) },
  };
}

export function redirect(r: { scheme?: string; hostname?: string; port?: number; statusCode?: number; path?: { type: 'ReplacePrefixMatch' | 'ReplaceFullPath'; value: string } }): Obj {
  const out: Obj = {};
  if (r.scheme !== undefined) out['scheme'] = r.scheme;
  if (r.hostname !== undefined) out['hostname'] = r.hostname;
  if (r.port !== undefined) out['port'] = r.port;
  if (r.statusCode !== undefined) out['statusCode'] = r.statusCode;
  if (r.path) out['path'] = r.path.type === 'ReplaceFullPath' ? { type: r.path.type, replaceFullPath: r.path.value } : { type: r.path.type, replacePrefixMatch: r.path.value };
  return { type: 'RequestRedirect', requestRedirect: out };
}

export function rewrite(type: 'ReplacePrefixMatch' | 'ReplaceFullPath', value: string): Obj {
  return { type: 'URLRewrite', urlRewrite: { path: type === 'ReplaceFullPath' ? { type, replaceFullPath: value } : { type, replacePrefixMatch: value } } };
}
