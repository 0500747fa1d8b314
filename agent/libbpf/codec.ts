// Codecs: TypeScript mirrors of the C structs that BPF programs and user space share. Integers are
// in host order (little-endian on every machine Weft runs on, as the kernel stores them); IPv4/IPv6
// addresses and the be16/be32 codecs are in network order, as struct sockaddr and packet headers
// keep them. Every codec has an explicit size and alignment, and struct() lays fields out the way
// C does (natural alignment, explicit offsets and padding allowed), so a layout that drifts from
// the header shows up as a size or offset mismatch (see checkLayout and BpfObject#btfStruct).
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

export class CodecError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'CodecError';
    this.code = code;
  }
}

export interface Codec<T> {
  /** Bytes it occupies, like C's sizeof. */
  readonly size: number;
  /** Alignment, like C's _Alignof. */
  readonly align: number;
  /** For messages: 'u32', 'ipv4', 'struct weft_pod', ... */
  readonly name: string;
  read(buf: Uint8Array, offset: number): T;
  write(buf: Uint8Array, offset: number, value: T): void;
  /** A new zero-filled Buffer of `size` bytes holding the value, or `buf` with the value at 0. */
  encode(value: T, buf?: Buffer): Buffer;
  /** Reads the value at offset 0; the buffer must hold at least `size` bytes. */
  decode(buf: Uint8Array): T;
  /** Throws the CodecError decode() throws when `buf` holds fewer than `size` bytes. */
  checkSize(buf: Uint8Array): void;
}

export interface CodecSpec<T> {
  name: string;
  size: number;
  align?: number;
  read(buf: Uint8Array, offset: number): T;
  write(buf: Uint8Array, offset: number, value: T): void;
}

/** A codec from its read/write pair; encode and decode check sizes. */
export function codec<T>(spec: CodecSpec<T>): Codec<T> {
  const { name, size, read, write } = spec;
  const align = spec.align ?? 1;
  const checkSize = (buf: Uint8Array): void => {
    if (buf.length < size) throw new CodecError('WEFT_CODEC_SIZE', `${name}: ${buf.length} bytes are fewer than its size ${size}`);
  };
  return {
    name,
    size,
    align,
    read,
    write,
    encode(value: T, buf?: Buffer): Buffer {
      const out = buf ?? Buffer.alloc(size);
      if (out.length < size) throw new CodecError('WEFT_CODEC_SIZE', `${name}: buffer of ${out.length} bytes is shorter than ${size}`);
      write(out, 0, value);
      return out;
    },
    decode(buf: Uint8Array): T {
      checkSize(buf);
      return read(buf, 0);
    },
    checkSize,
  };
}

function intRange(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new CodecError('WEFT_CODEC_VALUE', `${name}: ${String(v)} is not an integer in ${min}..${max}`);
  }
  return v;
}

function bigRange(name: string, v: unknown, min: bigint, max: bigint): bigint {
  const b = typeof v === 'number' && Number.isInteger(v) ? BigInt(v) : v;
  if (typeof b !== 'bigint' || b < min || b > max) {
    throw new CodecError('WEFT_CODEC_VALUE', `${name}: ${String(v)} is not an integer in ${min}..${max}`);
  }
  return b;
}

// The integer codecs read and write bytes directly (no DataView per access): struct codecs of the
// datapath decode with them once per connection, per refusal and per counter at each scrape.
const rd16 = (b: Uint8Array, o: number): number => b[o]! | (b[o + 1]! << 8);
const rd32 = (b: Uint8Array, o: number): number => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
const rd64 = (b: Uint8Array, o: number): bigint => {
  const lo = rd32(b, o), hi = rd32(b, o + 4);
  return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
};
const wr16 = (b: Uint8Array, o: number, v: number): void => { b[o] = v & 0xff; b[o + 1] = (v >>> 8) & 0xff; };
const wr32 = (b: Uint8Array, o: number, v: number): void => {
  b[o] = v & 0xff; b[o + 1] = (v >>> 8) & 0xff; b[o + 2] = (v >>> 16) & 0xff; b[o + 3] = (v >>> 24) & 0xff;
};
const wr64 = (b: Uint8Array, o: number, v: bigint): void => {
  wr32(b, o, Number(v & 0xffffffffn));
  wr32(b, o + 4, Number((v >> 32n) & 0xffffffffn));
};
const rdBe16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;
const rdBe32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
const wrBe32 = (b: Uint8Array, o: number, v: number): void => {
  b[o] = v >>> 24; b[o + 1] = (v >>> 16) & 0xff; b[o + 2] = (v >>> 8) & 0xff; b[o + 3] = v & 0xff;
};

