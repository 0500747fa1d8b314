// DeltaConfigResponse encoding for the config server (proto/weft/xds.proto): a response's fields
// and its resources' strings written straight into one reused buffer (ScratchBuffer), the bytes
// protobufjs writes for the same message (test/unit/controller-xds-wire.test.ts) without its
// per-field writer objects, which were most of the controller's heap growth and CPU during a sync.
// Each resource's entry was once encoded on its first send and cached on the entry, shared by
// every response that carries it; the copy cost as much memory as the bodies themselves (14 MB
// at 10,000 workloads), and its 21,000 small allocations, made during the initial sync between
// the large response buffers, kept glibc from returning those after they were freed (RSS after a
// run 248-271 → 185-210 MB without it; the sync's controller CPU moved within the noise, 2.97-3.16
// → 2.52-3.57 s). Only each body's UTF-8 length is kept on the entry.
import type { DeltaConfigResponse, WireResource } from '../../../lib/xds/protocol.ts';

/** A resource as the config server publishes it. */
export interface EncodableResource {
  readonly version: string;
  readonly body: string;
  /** The body's UTF-8 length, cached on the entry when first encoded (one pass over it, not two per response). */
  bodyBytes?: number;
}

// Field tags (field number << 3 | wire type 2, length-delimited).
const RESPONSE = { systemVersion: 0x0a, typeUrl: 0x12, resources: 0x1a, removed: 0x22, nonce: 0x2a } as const;
const RESOURCE = { name: 0x0a, version: 0x12, body: 0x1a } as const;

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    len++;
  }
  return len;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[at++] = n;
  return at;
}

/** Tag + length + UTF-8 bytes of a string field. */
function stringFieldLength(s: string): number {
  const n = Buffer.byteLength(s);
  return 1 + varintLength(n) + n;
}

function writeStringField(buf: Buffer, at: number, tag: number, s: string): number {
  buf[at++] = tag;
  const n = Buffer.byteLength(s);
  at = writeVarint(buf, at, n);
  return at + buf.write(s, at, n, 'utf8');
}

/** The length of a Resource message (name, version, body) without its own tag and length. */
function resourceLength(name: string, r: EncodableResource): number {
  const body = (r.bodyBytes ??= Buffer.byteLength(r.body));
  return stringFieldLength(name) + stringFieldLength(r.version) + 1 + varintLength(body) + body;
}

/** Writes one `resources` entry (tag, length, Resource message) at `at`; returns where it ends. */
function writeResourceEntry(buf: Buffer, at: number, name: string, r: EncodableResource): number {
  buf[at++] = RESPONSE.resources;
  at = writeVarint(buf, at, resourceLength(name, r));
  at = writeStringField(buf, at, RESOURCE.name, name);
  at = writeStringField(buf, at, RESOURCE.version, r.version);
  buf[at++] = RESOURCE.body;
  at = writeVarint(buf, at, r.bodyBytes!);
  return at + buf.write(r.body, at, r.bodyBytes!, 'utf8');
}

/** The bytes of one `resources` entry (tag, length, Resource message) of a response. */
export function encodeResourceEntry(name: string, version: string, body: string): Buffer {
  const r: EncodableResource = { version, body };
  const inner = resourceLength(name, r);
  const buf = Buffer.allocUnsafeSlow(1 + varintLength(inner) + inner);
  writeResourceEntry(buf, 0, name, r);
  return buf;
}

/**
 * A response to one client. It reads as a plain DeltaConfigResponse (`resources` is built when
 * first read: tests and recording wrappers look at it); the config server's serializer asks it for
 * its bytes instead (encodeInto).
 */
export class EncodedResponse implements DeltaConfigResponse {
  readonly system_version_info: string;
  readonly type_url: string;
  readonly removed_resources: string[];
  readonly nonce: string;
  /** The resources' names and entries, parallel arrays (no [name, entry] pair per resource). */
  readonly #names: readonly string[];
  readonly #entries: readonly EncodableResource[];
  #resources: WireResource[] | undefined;

