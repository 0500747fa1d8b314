// What the browser tests share: `weftctl dashboard` as a child process on a free port, and Debian's
// Chromium driven by playwright-core.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { until } from '../lab/wait.ts';
import { REPO_ROOT } from '../../cli/local/mesh.ts';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Starts `weftctl dashboard <args> --port 0` and waits until it says where it serves. */
export async function startDashboard(args: string[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'cli/weftctl.ts'), 'dashboard', ...args, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c));
  child.stderr!.on('data', (c: Buffer) => (out += c));
  await until('the dashboard says where it serves', () => /http:\/\/127\.0\.0\.1:\d+\//.test(out) || child.exitCode !== null, 30_000, { explain: () => out });
  assert.equal(child.exitCode, null, `the dashboard exited: ${out}`);
  return { child, url: /http:\/\/127\.0\.0\.1:\d+\//.exec(out)![0] };
}

export async function launchChromium(): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: make deps installs Debian's chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** Where a test's screenshot goes: docs/ with WEFT_UPDATE_SCREENSHOT=1, else the test's own folder. */
export function screenshotPath(name: string, scratch: string): string {
  return join(process.env.WEFT_UPDATE_SCREENSHOT ? join(REPO_ROOT, 'docs') : scratch, name);
}
