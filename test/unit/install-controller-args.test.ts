// The rendered command lines against the parts' own parsers, so a flag a part renames or drops
// fails here instead of in a crash-looping pod.
import { test } from 'node:test';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { parseControllerArgs } from '../../controller/src/main.ts';
import { controllerArgs } from '../../cli/install/controller.ts';
import { agentArgs } from '../../cli/install/agent.ts';
import { LOG_LEVELS, resolveInstallOptions } from '../../cli/install/options.ts';

const OK = { image: 'ghcr.io/acme/weft:0.1.0', trustDomain: 'example.org', namespace: 'mesh' };

test('the controller accepts the command line the install renders', () => {
  const parsed = parseControllerArgs(controllerArgs(resolveInstallOptions(OK)));
  assert.equal(parsed.kube, true);
  assert.equal(parsed.trustDomain, 'example.org');
  assert.equal(parsed.rootNamespace, 'mesh');
  assert.equal(parsed.waypointImage, OK.image);
  assert.equal(parsed.controllerAddress, 'weft-controller.mesh.svc:15012');
  assert.equal(parsed.caCertFile, undefined);
});

test('the controller accepts the CA files and every log level the install offers', () => {
  for (const logLevel of LOG_LEVELS) {
    const parsed = parseControllerArgs(controllerArgs(resolveInstallOptions({ ...OK, logLevel, caSecret: 'weft-ca' })));
    assert.equal(parsed.logLevel, logLevel);
    assert.equal(parsed.caDir, '/etc/weft/ca');
    assert.equal(parsed.requireClientIdentity, true);
  }
});

// agent/src/main.ts parses its flags at import, so its option table is read as text here.
const AGENT_MAIN = fileURLToPath(new URL('../../agent/src/main.ts', import.meta.url));
const agentMain = existsSync(AGENT_MAIN) ? readFileSync(AGENT_MAIN, 'utf8') : undefined;
test('the agent knows every flag the install passes it', { skip: !agentMain && 'agent/src/main.ts is not written yet' }, () => {
  const flags = agentArgs(resolveInstallOptions(OK)).filter((a) => a.startsWith('--')).map((a) => a.slice(2));
  assert.ok(flags.length >= 6);
  for (const f of flags) assert.match(agentMain ?? '', new RegExp(`['"]?${f}['"]?: \\{ type: 'string'`), `--${f}`);
});
