// Preloaded into every process of `make test` with `node --require`: the runner's own process and,
// because the runner passes its flags on, each test file's process. It makes the process's stdout
// blocking.
// - A test file's process sends its results to the runner over stdout, a pipe. Node writes to a
//   pipe asynchronously, so with --test-force-exit the process can exit with result frames still
//   queued: the tail of the file's results is lost, and the file still passes with fewer tests
//   (nodejs/node#64833; seen once here: a fresh clone beside a CPU hog reported
//   install-render.test.ts cut off after 22 of its 33 tests).
// - The runner's process force-exits the same way once the last file is done, so the end of the
//   report (the failed-test list and the summary CI reads) can be lost when its stdout is a pipe.
// `--require`, not `--import`: the runner's own process loads `--require` modules but never loads
// `--import` ones (they run only before a main script), so an `--import` preload left the runner's
// stdout asynchronous and lost the end of 1 report in 5 on this machine.
(process.stdout as unknown as { _handle?: { setBlocking?: (on: boolean) => number } })._handle?.setBlocking?.(true);
