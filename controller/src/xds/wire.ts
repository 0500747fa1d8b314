// DeltaConfigResponse encoding for the config server (proto/weft/xds.proto). A published resource
// is the same bytes for every client that receives it, so each one is encoded once, when it is first
// sent, and a response is its header fields and the resources' cached bytes put together: an
// initial sync to 50 agents encodes the 10,000 workloads once, not 50 times (protobufjs' per-field
// writer objects were most of the controller's heap growth and CPU during a sync). The bytes are the
// ones protobufjs writes for the same message (test/unit/controller-xds-wire.test.ts).
import type { DeltaConfigResponse, WireResource } from '../../../lib/xds/protocol.ts';

/** A resource as the config server publishes it: the encoding is cached on the entry itself. */
export interface EncodableResource {
  readonly version: string;
  readonly body: string;
  /** Resources.name is the map key, not part of the entry: the cache is by entry and name. */
  wire?: { name: string; bytes: Buffer };
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

/** The bytes of one `resources` entry (tag, length, Resource message) of a response. */
export function encodeResourceEntry(name: string, version: string, body: string): Buffer {
  const inner = stringFieldLength(name) + stringFieldLength(version) + stringFieldLength(body);
  const buf = Buffer.allocUnsafeSlow(1 + varintLength(inner) + inner);
  let at = 0;
  buf[at++] = RESPONSE.resources;
  at = writeVarint(buf, at, inner);
  at = writeStringField(buf, at, RESOURCE.name, name);
  at = writeStringField(buf, at, RESOURCE.version, version);
  writeStringField(buf, at, RESOURCE.body, body);
  return buf;
}

/** The cached entry bytes of `r` under `name` (encoded on first use). */
function entryBytes(name: string, r: EncodableResource): Buffer {
  if (r.wire?.name !== name) r.wire = { name, bytes: encodeResourceEntry(name, r.version, r.body) };
  return r.wire.bytes;
}

/**
 * A response to one client. It reads as a plain DeltaConfigResponse (`resources` is built when
 * first read: tests and recording wrappers look at it); the config server's serializer asks it for
 * its bytes instead, which are the cached entries of its resources between its own header fields.
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
    for (let i = 0; i < this.#names.length; i++) size += entryBytes(this.#names[i]!, this.#entries[i]!).length;
    for (const n of this.removed_resources) size += stringFieldLength(n);
    size += stringFieldLength(this.nonce);
    const buf = alloc(size);
    let at = writeStringField(buf, 0, RESPONSE.systemVersion, this.system_version_info);
    at = writeStringField(buf, at, RESPONSE.typeUrl, this.type_url);
    for (const r of this.#entries) {
      const e = r.wire!.bytes;
      // TypedArray#set: Buffer#copy's per-call checks cost more than the copy for entries this small.
      buf.set(e, at);
      at += e.length;
    }
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
