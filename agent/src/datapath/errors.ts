// One error class per way the datapath can refuse or fail. Every one carries a stable `code` and
// names the input that was wrong; callers switch on `code`, operators read the message.

export class DatapathError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The network-namespace file given to enroll()/unenroll() does not exist or is not a netns. */
export class NetnsNotFoundError extends DatapathError {
  readonly netnsPath: string;
  constructor(netnsPath: string, cause?: unknown) {
    super('WEFT_NETNS_NOT_FOUND', `network namespace ${netnsPath} does not exist or is not a network namespace; ` +
      'pass the pod sandbox netns file (e.g. /var/run/netns/<name> or /proc/<pid>/ns/net)', { cause });
    this.netnsPath = netnsPath;
  }
}

/** An address that is not a dotted-quad IPv4 address (the datapath meshes IPv4 only). */
export class BadAddressError extends DatapathError {
  readonly field: string;
  readonly value: unknown;
  constructor(field: string, value: unknown) {
    super('WEFT_BAD_ADDRESS', `${field} ${JSON.stringify(value)} is not an IPv4 address (a.b.c.d); the datapath meshes IPv4 only`);
    this.field = field;
    this.value = value;
  }
}

export class BadPortError extends DatapathError {
  readonly field: string;
  readonly value: unknown;
  constructor(field: string, value: unknown, allowZero = false) {
    super('WEFT_BAD_PORT', `${field} ${JSON.stringify(value)} is not a port number (${allowZero ? 0 : 1}-65535)`);
    this.field = field;
    this.value = value;
  }
}

export class BadModeError extends DatapathError {
  readonly value: unknown;
  constructor(value: unknown, field = 'mode') {
    super('WEFT_BAD_MODE', `${field} ${JSON.stringify(value)} is not STRICT or PERMISSIVE`);
    this.value = value;
  }
}

export class BadEnrolmentError extends DatapathError {
  constructor(message: string) {
    super('WEFT_BAD_ENROLMENT', message);
  }
}

/** The pod's interface could not be found in its netns, or the tcx program could not attach to it. */
export class InterfaceError extends DatapathError {
  readonly ifname: string;
  readonly netnsPath: string;
  constructor(ifname: string, netnsPath: string, cause?: unknown) {
    super('WEFT_INTERFACE', `cannot attach the inbound program to interface ${JSON.stringify(ifname)} in ${netnsPath}: ` +
      `${cause instanceof Error ? cause.message : String(cause)}; check the pod's interface name`, { cause });
    this.ifname = ifname;
    this.netnsPath = netnsPath;
  }
}

export class CgroupNotFoundError extends DatapathError {
  readonly cgroupPath: string;
  constructor(cgroupPath: string) {
    super('WEFT_CGROUP_NOT_FOUND', `cgroup ${cgroupPath} does not exist; pass a folder of the cgroup v2 hierarchy (default: its root)`);
    this.cgroupPath = cgroupPath;
  }
}

export class ObjectNotFoundError extends DatapathError {
  readonly path: string;
  constructor(path: string) {
    super('WEFT_BPF_OBJECT_NOT_FOUND', `BPF object ${path} does not exist; build it with \`make bpf\` or pass objectDir`);
    this.path = path;
  }
}

export class DatapathClosedError extends DatapathError {
  constructor() {
    super('WEFT_DATAPATH_CLOSED', 'the datapath was closed; open it again with Datapath.open()');
  }
}

/** No bpffs in this process's own mount namespace: pins made here would not outlive the agent. */
export class PrivateBpffsError extends DatapathError {
  constructor() {
    super('WEFT_PRIVATE_BPFFS', 'bpffs is not mounted in this process\'s mount namespace (`ip netns exec` remounts /sys and hides it); ' +
      'pins made in a private bpffs would be lost when the agent restarts. Start the agent with `nsenter --net=<netns file>` ' +
      'instead of `ip netns exec`, or mount the host\'s /sys/fs/bpf into its mount namespace');
  }
}
