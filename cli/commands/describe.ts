// weftctl describe pod NAME -n NS: everything the mesh decided about one pod, with the object that
// decided it: identity, enrolment (and the label that set it), mTLS mode (and the
// PeerAuthentication that set it), node and agent, waypoint used and why, the services it backs,
// the policies that apply to it with their effect and where they are enforced, and (local mesh)
// the certificate its node's agent holds for it. The decisions come from the controller's own
// compile of the objects (the local mesh's config folder, or the cluster's API).
import { Command } from 'commander';
import { join } from 'node:path';
import { ANNOTATION_DRY_RUN, LABEL_DATAPLANE_MODE, LABEL_USE_WAYPOINT, type Pod } from '../../lib/model/objects.ts';
import { policyAction, policySelectsWorkload, resolveMtls, waypointRefusalText, type AuthorizationPolicy, type Workload } from '../../lib/model/mesh.ts';
import type { RawObject } from '../../controller/src/sources/source.ts';
import { compileObjects, installCompileOptions, type Compiled } from '../mesh-view.ts';
import type { CompileOptions } from '../../controller/src/compile.ts';
import { readManifests } from './manifests.ts';
import { getJsonInNetns } from '../local/netns-http.ts';
import { inspectCommand } from './inspect.ts';
import { outputOptions, renderData, type OutputFlags } from './output.ts';
import type { TargetFlags } from './target.ts';
import type { CommandIo } from './install.ts';
import { processIo } from './install.ts';

interface Flags extends TargetFlags, OutputFlags {
  namespace?: string;
}

export interface PodDescription {
  pod: string;
  node: string;
  ip: string;
  identity: string;
  enrolled: boolean;
  enrolledBecause: string;
  mtls: { mode: string; setBy: string };
  waypoint: { name: string; because: string } | null;
  services: Array<{ name: string; waypoint: string | null }>;
  /** `dryRun`: Istio's istio.io/dry-run, judged in shadow (`enforcedBy` says by whom), never enforced. */
  policies: Array<{ name: string; action: string; layer: string; enforcedBy: string; effect: string; dryRun?: true }>;
  certificate?: { serial: string; notAfter: string; state: string } | null;
}

/** The description of pod `namespace/name` from a compiled set of objects; undefined when it is not there. */
export function describePod(c: Compiled, namespace: string, name: string): PodDescription | undefined {
  const pod: Pod | undefined = c.inputs.pods.find((p) => p.metadata.namespace === namespace && p.metadata.name === name);
  if (!pod) return undefined;
  const w: Workload | undefined = [...c.model.workloads.values()].find((x) => x.namespace === namespace && x.name === name);
  const nsObj = c.inputs.namespaces.find((n) => n.metadata.name === namespace);
  const podMode = pod.metadata.labels?.[LABEL_DATAPLANE_MODE];
  const nsMode = nsObj?.metadata.labels?.[LABEL_DATAPLANE_MODE];
  const enrolledBecause = !w
    ? (pod.spec.hostNetwork ? 'host network pods are never captured' : 'no IP address yet, or not running')
    : podMode !== undefined ? `Pod label ${LABEL_DATAPLANE_MODE}=${podMode}`
      : nsMode !== undefined ? `Namespace ${namespace} label ${LABEL_DATAPLANE_MODE}=${nsMode}` : `no ${LABEL_DATAPLANE_MODE} label on the Pod or its Namespace`;
  // The PeerAuthentication that decided the mode, by the controller's own rule.
  const setBy = w && resolveMtls(c.model.peerAuthentications.values(), w).setBy;
  const services = w ? w.services.map((s) => {
    const svc = c.model.services.get(s);
    return { name: s, waypoint: svc?.waypoint ? `${svc.waypoint.namespace}/${svc.waypoint.name}${svc.waypoint.refused !== undefined ? ` (refused: ${waypointRefusalText(svc.waypoint, svc.namespace)}; traffic fails closed)` : ''}` : null };
  }) : [];
  const policies: PodDescription['policies'] = [];
  if (w) {
    for (const p of c.model.policies.values()) {
      const action = policyAction(p);
      if (policySelectsWorkload(p, w)) {
        const failClosed = p.layer === 'L7' ? (action === 'DENY' ? '; L7 rules match every connection at the agent (fail closed)' : '; L7 rules never match at the agent (fail closed)') : '';
        policies.push(dryRunDescribed(p, { name: `${p.namespace}/${p.name}`, action, layer: p.layer, enforcedBy: `node agent (${p.scope} scope)`, effect: `${action === 'ALLOW' ? 'allows' : 'denies'} connections matching ${p.rules.length} rule(s)${failClosed}` }));
      } else if (p.scope === 'service' && p.targetServices?.some((t) => w.services.includes(t))) {
        const svc = p.targetServices.find((t) => w.services.includes(t))!;
        const wp = c.model.services.get(svc)?.waypoint;
        policies.push(dryRunDescribed(p, { name: `${p.namespace}/${p.name}`, action, layer: p.layer, enforcedBy: wp?.refused !== undefined ? `nothing: Service ${svc} may not use waypoint ${wp.namespace}/${wp.name} (its traffic fails closed)` : wp ? `waypoint ${wp.namespace}/${wp.name} (Service ${svc})` : `nothing: Service ${svc} uses no waypoint`, effect: `${action === 'ALLOW' ? 'allows' : 'denies'} requests to ${svc} matching ${p.rules.length} rule(s)` }));
      }
    }
  }
  const wpBecause = pod.metadata.labels?.[LABEL_USE_WAYPOINT] ? `Pod label ${LABEL_USE_WAYPOINT}` : `Namespace ${namespace} label ${LABEL_USE_WAYPOINT}`;
  return {
    pod: `${namespace}/${name}`,
    node: pod.spec.nodeName ?? '-',
    ip: w?.ip ?? pod.status?.podIP ?? '-',
    identity: w?.spiffeId ?? '-',
    enrolled: w?.enrolled ?? false,
    enrolledBecause,
    mtls: { mode: w?.mode ?? '-', setBy: setBy ? `PeerAuthentication ${setBy.namespace}/${setBy.name} (${setBy.scope} scope)` : 'no PeerAuthentication applies: the default' },
    waypoint: w?.waypoint ? { name: `${w.waypoint.namespace}/${w.waypoint.name}${w.waypoint.refused !== undefined ? ` (refused: ${waypointRefusalText(w.waypoint, w.namespace)}; traffic fails closed)` : c.model.waypoints.has(`${w.waypoint.namespace}/${w.waypoint.name}`) ? '' : ' (does not exist: traffic fails closed)'}`, because: wpBecause } : null,
    services,
    policies,
  };
}

