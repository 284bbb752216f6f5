/**
 * One node among several: what this node tells the others through the event bus
 * (pubsub/), and what it does with what they tell it. Storage (PostgreSQL) stays the only
 * source of truth; every event is a hint to re-read it (see pubsub/bus.ts).
 *
 * Told to the others:
 * - `mail` (user, device) after every durable enqueue through this node (the hub reports
 *   them; coalesced per event-loop turn, so a group commit of many sends to one device
 *   costs one event);
 * - `device-removed` after a device or user removal or an enrolment (SessionManager.revoke);
 * - `authz-changed` after any role, grant, org or channel-membership change (the Authorizer's
 *   invalidations), `channel-changed` after a channel's log grew;
 * - `device-connected` / `device-disconnected` when a connection is attached or ends, and a
 *   `presence` heartbeat of this node's connections every `presenceIntervalMs`;
 * - `challenge-used` when a sign-in challenge was redeemed here.
 *
 * Done on what the others tell:
 * - `mail`: run the device's pump if it is connected here;
 * - `device-removed`: drop the cached "device exists" answers (its sessions end) and close
 *   the user's connections whose device storage no longer holds;
 * - `authz-changed`: drop the grant cache entries; `channel-changed`: drop cached replays;
 * - `device-connected`: close this node's connection of that device if it is older (ids sort
 *   by attach time), or announce ours again if ours is newer: one live connection per device;
 * - `resync` (after this node's bus reconnected, or asked by another): drop every cache,
 *   re-check every connection against storage, run every pump, send a heartbeat now.
 * While the bus is not connected (NATS restarting), every pump also runs every
 * `degradedPollMs`, so mail enqueued on other nodes still arrives, late but surely.
 *
 * Presence: a device is connected if this node holds its connection, or another node
 * announced it (`device-connected`, or listed it in a heartbeat) and has not said it ended;
 * entries of a node expire PRESENCE_EXPIRY_BEATS heartbeat intervals after they were last
 * seen, so a node that dies stops counting within that time.
 *
 * With a lone local bus (one node, the default) nothing is published at all.
 */
import { Gauge, type Registry } from 'prom-client';
import type { BusEvent, EventBus } from '../pubsub/bus.js';
import { MAX_PRESENCE_ENTRIES } from '../pubsub/bus.js';
import type { Authorizer } from './authz.js';
import type { HubListener, MailboxHub } from './hub.js';
import type { SessionManager } from './sessions.js';

export const DEFAULT_PRESENCE_INTERVAL_MS = 5000;
/** Heartbeats a node may miss before its presence entries are dropped. */
export const PRESENCE_EXPIRY_BEATS = 3;
export const DEFAULT_DEGRADED_POLL_MS = 2000;

interface RemoteEntry {
  readonly connectionId: string;
  seen: number;
}

interface RemoteNode {
  every: number;
  /** `user/device` → the connection there. */
  readonly entries: Map<string, RemoteEntry>;
}

export interface ClusterOptions {
  readonly bus: EventBus;
  /** A lone local bus: nothing to tell anyone, so nothing is published. */
  readonly solo: boolean;
  readonly hub: MailboxHub;
  readonly sessions: SessionManager;
  readonly authz: Authorizer;
  readonly log: (line: string) => void;
  readonly clock?: () => number;
  readonly registry?: Registry;
  readonly presenceIntervalMs?: number;
  readonly degradedPollMs?: number;
}

export class Cluster implements HubListener {
  readonly bus: EventBus;
  readonly solo: boolean;
  readonly #hub: MailboxHub;
  readonly #sessions: SessionManager;
  readonly #authz: Authorizer;
  readonly #log: (line: string) => void;
  readonly #clock: () => number;
  readonly #every: number;
  readonly #remote = new Map<string, RemoteNode>();
  readonly #channelListeners = new Set<(channelId: string, seq: number) => void>();
  readonly #resyncListeners = new Set<() => void>();
  #mailDue = new Set<string>();
  #mailTimer: NodeJS.Immediate | undefined;
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #unsubscribe: (() => void) | undefined;
  #closed = false;

