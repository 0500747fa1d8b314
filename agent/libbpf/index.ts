// The public surface of Weft's libbpf binding: objects, programs, links, maps with codecs, ring
// buffers and network-namespace helpers. Everything else in agent/libbpf is internal.
export { BpfError, ErrorCodes, VERIFIER_LOG_TAIL_LINES, type BpfErrorContext } from './errors.ts';
export { BpfObject, btfStruct, type OpenOptions } from './object.ts';
export {
  BpfProgram, type CgroupAttachType, type MapRef, type SockmapAttachKind, type TcxDirection, type TcxOptions,
} from './program.ts';
export { BpfLink, SockmapAttachment, type LinkInfo, type ProgramRef } from './link.ts';
export { BpfMap, TypedMap, DEFAULT_BATCH_SIZE, type BatchOptions, type UpdateFlag } from './map.ts';
export { RingBuffer, type RingBufferOptions } from './ringbuf.ts';
export {
  bindSocket, createBoundSocketInNetns, createSocketInNetns, DEFAULT_BACKLOG, fdOf, localPortRange, netnsCookie, parseReservedPorts, PortCursor, socketCookie,
  type BindSocketOptions, type HostPort, type LocalPorts, type PortSearch, type SocketInNetnsOptions,
} from './netns.ts';
export {
  array, be16, be32, bool8, bytes, checkLayout, codec, CodecError, cstring, htonl, htons, i16, i32, i64, i8,
  ipv4, ipv4ToNumber, ipv6, isIpv4, layoutDiff, ntohl, ntohs, numberToIpv4, parseCpuList, percpu, possibleCpus, struct,
  sumPercpu, u16, u32, u64, u8,
  type CLayout, type Codec, type CodecSpec, type FieldLayout, type FieldSpec, type StructCodec, type StructOptions,
  type StructValue,
} from './codec.ts';
export { AddonNotFoundError, addonCandidates } from './native.ts';
