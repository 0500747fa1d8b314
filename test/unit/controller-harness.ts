// Test harness: a controller with a real gRPC config stream on loopback and real clients.
import * as grpc from '@grpc/grpc-js';
import { Controller, type ControllerOptions } from '../../controller/src/controller.ts';
import type { CompileOptions } from '../../controller/src/compile.ts';
import type { ConfigSource } from '../../controller/src/sources/source.ts';
import { ConfigServer, addConfigStreamService } from '../../controller/src/xds/server.ts';
import type { Logger, LogFields } from '../../controller/src/log.ts';
import { ConfigClient, type ConfigClientOptions } from '../../lib/xds/client.ts';
import { until as waitUntil } from '../lab/wait.ts';

export interface LogLine { level: string; msg: string; fields: LogFields }

export function captureLogger(lines: LogLine[]): Logger {
  const at = (level: string) => (msg: string, fields: LogFields = {}) => void lines.push({ level, msg, fields });
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export interface Harness {
  controller: Controller;
  configServer: ConfigServer;
  target: string;
  logs: LogLine[];
  agent(node: string, extra?: Partial<ConfigClientOptions<'agent'>>): ConfigClient<'agent'>;
  waypoint(namespace: string, extra?: Partial<ConfigClientOptions<'waypoint'>>): ConfigClient<'waypoint'>;
  close(): Promise<void>;
}

export async function startHarness(source: ConfigSource, compile?: Omit<CompileOptions, 'waypointRuntime'>, extra: Pick<ControllerOptions, 'federation' | 'jwks' | 'registry' | 'onFindings'> = {}): Promise<Harness> {
  const logs: LogLine[] = [];
  const logger = captureLogger(logs);
  const configServer = new ConfigServer({ logger });
  const server = new grpc.Server();
  addConfigStreamService(server, { configServer });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const controller = new Controller({ source, configServer, logger, debounceMs: 5, ...(compile ? { compile } : {}), ...extra });
  await controller.start();
  const target = `127.0.0.1:${port}`;
  const clients: Array<ConfigClient<'agent'> | ConfigClient<'waypoint'>> = [];
  return {
    controller,
    configServer,
    target,
    logs,
    agent(node, extra = {}) {
      const c = new ConfigClient<'agent'>({ target, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: node, backoff: { initialMs: 20, maxMs: 200 }, ...extra });
      c.start();
      clients.push(c);
      return c;
    },
    waypoint(namespace, extra = {}) {
      const c = new ConfigClient<'waypoint'>({ target, credentials: grpc.credentials.createInsecure(), kind: 'waypoint', id: `wp-${namespace}`, namespace, backoff: { initialMs: 20, maxMs: 200 }, ...extra });
      c.start();
      clients.push(c);
      return c;
    },
    async close() {
      for (const c of clients) c.close();
      await controller.stop();
      configServer.closeAll();
      server.forceShutdown();
    },
  };
}

/** The lab's `until` (test/lab/wait.ts), polled every 10 ms, 5 s unless told. */
export async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  await waitUntil(what, check, timeoutMs, { intervalMs: 10 });
}