  constructor(options: ClusterOptions) {
    this.bus = options.bus;
    this.solo = options.solo;
    this.#hub = options.hub;
    this.#sessions = options.sessions;
    this.#authz = options.authz;
    this.#log = options.log;
    this.#clock = options.clock ?? Date.now;
    this.#every = options.presenceIntervalMs ?? DEFAULT_PRESENCE_INTERVAL_MS;
    this.#hub.setListener(this);
    if (this.solo) return;
    this.#unsubscribe = this.bus.subscribe((event, from) => this.#handle(event, from));
    const beat = setInterval(() => this.#heartbeat(), this.#every);
    beat.unref();
    const poll = setInterval(() => {
      if (this.bus.status !== 'connected') this.#hub.pokeAll();
    }, options.degradedPollMs ?? DEFAULT_DEGRADED_POLL_MS);
    poll.unref();
    this.#timers.push(beat, poll);
    if (options.registry) this.#metrics(options.registry);
  }

  /** Publishes, unless alone or closed; a refused event is logged (events are hints). */
  #publish(event: BusEvent): void {
    if (this.solo || this.#closed) return;
    try {
      this.bus.publish(event);
    } catch (err) {
      this.#log(
        `event bus: publishing a ${event.type} event failed: ${err instanceof Error ? err.name : 'error'}`,
      );
    }
  }

  // --- what the hub and the caches report -------------------------------------------------

  attached(userId: string, deviceId: number, connectionId: string): void {
    this.#publish({ type: 'device-connected', userId, deviceId, connectionId });
  }

  detached(userId: string, deviceId: number, connectionId: string): void {
    this.#publish({ type: 'device-disconnected', userId, deviceId, connectionId });
  }