/**
 * A dry-run policy (Istio's istio.io/dry-run) as described: enforced by nothing, judged in shadow
 * where it would be enforced, its effect what it would do.
 */
function dryRunDescribed(p: AuthorizationPolicy, d: PodDescription['policies'][number]): PodDescription['policies'][number] {
  if (!p.dryRun) return d;
  return { ...d, dryRun: true, enforcedBy: `nothing: dry run (${ANNOTATION_DRY_RUN}), judged in shadow by ${d.enforcedBy}`, effect: `would have ${d.effect.replace(/^allows/, 'allowed').replace(/^denies/, 'denied')} (weft_authz_dry_run_total, access-log istio_dry_run_* keys)` };
}

function format(d: PodDescription): string {
  const lines = [
    `Pod:        ${d.pod}`,
    `Node:       ${d.node}`,
    `IP:         ${d.ip}`,
    `Identity:   ${d.identity}`,
    `Enrolled:   ${d.enrolled ? 'yes' : 'no'} (${d.enrolledBecause})`,
    `mTLS mode:  ${d.mtls.mode} (${d.mtls.setBy})`,
    `Waypoint:   ${d.waypoint ? `${d.waypoint.name} for traffic addressed to the pod (${d.waypoint.because})` : 'none for traffic addressed to the pod'}`,
    `Services:   ${d.services.length === 0 ? 'none' : ''}`,
    ...d.services.map((s) => `  ${s.name}${s.waypoint ? ` via waypoint ${s.waypoint}` : ' (no waypoint: L4 only)'}`),
    `Policies:   ${d.policies.length === 0 ? 'none (every peer allowed)' : ''}`,
    ...d.policies.map((p) => `  ${p.name}: ${p.action} ${p.layer}, enforced by ${p.enforcedBy}: ${p.effect}`),
  ];
  if (d.certificate !== undefined) lines.push(`Certificate: ${d.certificate ? `${d.certificate.state}, serial ${d.certificate.serial.slice(0, 16)}, expires ${d.certificate.notAfter}` : 'none held by the node agent'}`);
  return lines.join('\n') + '\n';
}

export function describeCommand(io: CommandIo = processIo): Command {
  const pod = inspectCommand<Flags & { name: string }>('pod', 'describe pod', io, (cmd) => outputOptions(cmd
    .description('identity, enrolment, mTLS mode, node, waypoint, services, policies and certificate of a pod, each with what decided it')
    .argument('<name>', 'pod name')
    .option('-n, --namespace <ns>', 'namespace of the pod', 'default'), ['table', 'json', 'yaml']), async (m, f) => {
      const args = (pod.args as string[]);
      const name = args[0]!;
      const ns = f.namespace ?? 'default';
      const [objects, options]: [RawObject[], CompileOptions] = m.target.kind === 'local'
        ? [readManifests([join(m.target.st.stateDir, 'config')]).flatMap((x) => x.objects as RawObject[]), {}]
        : await Promise.all([m.target.kube.meshObjects() as Promise<RawObject[]>, installCompileOptions(m.target.kube, m.target.namespace, (line) => io.err(`weftctl describe pod: ${line}\n`))]);
      const d = describePod(compileObjects(objects, options), ns, name);
      if (!d) throw new Error(`no pod ${ns}/${name}`);
      if (m.target.kind === 'local' && d.identity !== '-') {
        const n = m.target.st.nodes.find((x) => x.name === d.node);
        if (n) {
          const certs = await getJsonInNetns<{ certificates: Array<{ identity: string; serial: string; notAfter: string; state: string }> }>(`/var/run/netns/${n.netns}`, 'http://127.0.0.1:15000/certs');
          const c = certs.certificates.find((x) => x.identity === d.identity);
          d.certificate = c ? { serial: c.serial, notAfter: c.notAfter, state: c.state } : null;
        }
      }
      if (!renderData(io, f, d)) io.out(format(d));
    });
  return new Command('describe').description('explain what the mesh decided about an object').addCommand(pod);
}
