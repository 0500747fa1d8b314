// The address-owner table a waypoint gets instead of the mesh's workloads: per workload address,
// the identity and node address its for= decision checks a caller against (lib/hbone/forwarded.ts),
// as the agents' AgentState.addressOwner answers it from their workloads. It is derived from the
// model's workloads and kept up to date from the workloads a publish changed, so a pod change costs
// the entries of its old and new address; a change to anything else of a workload (labels, Service
// membership, telemetry) but its binding to another namespace's waypoint leaves every entry as it
// is, and nothing is pushed.
import { foreignWaypointNamespace, type AddressOwner, type Workload } from '../../../lib/model/mesh.ts';

/** What one holder of an address says about it. */
interface Claim {
  spiffeId: string | undefined;
  nodeIp: string | undefined;
  waypointNamespace: string | undefined;
}

function claimOf(w: Workload): Claim {
  // As AgentState.addressOwner: a workload's identity counts only when it is enrolled.
  return { spiffeId: w.enrolled ? w.spiffeId : undefined, nodeIp: w.nodeIp, waypointNamespace: foreignWaypointNamespace(w) };
}

export class AddressOwnerTable {
  /** Address → uid → what that workload says (more than one holder only while addresses are reused). */
  readonly #holders = new Map<string, Map<string, Claim>>();
  readonly #table = new Map<string, AddressOwner>();

  /** The entries, by address (one map, updated in place: a change costs its entries, not a copy). */
  get table(): ReadonlyMap<string, AddressOwner> {
    return this.#table;
  }

  /**
   * Moves the table from the workloads `before` to `after`, looking only at the uids in `changed`
   * (every uid whose workload differs; all of them on the first call). Returns the addresses whose
   * entry changed.
   */
  update(before: ReadonlyMap<string, Workload> | undefined, after: ReadonlyMap<string, Workload>, changed: Iterable<string>): string[] {
    const touched = new Set<string>();
    for (const uid of changed) {
      const was = before?.get(uid);
      const now = after.get(uid);
      if (was?.ip && was.ip !== now?.ip) {
        const holders = this.#holders.get(was.ip);
        if (holders?.delete(uid)) {
          if (holders.size === 0) this.#holders.delete(was.ip);
          touched.add(was.ip);
        }
      }
      if (now?.ip) {
        let holders = this.#holders.get(now.ip);
        if (!holders) this.#holders.set(now.ip, (holders = new Map()));
        holders.set(uid, claimOf(now));
        touched.add(now.ip);
      }
    }
    const out: string[] = [];
    for (const ip of touched) {
      const owner = ownerOf(ip, this.#holders.get(ip));
      if (sameOwner(this.#table.get(ip), owner)) continue;
      if (owner) this.#table.set(ip, owner);
      else this.#table.delete(ip);
      out.push(ip);
    }
    return out;
  }
}

/**
 * The entry for `ip`: what its holders agree on. Holders that disagree (an address reused while
 * its previous pod is still listed) leave no identity and no node, so every claim on the address
 * is refused (identity-mismatch) until one of them lets it go: fail closed, never first-come.
 */
function ownerOf(ip: string, holders: ReadonlyMap<string, Claim> | undefined): AddressOwner | undefined {
  if (!holders || holders.size === 0) return undefined;
  let claim: Claim | undefined;
  for (const c of holders.values()) {
    if (!claim) claim = c;
    else if (claim.spiffeId !== c.spiffeId || claim.nodeIp !== c.nodeIp || claim.waypointNamespace !== c.waypointNamespace) return { ip };
  }
  const c = claim!;
  return { ip, ...(c.spiffeId ? { spiffeId: c.spiffeId } : {}), ...(c.nodeIp ? { nodeIp: c.nodeIp } : {}), ...(c.waypointNamespace ? { waypointNamespace: c.waypointNamespace } : {}) };
}

function sameOwner(a: AddressOwner | undefined, b: AddressOwner | undefined): boolean {
  return a === b || (a !== undefined && b !== undefined && a.spiffeId === b.spiffeId && a.nodeIp === b.nodeIp && a.waypointNamespace === b.waypointNamespace);
}