  enqueued(userId: string, deviceId: number): void {
    if (this.solo) return;
    this.#mailDue.add(`${userId}/${deviceId}`);
    this.#mailTimer ??= setImmediate(() => {
      const due = this.#mailDue;
      this.#mailDue = new Set();
      this.#mailTimer = undefined;
      for (const key of due) {
        const [userId, device] = key.split('/') as [string, string];
        this.#publish({ type: 'mail', userId, deviceId: Number(device) });
      }
    });
  }

  /** A device (or, without deviceId, some of the user's devices) was removed here. */
  deviceRemoved(userId: string, deviceId: number | undefined): void {
    this.#publish({ type: 'device-removed', userId, ...(deviceId === undefined ? {} : { deviceId }) });
  }

  /** Roles, grants, units or memberships changed here (without userId: possibly anyone's). */
  authzChanged(userId: string | undefined): void {
    this.#publish({ type: 'authz-changed', ...(userId === undefined ? {} : { userId }) });
  }

  /** The channel's log grew to `seq` here. */
  channelChanged(channelId: string, seq: number): void {
    this.#publish({ type: 'channel-changed', channelId, seq });
  }

  challengeUsed(challengeHex: string): void {
    this.#publish({ type: 'challenge-used', challenge: challengeHex });
  }

  /** Called when another node's channel changed (drop cached replays older than `seq`). */
  onChannelChanged(listener: (channelId: string, seq: number) => void): () => void {
    this.#channelListeners.add(listener);
    return () => this.#channelListeners.delete(listener);
  }

  /** Called on `resync` (drop every cache). */
  onResync(listener: () => void): () => void {
    this.#resyncListeners.add(listener);
    return () => this.#resyncListeners.delete(listener);
  }

  // --- what the others tell ---------------------------------------------------------------

  #handle(event: BusEvent, from: string): void {
    switch (event.type) {
      case 'mail':
        this.#hub.poke(event.userId, event.deviceId);
        return;
      case 'device-removed':
        this.#sessions.forget(event.userId, event.deviceId);
        this.#recheck(event.userId);
        return;
      case 'authz-changed':
        this.#authz.dropCached(event.userId);
        return;
      case 'channel-changed':
        for (const l of [...this.#channelListeners]) l(event.channelId, event.seq);
        return;
      case 'resync':
        this.#resync();
        return;
      case 'device-connected': {
        this.#node(from).entries.set(`${event.userId}/${event.deviceId}`, {
          connectionId: event.connectionId,
          seen: this.#clock(),
        });
        if (this.#hub.replacedElsewhere(event.userId, event.deviceId, event.connectionId)) {
          // Ours is newer: say so, and the other node closes its connection.
          const mine = this.#hub.connectionOf(event.userId, event.deviceId);
          if (mine) this.attached(mine.userId, mine.deviceId, mine.connectionId);
        }
        return;
      }
      case 'device-disconnected': {
        const node = this.#remote.get(from);
        const key = `${event.userId}/${event.deviceId}`;
        if (node?.entries.get(key)?.connectionId === event.connectionId) node.entries.delete(key);
        return;
      }
      case 'presence': {
        const node = this.#node(from);
        node.every = event.every;
        const now = this.#clock();
        for (const entry of event.devices) {
          const [userId, device, connectionId] = entry.split('/') as [string, string, string];
          const deviceId = Number(device);
          node.entries.set(`${userId}/${deviceId}`, { connectionId, seen: now });
          // Two live connections of one device (events were lost): the older one goes.
          this.#hub.replacedElsewhere(userId, deviceId, connectionId);
        }
        return;
      }
      case 'challenge-used':
        this.#sessions.challengeUsed(event.challenge);
        return;
    }
  }

  #node(id: string): RemoteNode {
    let node = this.#remote.get(id);
    if (!node) {
      node = { every: this.#every, entries: new Map() };
      this.#remote.set(id, node);
    }
    return node;
  }

  #recheck(userId?: string): void {
    this.#hub.recheck(userId).catch((err: unknown) => {
      this.#log(`re-checking connections failed: ${err instanceof Error ? err.name : 'error'}`);
    });
  }

  #resync(): void {
    this.#authz.dropCached(undefined);
    this.#sessions.forget();
    for (const l of [...this.#resyncListeners]) l();
    this.#recheck();
    this.#hub.pokeAll();
    this.#heartbeat();
  }

  #heartbeat(): void {
    this.#expire();
    const conns = this.#hub.connections();
    for (let i = 0; i < conns.length; i += MAX_PRESENCE_ENTRIES) {
      this.#publish({
        type: 'presence',
        every: this.#every,
        devices: conns
          .slice(i, i + MAX_PRESENCE_ENTRIES)
          .map((c) => `${c.userId}/${c.deviceId}/${c.connectionId}`),
      });
    }
  }

  #expire(): void {
    const now = this.#clock();
    for (const [id, node] of this.#remote) {
      const limit = now - PRESENCE_EXPIRY_BEATS * node.every;
      for (const [k, e] of node.entries) if (e.seen < limit) node.entries.delete(k);
      if (node.entries.size === 0) this.#remote.delete(id);
    }
  }

  /** The user's devices connected to any node (this one included). */
  presenceOf(userId: string): Set<number> {
    this.#expire();
    const out = new Set<number>();
    for (const c of this.#hub.connections()) if (c.userId === userId) out.add(c.deviceId);
    for (const node of this.#remote.values()) {
      for (const k of node.entries.keys()) {
        const [u, d] = k.split('/') as [string, string];
        if (u === userId) out.add(Number(d));
      }
    }
    return out;
  }

  /** Devices other nodes report connected (for /metrics). */
  get remoteConnections(): number {
    let n = 0;
    for (const node of this.#remote.values()) n += node.entries.size;
    return n;
  }

  #metrics(registry: Registry): void {
    const bus = this.bus;
    new Gauge({
      name: 'qalqon_pubsub_connected',
      help: 'Whether the cross-node event bus is connected (1) or not (0)',
      registers: [registry],
      collect() {
        this.set(bus.status === 'connected' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'qalqon_pubsub_events',
      help: 'Event bus counters since start (published, deferred, publishFailed, delivered, echoes, oversized, malformed, handlerErrors, resyncs)',
      labelNames: ['counter'],
      registers: [registry],
      collect() {
        for (const [k, v] of Object.entries(bus.counters())) this.set({ counter: k }, v);
      },
    });
    const self = this;
    new Gauge({
      name: 'qalqon_presence_remote_devices',
      help: 'Device connections other nodes report',
      registers: [registry],
      collect() {
        self.#expire();
        this.set(self.remoteConnections);
      },
    });
  }

  /** Stops the timers and the subscription (the bus itself is closed by its owner). */
  close(): void {
    if (this.#closed) return;
    // Mail not yet announced is announced now (the bus flushes it when it closes).
    if (this.#mailTimer) {
      clearImmediate(this.#mailTimer);
      this.#mailTimer = undefined;
      for (const key of this.#mailDue) {
        const [userId, device] = key.split('/') as [string, string];
        this.#publish({ type: 'mail', userId, deviceId: Number(device) });
      }
      this.#mailDue.clear();
    }
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    this.#unsubscribe?.();
    this.#hub.setListener(undefined);
  }
}
