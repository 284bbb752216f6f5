/**
 * Delivery: at most one live WebSocket per device, each with a pump that pushes the
 * device's queued envelopes in `seq` order. The storage is the only source of truth: the
 * pump reads what is on disk, so an envelope enqueued while the device was offline, or sent
 * but not acknowledged before a disconnect or a crash, is simply read again next time.
 * Envelopes are deleted only by the device's ack.
 *
 * Order: `seq` increases with every enqueue, and a sender's sends are enqueued one after
 * another, so per-sender order to each device is the seq order the pump delivers in.
 *
 * Several nodes: each attached connection gets a connection id that sorts by attach time
 * (12 hex digits of milliseconds, then 20 random ones). The hub reports attaches, detaches
 * and local enqueues to its listener (the cluster, which tells the other nodes), and the
 * cluster calls `poke` for mail enqueued elsewhere and `replacedElsewhere` when a newer
 * connection of a device was attached on another node. Delivery stays at least once: a
 * device that moves between nodes may get an envelope again that it had not acknowledged
 * (the client de-duplicates by envelope id), never lose one, because storage holds every
 * envelope until its ack.
 */
import { randomBytes } from '@qalqon/crypto';
import { MAX_PUSH_BATCH, MAX_PUSH_BATCH_BODY_CHARS, type ServerFrameJson } from '@qalqon/wire';
import type { Envelope, Storage } from '../storage/types.js';
import type { ServerMetrics } from './metrics.js';

/**
 * Envelopes (and their bytes) pushed to a device and not yet acknowledged, at most: the
 * device's flow control, and a bound on what one slow connection can make the server buffer.
 */
export const MAX_IN_FLIGHT = 256;
export const MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024;
/** Envelopes read from storage per query (the byte bound above may stop a page short). */
export const PAGE = 64;

/** An envelope as a frame carries it; base64 through Buffer, which is native and exact (padded, standard). */
function wireEnvelope(e: Envelope) {
  return {
    id: e.id,
    senderUserId: e.senderUserId,
    senderDeviceId: e.senderDeviceId,
    createdAt: e.createdAt,
    body: Buffer.from(e.body.buffer, e.body.byteOffset, e.body.byteLength).toString('base64'),
  };
}

export interface DeviceConnection {
  readonly userId: string;
  readonly deviceId: number;
  send(frame: ServerFrameJson): void;
  /** The device asked (in its `auth` frame) for `envelopes` frames carrying several envelopes each. */
  readonly batch: boolean;
  /** Closes the socket with a WebSocket close code and reason. */
  close(code: number, reason: string): void;
}

/** WebSocket close codes the server uses (4000-4999 are for applications). */
export const CLOSE_REPLACED = 4000;
export const CLOSE_REMOVED = 4003;
export const CLOSE_UNAUTHENTICATED = 4401;
export const CLOSE_POLICY = 1008;
export const CLOSE_GOING_AWAY = 1001;

/** A new connection id: the attach time (ms, 12 hex digits) then 80 random bits. */
export function newConnectionId(now: number = Date.now()): string {
  return (
    Math.max(0, Math.min(now, 0xffff_ffff_ffff)).toString(16).padStart(12, '0') +
    Buffer.from(randomBytes(10)).toString('hex')
  );
}

/** What the hub reports (to the cluster). */
export interface HubListener {
  attached(userId: string, deviceId: number, connectionId: string): void;
  detached(userId: string, deviceId: number, connectionId: string): void;
  /** Envelopes were enqueued through this node for the device. */
  enqueued(userId: string, deviceId: number): void;
}

/** A live connection as the hub lists it. */
export interface AttachedConnection {
  readonly userId: string;
  readonly deviceId: number;
  readonly connectionId: string;
}

class Pump {
  readonly conn: DeviceConnection;
  readonly connectionId: string;
  #afterSeq = 0;
  /** id → body size of envelopes sent and not yet acknowledged. */
  readonly #inFlight = new Map<string, number>();
  #inFlightBytes = 0;
  #running = false;
  #again = false;
  #stopped = false;
  /**
   * The last read came back short: nothing more is queued until notify() says otherwise, so
   * an ack need not trigger a read. False while flow control (count or bytes) held envelopes back.
   */
  drained = false;

  constructor(
    conn: DeviceConnection,
    connectionId: string,
    private readonly storage: Storage,
    private readonly onError: (err: unknown) => void,
  ) {
    this.conn = conn;
    this.connectionId = connectionId;
  }

  stop(): void {
    this.#stopped = true;
  }

  acked(ids: readonly string[]): void {
    for (const id of ids) {
      const size = this.#inFlight.get(id);
      if (size === undefined) continue;
      this.#inFlight.delete(id);
      this.#inFlightBytes -= size;
    }
  }

