/**
 * HTTP/2 and TLS tunables shared by the HBONE server and pool. Measured with
 * bench/hbone-throughput.ts; lib/hbone/README.md has the numbers behind the defaults.
 */

import { PORTS } from '../defaults.ts';

/** The HBONE port on agents and waypoints. */
export const HBONE_PORT = PORTS.hbone;

/** Response header that carries why a CONNECT was refused (free text, bounded, no CR/LF). */
export const HBONE_REASON_HEADER = 'weft-reason';

/**
 * Per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE). The default 64 KiB caps one stream at
 * 64 KiB per round trip; 4 MiB covers a 10 Gbit/s path with 3 ms RTT. Node only returns window when
 * the application has read the data, so this is also the most a slow reader can make us buffer.
 */
export const DEFAULT_STREAM_WINDOW = 4 * 1024 * 1024;

/** Connection-level receive window, shared by all streams of a session. */
export const DEFAULT_CONNECTION_WINDOW = 64 * 1024 * 1024;

/**
 * SETTINGS_MAX_FRAME_SIZE we accept. Node's nghttp2 sends DATA frames of at most 16 KiB whatever the
 * peer allows (measured: no change from 16 KiB to 1 MiB), so the protocol default it stays.
 */
export const DEFAULT_MAX_FRAME_SIZE = 16 * 1024;

/**
 * SETTINGS_MAX_CONCURRENT_STREAMS the server advertises: tunnels one peer may hold per session.
 * Twice what the pool puts on a session (DEFAULT_MAX_STREAMS_PER_SESSION). Node's server refuses a
 * new stream (RST_STREAM ENHANCE_YOUR_CALM) while its own table of streams is at this limit, and
 * that table can run ahead of the client's count under load; after 100 refusals in a row it ends
 * the session, every tunnel on it included, with "The user callback function failed"
 * (NGHTTP2_ERR_CALLBACK_FAILURE). Seen three times in one 30 s run of
 * test/e2e/reliability-load.test.ts under a CPU hog (456 connections lost); the slack keeps an
 * agent's pool from ever meeting the limit, and a peer that ignores SETTINGS still does.
 */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 2000;

/**
 * Streams the pool puts on one client session before it opens another to the same destination
 * (the server's SETTINGS_MAX_CONCURRENT_STREAMS caps it too). Without this, connects beyond the
 * server's limit would queue inside nghttp2 until some tunnel ends.
 */
export const DEFAULT_MAX_STREAMS_PER_SESSION = 1000;

/**
 * nghttp2 memory per session in MB. Node's default (10) is below what large windows can hold in
 * flight; above the cap Node refuses new streams with ENHANCE_YOUR_CALM.
 */
export const DEFAULT_MAX_SESSION_MEMORY_MB = 256;

/** Header block limit; CONNECT headers are small, anything large is abuse. */
export const MAX_HEADER_LIST_SIZE = 16 * 1024;

/** TLS handshake deadline on the server. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/** A server session without open streams is closed after this long. */
export const DEFAULT_SERVER_IDLE_TIMEOUT_MS = 5 * 60_000;

/** A pooled client session without open streams is closed after this long. */
export const DEFAULT_POOL_IDLE_TIMEOUT_MS = 60_000;

/**
 * A pooled client session sends a PING this often and is torn down when one goes unanswered for
 * DEFAULT_PING_TIMEOUT_MS, as ztunnel's HBONE client does (src/proxy/h2.rs `do_ping_pong`: 10 s,
 * 20 s): a destination that went away without a FIN or RST (node lost, path blackholed, an agent
 * that stopped reading) must not keep its tunnels and the pool's next connects waiting on it.
 */
export const DEFAULT_PING_INTERVAL_MS = 10_000;
export const DEFAULT_PING_TIMEOUT_MS = 20_000;

/** Deadline for session establishment plus the CONNECT's 200. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/**
 * Rapid-reset guard (CVE-2023-44487): streams the peer resets before we answered them cost us a
 * handler call (and often an upstream connect) each. More than this many inside the interval, each
 * reset within the minimum lifetime of its stream (Envoy's premature reset), and the session takes
 * no new streams: GOAWAY(NO_ERROR, "rapid reset"), then a graceful close.
 */
