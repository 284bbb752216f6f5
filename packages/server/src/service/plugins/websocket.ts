/**
 * `GET /v1/ws`: the device's live connection, on the same TLS port as HTTP. Every frame is
 * untrusted: it must be a text frame of at most MAX_FRAME_BYTES holding JSON that matches
 * a ClientFrame schema, or it is answered with an `error` frame and changes nothing. The
 * first accepted frame must be `auth`; until then everything else is refused. Frames of one
 * connection are handled strictly one after another, so a device's sends keep their order.
 *
 * Pipelining: a `send` or `ack` frame is handed to the storage in order (its write queued
 * for the next group commit) and the next frame is read without waiting for the COMMIT;
 * the answer (`sent`, or `error`) goes out once the commit returned, through a per-connection
 * chain, so answers keep the frames' order and a `sent` still means "on disk". Any other
 * frame first waits for every earlier answer. A pipelined frame counts against
 * MAX_PENDING_FRAMES until its answer is out.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { ClientFrame, MAX_FRAME_BYTES, type ServerFrameJson, type WireErrorCode } from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import { type RawData, WebSocket, WebSocketServer } from 'ws';
import { isServerError } from '../../errors.js';
import { describeZodError, toWireFailure } from '../api-error.js';
import { authorizeFrame } from '../authz.js';
import { PREKEY_LOW_WATERMARK, type ServiceContext } from '../context.js';
import { CLOSE_POLICY, CLOSE_REMOVED, CLOSE_UNAUTHENTICATED, type DeviceConnection } from '../hub.js';
import type { SessionIdentity } from '../sessions.js';
import { sendEnvelopes } from './messages.js';

export const WS_PATH = '/v1/ws';
/** Time a new connection has to authenticate. */
export const AUTH_TIMEOUT_MS = 10_000;
/** Frames waiting to be handled on one connection before it is closed as abusive. */
export const MAX_PENDING_FRAMES = 128;
/** ws refuses (close 1009) frames above this outright; between MAX_FRAME_BYTES and this we answer PAYLOAD_TOO_LARGE. */
const HARD_FRAME_LIMIT = 2 * MAX_FRAME_BYTES;
/** Pings keep NAT state alive and find dead peers. */
const HEARTBEAT_MS = 30_000;

class Connection implements DeviceConnection {
  identity: SessionIdentity | undefined;
  pending = 0;
  chain: Promise<void> = Promise.resolve();
  /** Answers of pipelined frames, in frame order. */
  replies: Promise<void> = Promise.resolve();
  alive = true;
  batch = false;
  #corked = false;

  constructor(readonly ws: WebSocket) {}

  get userId(): string {
    return this.identity!.userId;
  }
  get deviceId(): number {
    return this.identity!.deviceId;
  }

  send(frame: ServerFrameJson): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    // Frames sent in one go (the answers and pushes that follow a group commit) leave in
    // one TLS write: the socket is corked until the current callback and its microtasks end.
    if (!this.#corked) {
      const socket = (this.ws as unknown as { _socket?: Duplex })._socket;
      if (socket) {
        this.#corked = true;
        socket.cork();
        process.nextTick(() => {
          this.#corked = false;
          socket.uncork();
        });
      }
    }
    this.ws.send(JSON.stringify(frame));
  }

  error(code: WireErrorCode, message: string, id?: string): void {
    this.send({ type: 'error', code, message, ...(id === undefined ? {} : { id }) });
  }

  close(code: number, reason: string): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close(code, reason);
    }
  }
}

/** A request id to echo in an error, if the frame had a plausible one (it may be malformed otherwise). */
function requestIdOf(value: unknown): string | undefined {
  const id = (value as { id?: unknown } | null)?.id;
  return typeof id === 'string' && id.length >= 1 && id.length <= 64 ? id : undefined;
}

export interface WebSocketService {
  readonly wss: WebSocketServer;
  /** Closes every socket (authenticated or not) with `code`. */
  closeAll(code: number, reason: string): void;
}