  /** Pushes what is queued; coalesces calls that arrive while a run is going. */
  run(): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = true;
    void this.#loop()
      .catch((err) => {
        if (!this.#stopped) this.onError(err);
      })
      .finally(() => {
        this.#running = false;
        // A run() that arrived after the loop's last check must not be lost.
        if (this.#again) this.run();
      });
  }

  async #loop(): Promise<void> {
    do {
      this.#again = false;
      for (;;) {
        if (this.#stopped) return;
        const room = MAX_IN_FLIGHT - this.#inFlight.size;
        if (room <= 0 || this.#inFlightBytes >= MAX_IN_FLIGHT_BYTES) break;
        this.drained = false;
        const limit = Math.min(room, PAGE);
        const page = await this.storage.fetchEnvelopes(this.conn.userId, this.conn.deviceId, {
          afterSeq: this.#afterSeq,
          limit,
        });
        if (this.#stopped) return;
        // The byte bound is checked before each envelope, so it is overshot by at most one
        // body; the rest of a page that hits it is read again when acks make room.
        let batch: ReturnType<typeof wireEnvelope>[] = [];
        let batchChars = 0;
        let sent = 0;
        for (const e of page) {
          if (this.#inFlightBytes >= MAX_IN_FLIGHT_BYTES) break;
          this.#afterSeq = e.seq;
          this.#inFlight.set(e.id, e.body.length);
          this.#inFlightBytes += e.body.length;
          sent++;
          const w = wireEnvelope(e);
          if (!this.conn.batch) {
            this.conn.send({ type: 'envelope', ...w });
            continue;
          }
          if (batch.length === MAX_PUSH_BATCH || batchChars + w.body.length > MAX_PUSH_BATCH_BODY_CHARS) {
            if (batch.length > 0) this.conn.send({ type: 'envelopes', envelopes: batch });
            batch = [];
            batchChars = 0;
          }
          batch.push(w);
          batchChars += w.body.length;
        }
        if (batch.length > 0) this.conn.send({ type: 'envelopes', envelopes: batch });
        // A short page drained the queue for now: anything enqueued later calls run() again.
        if (page.length < limit && sent === page.length) {
          this.drained = true;
          break;
        }
        if (sent < page.length) break;
      }
    } while (this.#again);
  }
}

export class MailboxHub {
  readonly #pumps = new Map<string, Pump>();
  readonly #storage: Storage;
  readonly #metrics: ServerMetrics;
  readonly #log: (msg: string) => void;
  /**
   * Pumps with news (an enqueue for them, or an ack that made room), run together once per
   * event-loop turn: a group commit settles many sends and acks at once, and each device
   * then costs one storage read for all of them instead of one per send frame.
   */
  #due = new Set<Pump>();
  #dueTimer: NodeJS.Immediate | undefined;
  #listener: HubListener | undefined;
  readonly #clock: () => number;

  constructor(
    storage: Storage,
    metrics: ServerMetrics,
    log: (msg: string) => void,
    clock: () => number = Date.now,
  ) {
    this.#storage = storage;
    this.#metrics = metrics;
    this.#log = log;
    this.#clock = clock;
  }

  /** Sets who hears of attaches, detaches and enqueues (one listener). */
  setListener(listener: HubListener | undefined): void {
    this.#listener = listener;
  }

  static key(userId: string, deviceId: number): string {
    return `${userId}/${deviceId}`;
  }

  /**
   * Makes `conn` the device's live connection (closing an older one) and starts delivery.
   * Returns its connection id.
   */
  attach(conn: DeviceConnection): string {
    const key = MailboxHub.key(conn.userId, conn.deviceId);
    const old = this.#pumps.get(key);
    if (old) {
      old.stop();
      old.conn.close(CLOSE_REPLACED, 'another connection of this device took over');
      this.#listener?.detached(old.conn.userId, old.conn.deviceId, old.connectionId);
    } else {
      this.#metrics.devicesOnline.inc();
    }
    let connectionId = newConnectionId(this.#clock());
    // Later attaches of one device sort later, even within one millisecond.
    if (old && connectionId <= old.connectionId) connectionId = newConnectionId(this.#clock() + 1);
    const pump = new Pump(conn, connectionId, this.#storage, (err) => {
      const failed = () => {
        this.#log(`delivery to a device failed: ${err instanceof Error ? err.name : 'error'}`);
        conn.close(1011, 'internal error');
      };
      // A delivery that fails because the device was removed meanwhile (through another
      // node, whose event has not arrived yet) is a removal, not an internal error.
      this.#storage.getDevice(conn.userId, conn.deviceId).then((device) => {
        if (device !== undefined) return failed();
        if (this.#pumps.get(key) === pump) this.detach(conn);
        conn.close(CLOSE_REMOVED, 'the device was removed');
      }, failed);
    });
    this.#pumps.set(key, pump);
    this.#listener?.attached(conn.userId, conn.deviceId, connectionId);
    pump.run();
    return connectionId;
  }

  /** Forgets `conn` if it is still the device's live connection. */
  detach(conn: DeviceConnection): void {
    const key = MailboxHub.key(conn.userId, conn.deviceId);
    const pump = this.#pumps.get(key);
    if (pump?.conn === conn) {
      pump.stop();
      this.#pumps.delete(key);
      this.#metrics.devicesOnline.dec();
      this.#listener?.detached(conn.userId, conn.deviceId, pump.connectionId);
    }
  }

  /**
   * New envelopes were enqueued through this node for the device: push them if it is online
   * here, and tell the listener (the other nodes).
   */
  notify(userId: string, deviceId: number): void {
    this.poke(userId, deviceId);
    this.#listener?.enqueued(userId, deviceId);
  }

  /** New envelopes may be queued for the device (e.g. enqueued on another node): push them if it is online here. */
  poke(userId: string, deviceId: number): void {
    const pump = this.#pumps.get(MailboxHub.key(userId, deviceId));
    if (pump) {
      pump.drained = false;
      this.#schedule(pump);
    }
  }

  /** Runs every pump (after events may have been missed). */
  pokeAll(): void {
    for (const pump of this.#pumps.values()) {
      pump.drained = false;
      this.#schedule(pump);
    }
  }

  /** The live connections. */
  connections(): AttachedConnection[] {
    return [...this.#pumps.values()].map((p) => ({
      userId: p.conn.userId,
      deviceId: p.conn.deviceId,
      connectionId: p.connectionId,
    }));
  }

  /** The device's live connection here, if any. */
  connectionOf(userId: string, deviceId: number): AttachedConnection | undefined {
    const p = this.#pumps.get(MailboxHub.key(userId, deviceId));
    return p ? { userId, deviceId, connectionId: p.connectionId } : undefined;
  }

  /**
   * Another node attached a connection of the device with id `connectionId`: close ours if
   * it is older (ids sort by attach time). Returns true when ours is the newer one and stays.
   */
  replacedElsewhere(userId: string, deviceId: number, connectionId: string): boolean {
    const pump = this.#pumps.get(MailboxHub.key(userId, deviceId));
    if (!pump) return false;
    if (pump.connectionId >= connectionId) return pump.connectionId !== connectionId;
    this.detach(pump.conn);
    pump.conn.close(CLOSE_REPLACED, 'another connection of this device took over');
    return false;
  }

  /**
   * Re-checks the live connections of a user (all users without `userId`) against storage,
   * closing those whose device is gone (CLOSE_REMOVED). For `device-removed` and `resync`.
   */
  async recheck(userId?: string): Promise<number> {
    let closed = 0;
    const pumps = [...this.#pumps.values()].filter((p) => userId === undefined || p.conn.userId === userId);
    for (const pump of pumps) {
      const c = pump.conn;
      const device = await this.#storage.getDevice(c.userId, c.deviceId);
      if (device === undefined && this.#pumps.get(MailboxHub.key(c.userId, c.deviceId)) === pump) {
        this.detach(c);
        c.close(CLOSE_REMOVED, 'the device was removed');
        closed++;
      }
    }
    return closed;
  }

  #schedule(pump: Pump): void {
    this.#due.add(pump);
    this.#dueTimer ??= setImmediate(() => {
      const due = this.#due;
      this.#due = new Set();
      this.#dueTimer = undefined;
      // A stopped pump's run() does nothing.
      for (const p of due) p.run();
    });
  }

  /** The device acknowledged envelopes: delete them, then push more. */
  async ack(conn: DeviceConnection, ids: readonly string[]): Promise<number> {
    const n = await this.#storage.ackEnvelopes(conn.userId, conn.deviceId, ids);
    this.#metrics.messagesDelivered.inc(n);
    const pump = this.#pumps.get(MailboxHub.key(conn.userId, conn.deviceId));
    if (pump?.conn === conn) {
      pump.acked(ids);
      // Only flow control can have held envelopes back; new ones come with notify().
      if (!pump.drained) this.#schedule(pump);
    }
    return n;
  }

  /** Sends a frame to the device if it is online. */
  push(userId: string, deviceId: number, frame: ServerFrameJson): void {
    this.#pumps.get(MailboxHub.key(userId, deviceId))?.conn.send(frame);
  }

  /** Closes the connections of a removed device (or of all the user's devices but `except`). */
  disconnect(userId: string, deviceId?: number, except?: number): void {
    for (const pump of [...this.#pumps.values()]) {
      const c = pump.conn;
      if (c.userId !== userId) continue;
      if (deviceId !== undefined && c.deviceId !== deviceId) continue;
      if (except !== undefined && c.deviceId === except) continue;
      this.detach(c);
      c.close(CLOSE_REMOVED, 'the device was removed');
    }
  }

  /** Closes every connection (shutdown). */
  closeAll(code: number, reason: string): void {
    for (const pump of [...this.#pumps.values()]) {
      this.detach(pump.conn);
      pump.conn.close(code, reason);
    }
  }
}
