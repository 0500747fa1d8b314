// The rendered command lines against the parts' own parsers, so a flag a part renames or drops
// fails here instead of in a crash-looping pod.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseControllerArgs } from '../../controller/src/main.ts';
import { parseAgentArgs } from '../../agent/src/main.ts';
import { controllerArgs } from '../../cli/install/controller.ts';
import { agentArgs } from '../../cli/install/agent.ts';
import { LOG_LEVELS, resolveInstallOptions } from '../../cli/install/options.ts';
import { eastwestArgs } from '../../cli/install/eastwest.ts';
import { parseEastWestArgs } from '../../eastwest/src/main.ts';

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

// Istio's meshConfig.trustDomainAliases: the controller compiles principals for every trust domain
// of the bundle and hands the aliases to its waypoints; agents and the east-west gateway admit
// their identities. An install that set them on one part only would refuse the others' callers.
test('trust domain aliases reach the controller, the agents and the east-west gateway (weftctl install --trust-domain-alias)', () => {
  const o = resolveInstallOptions({ ...OK, trustDomainAliases: ['old-td', 'older-td'], clusterId: 'c1', eastwest: true });
  assert.deepEqual(parseControllerArgs(controllerArgs(o)).trustDomainAliases, ['old-td', 'older-td']);
  const agent = parseAgentArgs(agentArgs(o));
  assert.ok(agent.kind === 'agent');
  if (agent.kind === 'agent') assert.deepEqual(agent.options.trustDomainAliases, ['old-td', 'older-td']);
  // The kubelet expands $(POD_IP) in a container's args; stand in for it.
  const gateway = eastwestArgs(o).map((a) => a.replace('$(POD_IP)', '10.0.0.7'));
  assert.deepEqual(parseEastWestArgs(gateway).trustDomainAliases, ['old-td', 'older-td']);
  // Without aliases no part is given the flag.
  const none = resolveInstallOptions(OK);
  for (const args of [controllerArgs(none), agentArgs(none)]) assert.ok(!args.includes('--trust-domain-alias'));
});