export function attachWebSocket(app: FastifyInstance, ctx: ServiceContext): WebSocketService {
  const wss = new WebSocketServer({ noServer: true, maxPayload: HARD_FRAME_LIMIT, perMessageDeflate: false });
  const all = new Set<Connection>();

  const handle = async (conn: Connection, data: RawData, isBinary: boolean): Promise<void> => {
    const size = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.byteLength;
    if (size > MAX_FRAME_BYTES) {
      await conn.replies;
      return refuse(conn, 'PAYLOAD_TOO_LARGE', `frames are limited to ${MAX_FRAME_BYTES} bytes`);
    }
    if (isBinary) {
      await conn.replies;
      return refuse(conn, 'BAD_REQUEST', 'frames must be text (JSON)');
    }
    let json: unknown;
    try {
      json = JSON.parse(
        Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.concat(data as Buffer[]).toString('utf8'),
      );
    } catch {
      await conn.replies;
      return refuse(conn, 'BAD_REQUEST', 'the frame is not valid JSON');
    }
    const parsed = ClientFrame.safeParse(json);
    if (!parsed.success) {
      await conn.replies;
      return refuse(conn, 'BAD_REQUEST', describeZodError(parsed.error, 'frame'), requestIdOf(json));
    }
    const frame = parsed.data;

    if (conn.identity && (frame.type === 'send' || frame.type === 'ack')) {
      const me = conn.identity;
      // The frame's rule (ROUTE_RULES "WS send" / "WS ack"): from the grant cache, so a
      // warm connection's sends do not read the storage to be authorised.
      let refused: { err: unknown } | undefined;
      try {
        await authorizeFrame(ctx, frame.type, me);
      } catch (err) {
        refused = { err };
      }
      // Called now, so the storage sees this connection's writes in frame order.
      const outcome: Promise<() => void> = refused
        ? Promise.reject(refused.err)
        : frame.type === 'send'
          ? sendEnvelopes(ctx, me, frame.messages).then(
              (receipts) => () => conn.send({ type: 'sent', id: frame.id, receipts }),
            )
          : ctx.hub.ack(conn, frame.ids).then(() => () => undefined);
      const answer = outcome.catch((err: unknown) => () => {
        const f = toWireFailure(err);
        if (f.unexpected) ctx.log(`websocket frame failed: ${err instanceof Error ? err.name : 'error'}`);
        refuse(conn, f.code, f.message, requestIdOf(json));
      });
      conn.pending++;
      conn.replies = conn.replies
        .then(() => answer)
        .then((emit) => emit())
        .catch((err: unknown) => {
          if (isServerError(err, 'DEVICE_NOT_FOUND') || isServerError(err, 'USER_NOT_FOUND')) {
            // Removed meanwhile (perhaps through another node): a removal, not an internal error.
            conn.close(CLOSE_REMOVED, 'the device was removed');
            return;
          }
          ctx.log(`websocket handler failed: ${err instanceof Error ? err.name : 'error'}`);
          conn.close(1011, 'internal error');
        })
        .finally(() => {
          conn.pending--;
        });
      return;
    }
    await conn.replies;

    if (!conn.identity) {
      if (frame.type !== 'auth')
        return refuse(conn, 'UNAUTHENTICATED', 'authenticate first', requestIdOf(json));
      let me: SessionIdentity;
      try {
        me = await ctx.sessions.authenticate(frame.token);
      } catch {
        refuse(conn, 'UNAUTHENTICATED', 'authentication failed');
        conn.close(CLOSE_UNAUTHENTICATED, 'authentication failed');
        return;
      }
      const device = await ctx.storage.getDevice(me.userId, me.deviceId);
      if (!device) {
        refuse(conn, 'UNAUTHENTICATED', 'authentication failed');
        conn.close(CLOSE_UNAUTHENTICATED, 'authentication failed');
        return;
      }
      conn.identity = me;
      conn.batch = frame.batch === true;
      conn.send({
        type: 'ready',
        userId: me.userId,
        deviceId: me.deviceId,
        oneTimePrekeys: device.oneTimePrekeyCount,
        replenish: device.oneTimePrekeyCount < PREKEY_LOW_WATERMARK,
      });
      ctx.hub.attach(conn);
      return;
    }

    try {
      switch (frame.type) {
        case 'auth':
          return refuse(conn, 'BAD_REQUEST', 'this connection is already authenticated');
        case 'ping':
          await authorizeFrame(ctx, 'ping', conn.identity);
          conn.send({ type: 'pong', ...(frame.id === undefined ? {} : { id: frame.id }) });
          return;
        // `send` and `ack` were pipelined above.
      }
    } catch (err) {
      const f = toWireFailure(err);
      if (f.unexpected) ctx.log(`websocket frame failed: ${err instanceof Error ? err.name : 'error'}`);
      refuse(conn, f.code, f.message, requestIdOf(json));
    }
  };

  const refuse = (conn: Connection, code: WireErrorCode, message: string, id?: string): void => {
    ctx.metrics.frameErrors.inc({ code });
    conn.error(code, message, id);
  };

  wss.on('connection', (ws: WebSocket) => {
    const conn = new Connection(ws);
    all.add(conn);
    ctx.metrics.connections.inc();
    const authTimer = setTimeout(() => {
      if (!conn.identity) conn.close(CLOSE_UNAUTHENTICATED, 'authentication timed out');
    }, AUTH_TIMEOUT_MS);
    authTimer.unref();
    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('message', (data, isBinary) => {
      if (++conn.pending > MAX_PENDING_FRAMES) {
        conn.close(CLOSE_POLICY, 'too many frames in flight');
        return;
      }
      conn.chain = conn.chain
        .then(() => handle(conn, data, isBinary))
        .catch((err: unknown) => {
          if (isServerError(err, 'DEVICE_NOT_FOUND') || isServerError(err, 'USER_NOT_FOUND')) {
            // Removed meanwhile (perhaps through another node): a removal, not an internal error.
            conn.close(CLOSE_REMOVED, 'the device was removed');
            return;
          }
          ctx.log(`websocket handler failed: ${err instanceof Error ? err.name : 'error'}`);
          conn.close(1011, 'internal error');
        })
        .finally(() => {
          conn.pending--;
        });
    });
    ws.on('close', () => {
      clearTimeout(authTimer);
      all.delete(conn);
      ctx.metrics.connections.dec();
      if (conn.identity) ctx.hub.detach(conn);
    });
    // A protocol violation (invalid UTF-8 in a text frame, a frame over the hard limit, bad
    // framing) makes ws close this connection with the matching code (1007, 1009, 1002); a
    // listener must exist so the error does not become an uncaught exception. Other
    // connections are untouched.
    ws.on('error', () => undefined);
  });

  const heartbeat = setInterval(() => {
    for (const conn of all) {
      if (!conn.alive) {
        conn.ws.terminate();
        continue;
      }
      conn.alive = false;
      conn.ws.ping();
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();

  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== WS_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });

  app.addHook('onClose', async () => {
    clearInterval(heartbeat);
  });

  return {
    wss,
    closeAll(code, reason) {
      for (const conn of all) conn.close(code, reason);
      // Anything that does not close politely goes shortly after.
      setTimeout(() => {
        for (const conn of all) conn.ws.terminate();
      }, 1000).unref();
    },
  };
}
