// Gateway API mesh (GAMMA) conformance, translated (features.ts says which release): one local
// mesh for the whole tier, each upstream test's manifests applied in turn, its cases sent from
// clients inside mesh pods, and a report of passed, failed and skipped tests and features at the
// end (report.ts; `make test-conformance` also writes docs/CONFORMANCE.md).
//
// A test marked `todo` exposes a known bug another branch is fixing: it still runs and is reported
// as failed, without failing the run. A test marked `skip` needs a feature Weft does not implement.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { localMeshSuite } from '../e2e/mesh-suite.ts';
import { startConformanceMesh, type ConformanceMesh } from './harness.ts';
import { MESH_HTTP_TESTS } from './mesh-http.ts';
import { MESH_GRPC_TESTS } from './mesh-grpc.ts';
import { CORE_HTTP_TESTS } from './core-http.ts';
import { writeReport, type TestResult } from './report.ts';
import { GATEWAY_API_VERSION, type ConformanceTest } from './features.ts';

const suite = localMeshSuite();
let cm: ConformanceMesh;
const results: TestResult[] = [];
const ALL: ConformanceTest[] = [...MESH_HTTP_TESTS, ...CORE_HTTP_TESTS, ...MESH_GRPC_TESTS];
const only = process.env['CONFORMANCE_ONLY']?.split(',');

// One suite, so the mesh set-up counts for the suite rather than for its first test.
describe(`Gateway API ${GATEWAY_API_VERSION} mesh conformance`, () => {
  before(async () => {
    cm = await startConformanceMesh(suite);
  });

  after(() => {
    writeReport([...results].sort((a, b) => ALL.indexOf(a.test) - ALL.indexOf(b.test)));
  });

  for (const t of ALL) {
    if (only && !only.includes(t.name)) continue;
    const opts = t.skip ? { skip: t.skip } : t.todo ? { todo: t.todo } : {};
    test(`${t.name}: ${t.description} [${t.features.join(', ')}]`, opts, async () => {
      const started = Date.now();
      const record = (outcome: TestResult['outcome'], details: string[]) => results.push({ test: t, outcome, details, ms: Date.now() - started });
      let failures: string[];
      try {
        await cm.apply(t.name, t.manifests);
        failures = await t.run(cm);
      } catch (err) {
        failures = [(err as Error).message];
      }
      record(failures.length === 0 ? 'passed' : 'failed', failures);
      assert.deepEqual(failures, [], `${t.name}: ${failures.length} case(s) do not conform:\n${failures.join('\n')}`);
    });
  }
});

// Skipped tests never run their body; record them for the report.
for (const t of ALL) if (t.skip && (!only || only.includes(t.name))) results.push({ test: t, outcome: 'skipped', details: [t.skip], ms: 0 });
