// The agent DaemonSet's `install-cni` init container: puts the chained plugin (build/cni/weft-cni)
// into the host's CNI binary folder and appends it to the host's CNI network configuration (the
// first *.conflist in the folder, as the runtime picks it), so every pod created on the node from
// then on is enrolled by the agent before it starts. Idempotent: an existing weft-cni entry is
// replaced, the binary is replaced atomically (rename), other plugins are left as they are.
//   node agent/cni/install.ts --bin-dir /host/opt/cni/bin --conf-dir /host/etc/cni/net.d \
//        --socket /var/run/weft/cni.sock --exclude-namespace kube-system --exclude-namespace weft-system
// `removeWeftCni` undoes it (`agent --uninstall`, weftctl uninstall's cleanup DaemonSet): the plugin
// fails a pod's network setup when no agent answers, so once the agents are gone it must leave the
// chain, or no new pod on the node could start.
import { copyFileSync, chmodSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

export const PLUGIN_TYPE = 'weft-cni';

/** The conflist with the weft-cni entry appended (or replaced, at the end of the chain). */
export function withWeftPlugin(conflist: Record<string, unknown>, entry: Record<string, unknown>): Record<string, unknown> {
  const plugins = conflist['plugins'];
  if (!Array.isArray(plugins)) throw new Error('the network configuration list has no "plugins" array');
  const others = plugins.filter((p: { type?: unknown }) => p?.type !== PLUGIN_TYPE);
  return { ...conflist, plugins: [...others, { type: PLUGIN_TYPE, ...entry }] };
}

/** The conflist without any weft-cni entry; undefined when it had none (or is not a conflist). */
export function withoutWeftPlugin(conflist: Record<string, unknown>): Record<string, unknown> | undefined {
  const plugins = conflist['plugins'];
  if (!Array.isArray(plugins)) return undefined;
  const others = plugins.filter((p: { type?: unknown }) => p?.type !== PLUGIN_TYPE);
  return others.length === plugins.length ? undefined : { ...conflist, plugins: others };
}

export interface CniRemoval {
  /** Conflists weft-cni was taken out of. */
  conflists: string[];
  /** The plugin binary, when it was there. */
  binary?: string;
}

/**
 * Takes weft-cni out of every *.conflist in `confDir` (each rewritten atomically, the other plugins
 * untouched) and removes the binary from `binDir`. A file that cannot be parsed is left as it is
 * and named in `unreadable`. Idempotent.
 */
export function removeWeftCni(o: { binDir?: string; confDir: string }): CniRemoval & { unreadable: string[] } {
  const out: CniRemoval & { unreadable: string[] } = { conflists: [], unreadable: [] };
  let names: string[] = [];
  try {
    names = readdirSync(o.confDir).filter((f) => f.endsWith('.conflist')).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  for (const name of names) {
    const file = join(o.confDir, name);
    let conflist: Record<string, unknown>;
    try {
      conflist = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    } catch {
      out.unreadable.push(file);
      continue;
    }
    const updated = withoutWeftPlugin(conflist);
    if (!updated) continue;
    writeFileSync(`${file}.weft.tmp`, JSON.stringify(updated, null, 2) + '\n');
    renameSync(`${file}.weft.tmp`, file);
    out.conflists.push(file);
  }
  if (o.binDir) {
    const binary = join(o.binDir, PLUGIN_TYPE);
    try {
      rmSync(binary);
      out.binary = binary;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return out;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      'bin-dir': { type: 'string' }, 'conf-dir': { type: 'string' }, socket: { type: 'string' },
      'exclude-namespace': { type: 'string', multiple: true },
    },
  });
  const binDir = values['bin-dir'];
  const confDir = values['conf-dir'];
  if (!binDir || !confDir || !values.socket) throw new Error('--bin-dir, --conf-dir and --socket are required');
  const plugin = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'cni', PLUGIN_TYPE);
  const tmp = join(binDir, `.${PLUGIN_TYPE}.tmp`);
  copyFileSync(plugin, tmp);
  chmodSync(tmp, 0o755);
  renameSync(tmp, join(binDir, PLUGIN_TYPE));
  const lists = readdirSync(confDir).filter((f) => f.endsWith('.conflist')).sort();
  if (lists.length === 0) {
    // The node's network plugin writes its configuration when it starts; the kubelet retries us.
    throw new Error(`no *.conflist in ${confDir} yet: the node's network plugin has not written its configuration`);
  }
  const file = join(confDir, lists[0]!);
  const conflist = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const updated = withWeftPlugin(conflist, { agentSocket: values.socket, excludeNamespaces: values['exclude-namespace'] ?? [] });
  writeFileSync(`${file}.weft.tmp`, JSON.stringify(updated, null, 2) + '\n');
  renameSync(`${file}.weft.tmp`, file);
  process.stdout.write(`installed ${join(binDir, PLUGIN_TYPE)} and chained it in ${file}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    process.stderr.write(`install-cni: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
