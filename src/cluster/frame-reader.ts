// The read side of a peer link, shared by the dialer (transport.ts) and the
// listener (peer-inbound.ts): bytes go through the bounded frame decoder; once
// the link has a session key, each frame's MAC is checked before it is decoded.
// Any error closes the link through `fail`; `fail` destroys the socket, and no
// frame after it is handed on.

import type net from 'node:net';
import { type Frame, type FrameDecoder, decodeFrame } from './codec.ts';
import type { FrameOpener } from './peer-crypto.ts';

export function readFrames(
  socket: net.Socket,
  decoder: FrameDecoder,
  /** The link's frame opener once it has a session key (read for every frame: the handshake sets it). */
  opener: () => FrameOpener | undefined,
  fail: (why: string) => void,
  onFrame: (f: Frame) => void,
): void {
  socket.on('data', (chunk: Buffer) => {
    let frames: Buffer[];
    try {
      frames = decoder.push(chunk);
    } catch (err) {
      fail((err as Error).message);
      return;
    }
    for (let body of frames) {
      if (socket.destroyed) return;
      let f: Frame;
      try {
        const o = opener();
        if (o) body = o.open(body);
        f = decodeFrame(body);
      } catch (err) {
        fail((err as Error).message);
        return;
      }
      onFrame(f);
    }
  });
}