  constructor(fields: { system_version_info: string; type_url: string; removed_resources: string[]; nonce: string }, names: readonly string[], entries: readonly EncodableResource[]) {
    if (names.length !== entries.length) throw new Error('EncodedResponse: as many names as entries');
    this.system_version_info = fields.system_version_info;
    this.type_url = fields.type_url;
    this.removed_resources = fields.removed_resources;
    this.nonce = fields.nonce;
    this.#names = names;
    this.#entries = entries;
  }

  get resources(): WireResource[] {
    this.#resources ??= this.#names.map((name, i) => ({ name, version: this.#entries[i]!.version, body: this.#entries[i]!.body }));
    return this.#resources;
  }

  /** The protobuf encoding of the response, as protobufjs would write it, in a buffer of its own. */
  encode(): Buffer {
    return this.#encode(Buffer.allocUnsafe);
  }

  /**
   * The same bytes, written at the start of `scratch`'s buffer (grown when too small): the result
   * is valid only until the next use of `scratch`.
   */
  encodeInto(scratch: ScratchBuffer): Buffer {
    return this.#encode((size) => scratch.take(size));
  }

  #encode(alloc: (size: number) => Buffer): Buffer {
    let size = 0;
    // protobufjs writes proto3 strings even when empty; so does this.
    size += stringFieldLength(this.system_version_info) + stringFieldLength(this.type_url);
    for (let i = 0; i < this.#names.length; i++) {
      const inner = resourceLength(this.#names[i]!, this.#entries[i]!);
      size += 1 + varintLength(inner) + inner;
    }
    for (const n of this.removed_resources) size += stringFieldLength(n);
    size += stringFieldLength(this.nonce);
    const buf = alloc(size);
    let at = writeStringField(buf, 0, RESPONSE.systemVersion, this.system_version_info);
    at = writeStringField(buf, at, RESPONSE.typeUrl, this.type_url);
    for (let i = 0; i < this.#names.length; i++) at = writeResourceEntry(buf, at, this.#names[i]!, this.#entries[i]!);
    for (const n of this.removed_resources) at = writeStringField(buf, at, RESPONSE.removed, n);
    writeStringField(buf, at, RESPONSE.nonce, this.nonce);
    return buf;
  }
}

/**
 * One buffer reused for every response a serializer encodes. grpc-js copies the message it is
 * handed into a framed buffer of its own (5-byte gRPC header + message) before the call returns
 * and keeps nothing else, so a fresh buffer per response (up to 5 MB each for a 10,000-workload
 * initial sync) was garbage at once: dozens of them stayed allocated until a GC noticed, and
 * glibc kept most of that memory after they were freed. The buffer is as large as the largest
 * response so far.
 */
export class ScratchBuffer {
  #buf = Buffer.alloc(0);

  /** The first `size` bytes of the buffer; their previous contents are overwritten by the caller. */
  take(size: number): Buffer {
    // Node's pooled small Buffers could share memory with other Buffers: allocUnsafeSlow never does.
    if (this.#buf.length < size) this.#buf = Buffer.allocUnsafeSlow(size);
    return this.#buf.subarray(0, size);
  }
}

/**
 * A response serializer that encodes EncodedResponses itself and hands anything else to
 * `fallback`. What it returns for an EncodedResponse is valid until its next call: it is for
 * grpc-js's server, which copies it at once.
 */
export function responseSerializer(fallback: (value: DeltaConfigResponse) => Buffer): (value: DeltaConfigResponse) => Buffer {
  // Its result is only read by grpc-js's framing copy (ScratchBuffer), so one buffer serves all.
  const scratch = new ScratchBuffer();
  return (value) => (value instanceof EncodedResponse ? value.encodeInto(scratch) : fallback(value));
}
