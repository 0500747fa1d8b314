// The restricted Pod Security Standard as the PodSecurity admission plugin judges a pod spec
// (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted, with the
// baseline controls it includes), for tests: the kube lab's API server does no admission. Each
// problem names its field. Not every control: AppArmor, SELinux, /proc mount and sysctls are left
// out (Weft sets none of them outside the agent).
interface SecurityContext {
  privileged?: boolean;
  allowPrivilegeEscalation?: boolean;
  runAsNonRoot?: boolean;
  runAsUser?: number;
  seccompProfile?: { type?: string };
  capabilities?: { add?: string[]; drop?: string[] };
}
interface Container { name: string; securityContext?: SecurityContext; ports?: Array<{ hostPort?: number }> }
export interface RestrictedPodSpec {
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  securityContext?: SecurityContext;
  volumes?: Array<Record<string, unknown> & { name: string }>;
  initContainers?: Container[];
  containers: Container[];
}

/** Volume types the restricted profile allows. */
const RESTRICTED_VOLUMES = ['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret'];

/** What keeps `spec` (at `path`, e.g. `spec.template.spec`) out of a namespace enforcing `restricted`. */
export function restrictedProblems(spec: RestrictedPodSpec, path = 'spec'): string[] {
  const out: string[] = [];
  for (const f of ['hostNetwork', 'hostPID', 'hostIPC'] as const) if (spec[f]) out.push(`${path}.${f}: host namespaces are not allowed`);
  spec.volumes?.forEach((v, i) => {
    const type = Object.keys(v).find((k) => k !== 'name');
    if (!type || !RESTRICTED_VOLUMES.includes(type)) out.push(`${path}.volumes[${i}].${type}: volume type not allowed`);
  });
  const pod = spec.securityContext ?? {};
  if (pod.runAsUser === 0) out.push(`${path}.securityContext.runAsUser: 0 is not allowed`);
  if (pod.seccompProfile?.type === 'Unconfined') out.push(`${path}.securityContext.seccompProfile.type: Unconfined is not allowed`);
  const all = [...(spec.initContainers ?? []).map((c, i) => [c, `${path}.initContainers[${i}]`] as const), ...spec.containers.map((c, i) => [c, `${path}.containers[${i}]`] as const)];
  for (const [c, at] of all) {
    const sc = c.securityContext ?? {};
    if (sc.privileged) out.push(`${at}.securityContext.privileged: must be false`);
    if (sc.allowPrivilegeEscalation !== false) out.push(`${at}.securityContext.allowPrivilegeEscalation: must be false`);
    if ((sc.runAsNonRoot ?? pod.runAsNonRoot) !== true) out.push(`${at}.securityContext.runAsNonRoot: must be true (here or in the pod)`);
    if (sc.runAsUser === 0) out.push(`${at}.securityContext.runAsUser: 0 is not allowed`);
    const seccomp = sc.seccompProfile?.type ?? pod.seccompProfile?.type;
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') out.push(`${at}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost (here or in the pod)`);
    if (!sc.capabilities?.drop?.includes('ALL')) out.push(`${at}.securityContext.capabilities.drop: must include ALL`);
    for (const cap of sc.capabilities?.add ?? []) if (cap !== 'NET_BIND_SERVICE') out.push(`${at}.securityContext.capabilities.add: ${cap} is not allowed`);
    c.ports?.forEach((p, i) => { if (p.hostPort) out.push(`${at}.ports[${i}].hostPort: not allowed`); });
  }
  return out;
}
