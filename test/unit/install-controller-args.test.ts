// The rendered command lines against the parts' own parsers, so a flag a part renames or drops
// fails here instead of in a crash-looping pod.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseControllerArgs } from '../../controller/src/main.ts';
import { parseAgentArgs } from '../../agent/src/main.ts';
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

test('the agent parses the command line the install gives it (agent/src/main.ts parseAgentArgs)', () => {
  const c = parseAgentArgs(agentArgs(resolveInstallOptions(OK)));
  assert.equal(c.kind, 'agent');
  if (c.kind === 'agent') assert.equal(c.options.trustDomain, 'example.org');
});

test('the install\'s agents splice same-node connections only when installed with splice on (weftctl install --splice)', () => {
  const off = parseAgentArgs(agentArgs(resolveInstallOptions(OK)));
  const on = parseAgentArgs(agentArgs(resolveInstallOptions({ ...OK, splice: true })));
  assert.ok(off.kind === 'agent' && off.options.splice !== true, 'default: not spliced');
  assert.ok(on.kind === 'agent' && on.options.splice === true, 'splice: true → --splice');
});
