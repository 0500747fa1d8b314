// A small WebSocket server side (RFC 6455) for the sample apps and tests: the opening handshake
// (section 4.2) and unfragmented text, binary, ping and close frames (section 5). Enough for an echo
// service that shows upgrades crossing the mesh; not a general WebSocket library.
import { createHash } from 'node:crypto';
import type http from 'node:http';
import type { Duplex } from 'node:stream';

/** RFC 6455 section 1.3: the GUID the accept key is derived with. */
const ACCEPT_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export function acceptKey(key: string): string {
  return createHash('sha1').update(key + ACCEPT_GUID).digest('base64');
}

export interface WebSocketPeer {
  send(data: string | Buffer): void;
  close(code?: number): void;
}

/**
 * Completes the handshake of an upgrade request (node:http's 'upgrade' event) and calls
 * `onMessage` for each text or binary message. A request that is not a valid version-13 handshake
 * gets 400 and the connection is closed. `extraHeaders` go into the 101.
 */
export function acceptWebSocket(req: http.IncomingMessage, socket: Duplex, head: Buffer, onMessage: (peer: WebSocketPeer, data: Buffer, text: boolean) => void, extraHeaders: Record<string, string> = {}): WebSocketPeer | undefined {
  const key = req.headers['sec-websocket-key'];
  if (req.method !== 'GET' || typeof key !== 'string' || req.headers['sec-websocket-version'] !== '13') {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return undefined;
  }
  socket.on('error', () => {});
  const extra = Object.entries(extraHeaders).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptKey(key)}\r\n${extra}\r\n`);
  let closed = false;
  const frame = (opcode: number, payload: Buffer): void => {
    if (closed || socket.destroyed) return;
    const n = payload.length;
    const header = n < 126 ? Buffer.from([0x80 | opcode, n])
      : n < 65536 ? Buffer.from([0x80 | opcode, 126, n >> 8, n & 0xff])
        : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
    socket.write(Buffer.concat([header, payload]));
  };
  const peer: WebSocketPeer = {
    send: (data) => frame(typeof data === 'string' ? 1 : 2, typeof data === 'string' ? Buffer.from(data) : data),
    close: (code = 1000) => {
      const b = Buffer.alloc(2);
      b.writeUInt16BE(code);
      frame(8, b);
      closed = true;
      socket.end();
    },
  };
  let buf = head;
  const parse = (): void => {
    for (;;) {
      if (buf.length < 2) return;
      const fin = (buf[0]! & 0x80) !== 0;
      const opcode = buf[0]! & 0x0f;
      const masked = (buf[1]! & 0x80) !== 0;
      let len = buf[1]! & 0x7f;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      // Section 5.1: a server closes the connection on an unmasked client frame.
      if (!masked || !fin) { peer.close(!masked ? 1002 : 1003); return; }
      if (buf.length < off + 4 + len) return;
      const mask = buf.subarray(off, off + 4);
      const payload = Buffer.from(buf.subarray(off + 4, off + 4 + len));
      for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i & 3]!;
      buf = buf.subarray(off + 4 + len);
      if (opcode === 8) { if (!closed) peer.close(payload.length >= 2 ? payload.readUInt16BE(0) : 1000); return; }
      if (opcode === 9) frame(10, payload);
      else if (opcode === 1 || opcode === 2) onMessage(peer, payload, opcode === 1);
    }
  };
  socket.on('data', (c: Buffer) => { buf = buf.length === 0 ? c : Buffer.concat([buf, c]); parse(); });
  socket.on('end', () => socket.end());
  parse();
  return peer;
}