export const u8: Codec<number> = codec({
  name: 'u8', size: 1, align: 1,
  read: (b, o) => b[o]!,
  write: (b, o, v) => { b[o] = intRange('u8', v, 0, 0xff); },
});
export const i8: Codec<number> = codec({
  name: 'i8', size: 1, align: 1,
  read: (b, o) => (b[o]! << 24) >> 24,
  write: (b, o, v) => { b[o] = intRange('i8', v, -0x80, 0x7f) & 0xff; },
});
export const u16: Codec<number> = codec({
  name: 'u16', size: 2, align: 2,
  read: rd16,
  write: (b, o, v) => wr16(b, o, intRange('u16', v, 0, 0xffff)),
});
export const i16: Codec<number> = codec({
  name: 'i16', size: 2, align: 2,
  read: (b, o) => (rd16(b, o) << 16) >> 16,
  write: (b, o, v) => wr16(b, o, intRange('i16', v, -0x8000, 0x7fff)),
});
export const u32: Codec<number> = codec({
  name: 'u32', size: 4, align: 4,
  read: rd32,
  write: (b, o, v) => wr32(b, o, intRange('u32', v, 0, 0xffffffff)),
});
export const i32: Codec<number> = codec({
  name: 'i32', size: 4, align: 4,
  read: (b, o) => rd32(b, o) | 0,
  write: (b, o, v) => wr32(b, o, intRange('i32', v, -0x80000000, 0x7fffffff)),
});
export const u64: Codec<bigint> = codec({
  name: 'u64', size: 8, align: 8,
  read: rd64,
  write: (b, o, v) => wr64(b, o, bigRange('u64', v, 0n, 0xffffffffffffffffn)),
});
export const i64: Codec<bigint> = codec({
  name: 'i64', size: 8, align: 8,
  read: (b, o) => BigInt.asIntN(64, rd64(b, o)),
  write: (b, o, v) => wr64(b, o, BigInt.asUintN(64, bigRange('i64', v, -0x8000000000000000n, 0x7fffffffffffffffn))),
});
/** A __be16 (a port as sockaddr_in and TCP headers hold it), read and written as a host number. */
export const be16: Codec<number> = codec({
  name: 'be16', size: 2, align: 2,
  read: rdBe16,
  write: (b, o, v) => { intRange('be16', v, 0, 0xffff); b[o] = v >>> 8; b[o + 1] = v & 0xff; },
});
/** A __be32 read and written as a host number. */
export const be32: Codec<number> = codec({
  name: 'be32', size: 4, align: 4,
  read: rdBe32,
  write: (b, o, v) => wrBe32(b, o, intRange('be32', v, 0, 0xffffffff)),
});
/** A u8 that is 0 or 1. */
export const bool8: Codec<boolean> = codec({
  name: 'bool8', size: 1, align: 1,
  read: (b, o) => b[o] !== 0,
  write: (b, o, v) => { b[o] = v ? 1 : 0; },
});

/**
 * A dotted-quad IPv4 address as the host-order number of its network-order bytes (10.0.0.1 ->
 * 0x0a000001), or -1 when it is not one (as net.isIPv4 decides: four decimal octets, no leading
 * zeros). Parsed by hand: the datapath encodes addresses once per connection.
 */