export const DEFAULT_RAPID_RESET_MAX = 100;
export const DEFAULT_RAPID_RESET_INTERVAL_MS = 1000;
export const DEFAULT_RAPID_RESET_MIN_LIFETIME_MS = 1000;
/**
 * ... and over a session's life: once it has opened this many streams, more than half of them reset
 * before their answer ends it the same way (Envoy's overload.premature_reset_total_stream_count),
 * so that a peer staying just under the burst limit every second is cut off too.
 */
export const DEFAULT_RAPID_RESET_TOTAL_STREAMS = 500;

/** Request headers the server hands to the connect handler by default. */
export const DEFAULT_FORWARDED_HEADERS: readonly string[] = ['forwarded', 'x-forwarded-client-cert', 'baggage', 'traceparent', 'tracestate'];

/**
 * Bytes a client may send on a CONNECT before its answer. HBONE clients (the pool, ztunnel) wait
 * for the 200; what comes earlier is held by the server while the handler decides, so past this the
 * stream is reset (ENHANCE_YOUR_CALM) and counted (`early-data`).
 */
export const DEFAULT_MAX_EARLY_DATA = 64 * 1024;

/**
 * Bytes a session's answered streams may hold received and not yet taken by their destinations.
 * Node returns connection-level window as data arrives, so only each stream's window bounds it:
 * 2,000 streams of 4 MiB whose destinations do not read would be 8 GiB. Past this, the server
 * shrinks every stream's window (SETTINGS_INITIAL_WINDOW_SIZE, RFC 9113 section 6.9.2) until the
 * destinations have caught up to a quarter of it.
 */
export const DEFAULT_SESSION_BUFFER = 64 * 1024 * 1024;

/** The stream window while a session is over its buffer. */
export const THROTTLED_STREAM_WINDOW = 64 * 1024;

/** How often a session with open tunnels is checked against its buffer. */
export const SESSION_BUFFER_CHECK_MS = 200;

/**
 * Once a tunnel's CONNECT stream has closed, its destination has this long to take the client's
 * last bytes; past it the destination is reset (`drain-timeout`) and the tunnel released. Without
 * it a destination that half-closes and never reads holds its peer's tunnel slot forever (the pipe
 * waits for its write to finish and the server's pipe has no idle timeout).
 */
export const DEFAULT_DRAIN_TIMEOUT_MS = 5_000;

/** A peer that does not acknowledge our SETTINGS within this long is cut off (RFC 9113 6.5.3, SETTINGS_TIMEOUT). */
export const SETTINGS_ACK_TIMEOUT_MS = 5_000;

/**
 * Bytes all of a server's tunnels may hold together, both ways: streams' and destinations'
 * buffers, the pipes', and what CONNECTs carried before their answer (memory-pressure.ts). Past it
 * the largest tunnels of the peer holding the most are reset (`memory-pressure`) until the total is below
 * MEMORY_RESET_TARGET of it, as Envoy's reset_high_memory_stream does under memory pressure.
 * By default it is this fraction of the process's cgroup v2 memory limit (memory.max, read at
 * start: defaultMemoryBudget), so that the server resets tunnels before the kernel kills the
 * container: the other half is the process itself (V8's heap, code) and what the budget does not
 * see (kernel socket buffers, the capacity of pooled chunks beyond what they hold; ARCHITECTURE).
 */
export const MEMORY_BUDGET_FRACTION = 0.5;

/**
 * The budget when the process has no cgroup memory limit (`max`) or it cannot be read: half the
 * smallest limit Weft installs a component with (the east-west gateway's 512 MiB;
 * cli/install/eastwest.ts), so that it fits every container Weft ships. Under legitimate load a
 * tunnel holds at most its stream window (4 MiB) and its pipe (256 KiB a direction) while its far
 * side reads slower than its near side sends, and a session's unread bytes are throttled at its
 * buffer (64 MiB): 256 MiB is sixty such uploads backed up at the same moment.
 */
export const FALLBACK_MEMORY_BUDGET = 256 * 1024 * 1024;

/**
 * At most this many tunnels are reset at one check (the next goes on 200 ms later), so that a
 * check under pressure costs a bounded time: Envoy's reset_high_memory_stream resets at most 50
 * streams an invocation (source/common/buffer/watermark_buffer.cc, kMaxNumberOfStreamsToResetPerInvocation).
 */
export const MEMORY_RESETS_PER_CHECK = 50;

/** Resets under memory pressure stop once the total is below this fraction of the budget. */
export const MEMORY_RESET_TARGET = 0.75;
