// Preloaded into every process of `make test` (node --import, which the runner passes on to each
// test file's process). In a test file's process (NODE_TEST_CONTEXT is set by the runner), the
// results go to the runner over stdout, a pipe; Node writes to a pipe asynchronously, so with
// --test-force-exit the process can exit with result frames still queued: the tail of the file's
// results is lost, and the file still passes with fewer tests (nodejs/node#64833; seen here once, a
// fresh clone beside a CPU hog reported install-render.test.ts cut off after 22 of its 33 tests).
// Blocking writes leave nothing queued at exit. The runner's own process is left as it is.
if (process.env.NODE_TEST_CONTEXT !== undefined) {
  (process.stdout as unknown as { _handle?: { setBlocking?: (on: boolean) => number } })._handle?.setBlocking?.(true);
}