function parseIpv4(addr: unknown): number {
  if (typeof addr !== 'string') return -1;
  let acc = 0, octet = 0, digits = 0, dots = 0;
  for (let i = 0; i < addr.length; i++) {
    const ch = addr.charCodeAt(i);
    if (ch === 46) {
      if (digits === 0 || ++dots > 3) return -1;
      acc = acc * 256 + octet;
      octet = 0;
      digits = 0;
    } else if (ch >= 48 && ch <= 57) {
      if (digits > 0 && octet === 0) return -1;
      octet = octet * 10 + ch - 48;
      if (++digits > 3 || octet > 255) return -1;
    } else {
      return -1;
    }
  }
  if (digits === 0 || dots !== 3) return -1;
  return acc * 256 + octet;
}

/**
 * Whether `addr` is a dotted-quad IPv4 address, the one rule the ipv4 codec encodes by (the same
 * answer as net.isIPv4): check an address with this and the encoder takes it.
 */
export function isIpv4(addr: unknown): addr is string {
  return parseIpv4(addr) >= 0;
}

/** An IPv4 address as the host-order number of its network-order bytes (10.0.0.1 -> 0x0a000001). */
export function ipv4ToNumber(addr: string): number {
  const n = parseIpv4(addr);
  if (n < 0) throw new CodecError('WEFT_CODEC_VALUE', `ipv4: ${JSON.stringify(addr)} is not an IPv4 address`);
  return n;
}

/** Dotted-quad IPv4 address <-> the 4 bytes of a __be32 (network order). */
export function ipv4ToBytes(addr: string): Uint8Array {
  const out = new Uint8Array(4);
  wrBe32(out, 0, ipv4ToNumber(addr));
  return out;
}

export const ipv4: Codec<string> = codec({
  name: 'ipv4', size: 4, align: 4,
  read: (b, o) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`,
  write: (b, o, v) => wrBe32(b, o, ipv4ToNumber(v)),
});

export function numberToIpv4(n: number): string {
  intRange('ipv4', n, 0, 0xffffffff);
  return `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

/** Byte-order helpers for code that works with raw numbers (host is little-endian). */
export const htons = (v: number): number => ((v & 0xff) << 8) | ((v >>> 8) & 0xff);
export const ntohs = htons;
export const htonl = (v: number): number => (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
export const ntohl = htonl;

function ipv6ToBytes(addr: string): Uint8Array {
  if (isIP(addr) !== 6) throw new CodecError('WEFT_CODEC_VALUE', `ipv6: ${JSON.stringify(addr)} is not an IPv6 address`);
  // isIP admits a zone (fe80::1%eth0, RFC 4007 11.2), which the parse below would drop: fd00::1%x
  // would be fd00::1 in a map while the config took them for two addresses.
  if (addr.includes('%')) throw new CodecError('WEFT_CODEC_VALUE', `ipv6: ${JSON.stringify(addr)} has a zone, which no map key may carry`);
  let text = addr;
  // A trailing dotted quad (::ffff:10.0.0.1) is the last two groups.
  const quad = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (quad) {
    const q = ipv4ToBytes(quad[2]!);
    text = `${quad[1]}${((q[0]! << 8) | q[1]!).toString(16)}:${((q[2]! << 8) | q[3]!).toString(16)}`;
  }
  const halves = text.split('::');
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
  const groups = halves.length > 1 ? [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail] : head;
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    out[i * 2] = n >> 8;
    out[i * 2 + 1] = n & 0xff;
  });
  return out;
}

/** IPv6 address text <-> 16 bytes in network order. Decodes to the compressed RFC 5952 form. */
export const ipv6: Codec<string> = codec({
  name: 'ipv6', size: 16, align: 4,
  read: (b, o) => {
    const groups: number[] = [];
    for (let i = 0; i < 8; i++) groups.push((b[o + i * 2]! << 8) | b[o + i * 2 + 1]!);
    // v4-mapped addresses in their usual text form, as Node reports them.
    if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
      return `::ffff:${b[o + 12]}.${b[o + 13]}.${b[o + 14]}.${b[o + 15]}`;
    }
    // Longest run (>= 2) of zero groups becomes '::'.
    let best = -1, bestLen = 0;
    for (let i = 0; i < 8;) {
      if (groups[i] !== 0) { i++; continue; }
      let j = i;
      while (j < 8 && groups[j] === 0) j++;
      if (j - i > bestLen && j - i >= 2) { best = i; bestLen = j - i; }
      i = j;
    }
    const hex = groups.map((g) => g.toString(16));
    if (best < 0) return hex.join(':');
    return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
  },
  write: (b, o, v) => b.set(ipv6ToBytes(v), o),
});

/** n raw bytes (a Buffer copy on read; shorter input is zero-padded on write). */
export function bytes(n: number, align = 1): Codec<Buffer> {
  return codec({
    name: `u8[${n}]`, size: n, align,
    read: (b, o) => Buffer.from(b.subarray(o, o + n)),
    write: (b, o, v) => {
      if (v.length > n) throw new CodecError('WEFT_CODEC_VALUE', `u8[${n}]: ${v.length} bytes do not fit`);
      b.fill(0, o, o + n);
      b.set(v, o);
    },
  });
}

/** A NUL-padded char[n] holding UTF-8 text (at most n-1 bytes, so it stays terminated). */
export function cstring(n: number): Codec<string> {
  return codec({
    name: `char[${n}]`, size: n, align: 1,
    read: (b, o) => {
      const s = b.subarray(o, o + n);
      const end = s.indexOf(0);
      return Buffer.from(end < 0 ? s : s.subarray(0, end)).toString('utf8');
    },
    write: (b, o, v) => {
      const enc = Buffer.from(v, 'utf8');
      if (enc.length > n - 1) throw new CodecError('WEFT_CODEC_VALUE', `char[${n}]: ${JSON.stringify(v)} is longer than ${n - 1} bytes`);
      b.fill(0, o, o + n);
      b.set(enc, o);
    },
  });
}

/** T[n], like a C array member. */
export function array<T>(item: Codec<T>, n: number): Codec<T[]> {
  return codec({
    name: `${item.name}[${n}]`, size: item.size * n, align: item.align,
    read: (b, o) => Array.from({ length: n }, (_, i) => item.read(b, o + i * item.size)),
    write: (b, o, v) => {
      if (v.length !== n) throw new CodecError('WEFT_CODEC_VALUE', `${item.name}[${n}]: got ${v.length} items`);
      v.forEach((x, i) => item.write(b, o + i * item.size, x));
    },
  });
}

/** One struct field: [name, codec] at the next aligned offset, [name, codec, offset] at an
 *  explicit one, or ['pad', bytes] for explicit padding. */
export type FieldSpec =
  | readonly [name: string, codec: Codec<unknown>]
  | readonly [name: string, codec: Codec<unknown>, offset: number]
  | readonly ['pad', number];

type FieldValue<E> = E extends readonly [string, Codec<infer V>, ...unknown[]] ? V : never;

/** The object type a list of FieldSpecs decodes to. */
export type StructValue<F extends readonly FieldSpec[]> = {
  [E in F[number] as E extends readonly [infer N extends string, Codec<unknown>, ...unknown[]] ? N : never]: FieldValue<E>;
};

export interface FieldLayout {
  name: string;
  offset: number;
  size: number;
  codec: string;
}

export interface StructCodec<T> extends Codec<T> {
  readonly fields: readonly FieldLayout[];
  /**
   * Each field's own reader, at its offset in a struct at `o` (default 0), unchecked: for a
   * decoder on a per-connection path that builds its own object from the fields (one object,
   * named its way, read as fast as by hand) after checkSize(). decode() fills every field of one
   * shape through one loop shared by all structs, about half as fast.
   */
  readonly get: { readonly [K in keyof T]-?: (b: Uint8Array, o?: number) => T[K] };
}

export interface StructOptions {
  /** For messages, e.g. 'struct weft_pod'. */
  name?: string;
  /** sizeof the C struct when it is larger than the fields need (trailing padding); checked. */
  size?: number;
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

/**
 * The read function of a struct: a copy of one template object holding its fields in order (so
 * that every value decoded has one shape, which V8 keeps fast wherever it is read), filled by a
 * loop over the fields' readers. No generated code. A decoder on a per-connection path reads the
 * fields it needs with `get` instead (struct()).
 */
function structReader<T>(layout: readonly (FieldLayout & { c: Codec<unknown> })[]): (b: Uint8Array, o: number) => T {
  const n = layout.length;
  const names = layout.map((f) => f.name);
  const readers = layout.map((f) => f.c.read);
  const offsets = layout.map((f) => f.offset);
  // Each field starts as what it decodes to (a number, a bigint, a string, a struct's object), so
  // that filling it in never changes the shape's field representations. Object.fromEntries, not
  // assignments by name: past a dozen of those V8 turns an object into a dictionary, and copies
  // of a dictionary are built property by property.
  const zeros = new Uint8Array(layout.reduce((end, f) => Math.max(end, f.offset + f.size), 0));
  const template = Object.fromEntries(layout.map((f) => [f.name, f.c.read(zeros, f.offset)])) as Record<string, unknown>;
  return (b, o) => {
    const out = { ...template };
    for (let i = 0; i < n; i++) out[names[i]!] = readers[i]!(b, o + offsets[i]!);
    return out as T;
  };
}

/**
 * A struct codec. Fields are laid out in order as C would (each at its natural alignment, the
 * total rounded up to the largest alignment) unless an explicit offset or 'pad' says otherwise;
 * overlapping fields and a `size` smaller than the fields are refused when the codec is built.
 * Unused bytes (padding) encode as zero.
 */
export function struct<const F extends readonly FieldSpec[]>(fields: F, opts: StructOptions = {}): StructCodec<StructValue<F>> {
  const name = opts.name ?? 'struct';
  const layout: (FieldLayout & { c: Codec<unknown> })[] = [];
  let offset = 0;
  let align = 1;
  for (const f of fields) {
    if (typeof f[1] === 'number') {
      offset += f[1];
      continue;
    }
    const [fname, c, at] = f as readonly [string, Codec<unknown>, number?];
    const off = at ?? alignUp(offset, c.align);
    if (off < offset) throw new CodecError('WEFT_CODEC_LAYOUT', `${name}.${fname}: offset ${off} overlaps the previous field (ends at ${offset})`);
    if (off % c.align !== 0) throw new CodecError('WEFT_CODEC_LAYOUT', `${name}.${fname}: offset ${off} is not aligned to ${c.align}`);
    layout.push({ name: fname, offset: off, size: c.size, codec: c.name, c });
    offset = off + c.size;
    align = Math.max(align, c.align);
  }
  const natural = alignUp(offset, align);
  const size = opts.size ?? natural;
  if (size < offset) throw new CodecError('WEFT_CODEC_LAYOUT', `${name}: size ${size} is smaller than its fields (${offset} bytes)`);
  const base = codec<StructValue<F>>({
    name, size, align,
    read: structReader<StructValue<F>>(layout),
    write: (b, o, v) => {
      const rec = v as Record<string, unknown>;
      b.fill(0, o, o + size);
      for (const f of layout) {
        const x = rec[f.name];
        if (x === undefined) throw new CodecError('WEFT_CODEC_VALUE', `${name}: field ${f.name} is missing`);
        try {
          f.c.write(b, o + f.offset, x);
        } catch (err) {
          if (err instanceof CodecError) throw new CodecError(err.code, `${name}.${f.name}: ${err.message}`);
          throw err;
        }
      }
    },
  });
  const get = Object.fromEntries(layout.map((f) => [f.name, (b: Uint8Array, o = 0) => f.c.read(b, o + f.offset)]));
  return { ...base, fields: layout.map(({ c: _c, ...rest }) => rest), get: get as StructCodec<StructValue<F>>['get'] };
}

/** The CPUs a percpu map has a slot for: /sys/devices/system/cpu/possible ("0-3", "0,2-5"). */
export function parseCpuList(text: string): number {
  let max = -1;
  for (const part of text.trim().split(',')) {
    if (!part) continue;
    const [a, b] = part.split('-');
    const hi = Number(b ?? a);
    if (!Number.isInteger(hi)) throw new CodecError('WEFT_CODEC_VALUE', `cannot parse CPU list ${JSON.stringify(text)}`);
    max = Math.max(max, hi);
  }
  return max + 1;
}

let cpus: number | undefined;
/** The number of possible CPUs (what libbpf_num_possible_cpus() returns), read once. */
export function possibleCpus(): number {
  cpus ??= parseCpuList(readFileSync('/sys/devices/system/cpu/possible', 'utf8'));
  return cpus;
}

/**
 * The value of a percpu map: one `item` per possible CPU, each in a slot rounded up to 8 bytes
 * (the layout bpf_map_lookup_elem fills for BPF_MAP_TYPE_PERCPU_*).
 */
export function percpu<T>(item: Codec<T>, ncpus: number = possibleCpus()): Codec<T[]> {
  const slot = alignUp(item.size, 8);
  return codec({
    name: `percpu(${item.name})`, size: slot * ncpus, align: 8,
    read: (b, o) => Array.from({ length: ncpus }, (_, i) => item.read(b, o + i * slot)),
    write: (b, o, v) => {
      if (v.length !== ncpus) throw new CodecError('WEFT_CODEC_VALUE', `percpu(${item.name}): got ${v.length} values for ${ncpus} CPUs`);
      b.fill(0, o, o + slot * ncpus);
      v.forEach((x, i) => item.write(b, o + i * slot, x));
    },
  });
}

/** Sum of a decoded percpu counter value (number or bigint items; struct items field by field). */
export function sumPercpu(values: readonly bigint[]): bigint;
export function sumPercpu(values: readonly number[]): number;
export function sumPercpu<T extends Record<string, number | bigint>>(values: readonly T[]): T;
export function sumPercpu(values: readonly unknown[]): unknown {
  if (values.length === 0) return 0;
  const first = values[0];
  if (typeof first === 'bigint') return (values as bigint[]).reduce((a, b) => a + b, 0n);
  if (typeof first === 'number') return (values as number[]).reduce((a, b) => a + b, 0);
  // A copy of the first CPU's struct summed in place (for...in over values of one shape is what
  // V8 makes fast; the counters are summed at each scrape).
  const out = { ...(first as Record<string, number>) };
  for (let i = 1; i < values.length; i++) {
    const v = values[i] as Record<string, number>;
    for (const k in v) out[k]! += v[k]!; // number + number or bigint + bigint, as the field's codec reads
  }
  return out;
}

/** A C layout as BTF reports it (BpfObject#btfStruct / btfStruct()). */
export interface CLayout {
  name: string;
  size: number;
  members: readonly { name: string; bitOffset: number; size: number }[];
}

/**
 * Differences between a struct codec and the C struct's BTF layout: size, and for each codec
 * field the member of the same name's offset and size. Empty when they agree.
 */
export function layoutDiff(codecValue: StructCodec<unknown>, c: CLayout): string[] {
  const out: string[] = [];
  if (codecValue.size !== c.size) out.push(`${codecValue.name}: size ${codecValue.size}, C struct ${c.name} has ${c.size}`);
  for (const f of codecValue.fields) {
    const m = c.members.find((x) => x.name === f.name);
    if (!m) {
      out.push(`${codecValue.name}.${f.name}: no member of that name in struct ${c.name}`);
      continue;
    }
    if (m.bitOffset !== f.offset * 8) out.push(`${codecValue.name}.${f.name}: offset ${f.offset}, C has ${m.bitOffset / 8}`);
    if (m.size !== f.size) out.push(`${codecValue.name}.${f.name}: size ${f.size}, C has ${m.size}`);
  }
  for (const m of c.members) {
    if (!codecValue.fields.some((f) => f.name === m.name) && !/^(__)?pad/.test(m.name)) {
      out.push(`${codecValue.name}: C member ${c.name}.${m.name} has no field`);
    }
  }
  return out;
}

/** Throws a CodecError listing every difference between the codec and the C layout. */
export function checkLayout(codecValue: StructCodec<unknown>, c: CLayout): void {
  const diff = layoutDiff(codecValue, c);
  if (diff.length) throw new CodecError('WEFT_CODEC_LAYOUT', `codec does not match C layout:\n  ${diff.join('\n  ')}`);
}
