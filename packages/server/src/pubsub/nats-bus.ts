/**
 * The event bus over NATS core pub/sub (no JetStream: events are hints, storage holds the
 * data, so at-most-once is right and the NATS server keeps no state for us).
 *
 * Subjects: one per event type, `<prefix>.<type>` (`qalqon.mail`, `qalqon.device-removed`,
 * ...). Every node holds exactly ONE subscription, `<prefix>.*`, however many devices it
 * serves; the type in the subject must match the one in the message. The prefix keeps two
 * deployments (or two test runs) on one NATS server apart.
 *
 * Connection: connectNatsBus() returns at once and connects in the background, retrying
 * forever with backoff (100 ms growing to `maxReconnectDelayMs`, with jitter); nats.js then
 * reconnects forever after a loss. `status` says `connecting`, `connected` or
 * `reconnecting` (for /healthz). While not connected, publish() never throws.
 *
 * nats.js discards whatever was written while a connection was down (each dial resets its
 * outbound buffer), and a dead link is only noticed after missed pings (up to
 * pingInterval × (maxPingOut + 1)). So the bus itself keeps what it published recently
 * (coalescing repeats, at most MAX_REPLAY_EVENTS) and, after each (re)connection, publishes
 * again everything from `replayWindowMs` before the link went down onwards. Repeats are
 * harmless (handlers are idempotent). If that record overflowed, it publishes one `resync`
 * instead. And since other nodes' events may have been lost meanwhile, after each
 * (re)connection it gives its own handlers a `resync`.
 *
 * The URL may carry credentials (`nats://user:password@host:4222`, or a token as
 * `nats://token@host`); they go to NATS as user/pass/token options and are never logged:
 * logs and `url` show scheme, host and port only. `tls://` requires TLS with certificate
 * verification (the system CAs, NODE_EXTRA_CA_CERTS, or the `ca` option).
 */
import { connect, Events, type NatsConnection, type Status, type Subscription } from 'nats';
import { ServerError } from '../errors.js';
import { BusCore, type BusCoreOptions, type BusEvent, type EventBus, encodeBusMessage } from './bus.js';

export const DEFAULT_SUBJECT_PREFIX = 'qalqon';
/** Dot-separated tokens of letters, digits, `_` and `-` (no wildcards, no empty tokens). */
const SUBJECT_PREFIX_PATTERN = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const MAX_SUBJECT_PREFIX_LEN = 64;
/** At most this many distinct recent events are kept for replay after a reconnection. */
export const MAX_REPLAY_EVENTS = 10_000;
export const DEFAULT_REPLAY_WINDOW_MS = 60_000;
export const DEFAULT_PING_INTERVAL_MS = 10_000;
const MAX_PING_OUT = 2;
const MIN_RECONNECT_DELAY_MS = 100;
export const DEFAULT_MAX_RECONNECT_DELAY_MS = 5_000;
const CONNECT_TIMEOUT_MS = 5_000;
const DRAIN_TIMEOUT_MS = 5_000;

export interface ParsedNatsUrl {
  readonly tls: boolean;
  /** host:port for nats.js (IPv6 in brackets). */
  readonly server: string;
  /** scheme://host:port: safe to log. */
  readonly redacted: string;
  readonly user?: string;
  readonly pass?: string;
  readonly token?: string;
}

/**
 * Parses a `nats://` or `tls://` URL. Errors (INVALID_ARGUMENT) never quote the URL: it may
 * carry a password.
 */
export function parseNatsUrl(label: string, url: unknown): ParsedNatsUrl {
  if (typeof url !== 'string' || url.length === 0 || url.length > 4096) {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected a nats:// or tls:// URL`);
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" is not a URL`);
  }
  if (u.protocol !== 'nats:' && u.protocol !== 'tls:') {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected a nats:// or tls:// URL`);
  }
  if (u.hostname === '') throw new ServerError('INVALID_ARGUMENT', `"${label}" names no host`);
  if ((u.pathname !== '' && u.pathname !== '/') || u.search !== '' || u.hash !== '') {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected no path, query or fragment`);
  }
  const port = u.port === '' ? 4222 : Number(u.port);
  const server = `${u.hostname}:${port}`;
  const redacted = `${u.protocol}//${server}`;
  let creds: { user?: string; pass?: string; token?: string } = {};
  try {
    const user = decodeURIComponent(u.username);
    const pass = decodeURIComponent(u.password);
    if (pass !== '') creds = { user, pass };
    else if (user !== '') creds = { token: user };
  } catch {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" has badly escaped credentials`);
  }
  return { tls: u.protocol === 'tls:', server, redacted, ...creds };
}

/** True when the URL carries a user name, password or token. */
export function natsUrlHasCredentials(parsed: ParsedNatsUrl): boolean {
  return parsed.user !== undefined || parsed.pass !== undefined || parsed.token !== undefined;
}

export function checkSubjectPrefix(label: string, prefix: unknown): string {
  if (
    typeof prefix !== 'string' ||
    prefix.length === 0 ||
    prefix.length > MAX_SUBJECT_PREFIX_LEN ||
    !SUBJECT_PREFIX_PATTERN.test(prefix)
  ) {
    throw new ServerError(
      'INVALID_ARGUMENT',
      `"${label}" expected 1..${MAX_SUBJECT_PREFIX_LEN} characters of dot-separated [A-Za-z0-9_-] tokens`,
    );
  }
  return prefix;
}

export interface NatsBusOptions extends BusCoreOptions {
  /** nats:// or tls:// URL, possibly with credentials. */
  readonly url: string;
  /** The connection's name as the NATS server shows it (e.g. `qalqon-<hostname>`). */
  readonly name: string;
  readonly subjectPrefix?: string;
  /** PEM of the CA that signed the NATS server's certificate (tls:// only; default: system CAs). */
  readonly ca?: string;
  readonly maxReconnectDelayMs?: number;
  readonly pingIntervalMs?: number;
  readonly replayWindowMs?: number;
}

interface Recent {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly at: number;
}

export class NatsBus extends BusCore implements EventBus {
  readonly kind = 'nats' as const;
  /** The server as scheme://host:port, without credentials. */
  readonly url: string;
  readonly subjectPrefix: string;
  readonly #target: ParsedNatsUrl;
  readonly #options: NatsBusOptions;
  readonly #maxDelay: number;
  readonly #pingInterval: number;
  readonly #replayWindow: number;
  #status: 'connecting' | 'connected' | 'reconnecting' | 'closed' = 'connecting';
  #nc: NatsConnection | undefined;
  #sub: Subscription | undefined;
  /** When the bus last stopped being connected (creation, for the first connection). */
  #downSince = Date.now();
  /** Recent published messages, oldest first, keyed by subject and bytes (repeats coalesce). */
  readonly #recent = new Map<string, Recent>();
  /** The newest `at` of a recent message dropped for room (not age). */
  #overflowAt = Number.NEGATIVE_INFINITY;
  #lastError = '';
  #wake: (() => void) | undefined;
  #wakeTimer: NodeJS.Timeout | undefined;
  #runLoop: Promise<void>;
  /** The status iterators of our connections: nats.js never ends them by itself. */
  readonly #watchers: { readonly stop: () => void; readonly done: Promise<void> }[] = [];
  #closing: Promise<void> | undefined;
  readonly #statusListeners = new Set<(status: NatsBus['status']) => void>();

  /** Use connectNatsBus(). */
  constructor(options: NatsBusOptions) {
    super(options);
    this.#target = parseNatsUrl('url', options.url);
    this.url = this.#target.redacted;
    this.subjectPrefix = checkSubjectPrefix('subjectPrefix', options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX);
    if (typeof options.name !== 'string' || options.name.length === 0 || options.name.length > 128) {
      throw new ServerError('INVALID_ARGUMENT', '"name" expected string of length 1..128');
    }
    if (options.ca !== undefined && (typeof options.ca !== 'string' || !this.#target.tls)) {
      throw new ServerError('INVALID_ARGUMENT', '"ca" expected a PEM string, with a tls:// URL');
    }
    this.#maxDelay = positive(
      'maxReconnectDelayMs',
      options.maxReconnectDelayMs,
      DEFAULT_MAX_RECONNECT_DELAY_MS,
    );
    this.#pingInterval = positive('pingIntervalMs', options.pingIntervalMs, DEFAULT_PING_INTERVAL_MS);
    this.#replayWindow = positive('replayWindowMs', options.replayWindowMs, DEFAULT_REPLAY_WINDOW_MS);
    this.#options = options;
    this.#runLoop = this.#run();
  }

  get status(): 'connecting' | 'connected' | 'reconnecting' | 'closed' {
    return this.#status;
  }

  /** Why the last connection attempt failed (a NATS error code or name; never the URL). */
  get lastError(): string {
    return this.#lastError;
  }

  /** Calls `listener` on each status change; returns its removal. */
  onStatus(listener: (status: NatsBus['status']) => void): () => void {
    this.#statusListeners.add(listener);
    return () => {
      this.#statusListeners.delete(listener);
    };
  }

  /** Resolves true once connected, or false after `timeoutMs` (or on close). */
  ready(timeoutMs: number): Promise<boolean> {
    if (this.#status === 'connected') return Promise.resolve(true);
    if (this.#status === 'closed') return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        off();
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      const off = this.onStatus((s) => {
        if (s === 'connected') done(true);
        else if (s === 'closed') done(false);
      });
    });
  }

  publish(event: BusEvent): void {
    this.assertOpen('publish');
    const data = encodeBusMessage(this.nodeId, event);
    const subject = `${this.subjectPrefix}.${event.type}`;
    this.count.published++;
    if (event.type === 'presence') {
      // A heartbeat is sent again every few seconds anyway: never kept for a replay.
      if (this.#status === 'connected' && this.#nc !== undefined) this.#send(this.#nc, subject, data);
      else this.count.publishFailed++;
      return;
    }
    this.#remember(subject, data);
    if (this.#status !== 'connected' || this.#nc === undefined) {
      // Held in #recent; sent when the connection is back.
      this.count.deferred++;
      return;
    }
    this.#send(this.#nc, subject, data);
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const wasConnected = this.#status === 'connected';
    this.markClosed();
    this.#setStatus('closed');
    clearTimeout(this.#wakeTimer);
    this.#wake?.();
    await this.#runLoop;
    const nc = this.#nc;
    if (nc !== undefined && !nc.isClosed()) {
      if (wasConnected) {
        // Drain: flush what was published, then close. (What still arrives is dropped: the
        // node is going away, and storage keeps everything an event would have pointed to.)
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, DRAIN_TIMEOUT_MS);
        });
        await Promise.race([nc.drain().catch(() => {}), timeout]);
        clearTimeout(timer);
      }
      if (!nc.isClosed()) await nc.close().catch(() => {});
    }
    for (const w of this.#watchers) w.stop();
    await Promise.all(this.#watchers.map((w) => w.done));
    this.#recent.clear();
  }

  #setStatus(status: NatsBus['status']): void {
    if (this.#status === status) return;
    // Nothing leaves `closed`.
    if (this.#status === 'closed') return;
    this.#status = status;
    for (const l of [...this.#statusListeners]) {
      try {
        l(status);
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  #remember(subject: string, data: Uint8Array): void {
    const key = `${subject}\u0000${Buffer.from(data).toString('latin1')}`;
    const now = Date.now();
    this.#recent.delete(key);
    this.#recent.set(key, { subject, data, at: now });
    // While connected, what is older than the window is safe; while down, everything from
    // the window before the loss is needed.
    const cutoff = (this.#status === 'connected' ? now : this.#downSince) - this.#replayWindow;
    for (const [k, r] of this.#recent) {
      if (r.at >= cutoff && this.#recent.size <= MAX_REPLAY_EVENTS) break;
      this.#recent.delete(k);
      if (r.at >= cutoff) this.#overflowAt = Math.max(this.#overflowAt, r.at);
    }
  }

  #send(nc: NatsConnection, subject: string, data: Uint8Array): void {
    try {
      nc.publish(subject, data);
    } catch {
      this.count.publishFailed++;
    }
  }

  /**
   * (Re)connected: once the server has our subscription (a flush round trip; nats.js sends
   * it only after the handshake), replay what may have been lost and tell our own handlers
   * to resync. Until then the bus is not `connected` and publish() keeps events for the replay.
   */
  async #connected(nc: NatsConnection): Promise<void> {
    try {
      await nc.flush();
    } catch {
      // Lost again before the round trip: the next Reconnect comes back here.
      return;
    }
    if (this.closed || this.#nc !== nc || this.#status === 'connected') return;
    const cutoff = this.#downSince - this.#replayWindow;
    this.#setStatus('connected');
    if (this.#overflowAt >= cutoff) {
      this.log('event bus: too many events published while disconnected; asking every node to resync');
      this.#send(nc, `${this.subjectPrefix}.resync`, encodeBusMessage(this.nodeId, { type: 'resync' }));
    } else {
      for (const r of this.#recent.values()) if (r.at >= cutoff) this.#send(nc, r.subject, r.data);
    }
    this.#overflowAt = Number.NEGATIVE_INFINITY;
    this.resyncLocal();
  }

  #disconnected(): void {
    if (this.#status !== 'connected') return;
    this.#downSince = Date.now();
    this.#setStatus('reconnecting');
    this.log(`event bus: lost the connection to ${this.url}; reconnecting`);
  }

  #delay(): number {
    const down = Date.now() - this.#downSince;
    const base = Math.min(this.#maxDelay, Math.max(MIN_RECONNECT_DELAY_MS, down / 4));
    return Math.round(base * (0.8 + 0.4 * Math.random()));
  }

  /** Until the first connection: nats.js gives up after one failed dial, so retry here. */
  async #run(): Promise<void> {
    let reported = false;
    while (!this.closed) {
      try {
        const nc = await connect({
          servers: [this.#target.server],
          name: this.#options.name,
          user: this.#target.user,
          pass: this.#target.pass,
          token: this.#target.token,
          tls: this.#target.tls
            ? this.#options.ca === undefined
              ? {}
              : { ca: this.#options.ca }
            : undefined,
          noEcho: true,
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectDelayHandler: () => this.#delay(),
          ignoreAuthErrorAbort: true,
          pingInterval: this.#pingInterval,
          maxPingOut: MAX_PING_OUT,
          timeout: CONNECT_TIMEOUT_MS,
          noAsyncTraces: true,
        });
        if (this.closed) {
          await nc.close().catch(() => {});
          return;
        }
        await this.#attach(nc);
        return;
      } catch (err) {
        this.#lastError = natsErrorName(err);
        if (!reported) {
          reported = true;
          this.log(`event bus: cannot connect to ${this.url} (${this.#lastError}); retrying`);
        }
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        this.#wakeTimer = setTimeout(resolve, this.#delay());
      });
      this.#wake = undefined;
    }
  }

  async #attach(nc: NatsConnection): Promise<void> {
    this.#nc = nc;
    this.#sub = nc.subscribe(`${this.subjectPrefix}.*`, {
      callback: (err, msg) => {
        if (err) return;
        const type = msg.subject.slice(this.subjectPrefix.length + 1);
        this.receive(msg.data, type);
      },
    });
    const statuses = nc.status();
    const stop = () => (statuses as { stop?: () => void }).stop?.();
    this.#watchers.push({ stop, done: this.#watch(nc, statuses) });
    nc.closed().then(
      () => this.#lost(nc),
      () => this.#lost(nc),
    );
    this.log(`event bus: connected to ${this.url}`);
    await this.#connected(nc);
  }

  async #watch(nc: NatsConnection, statuses: AsyncIterable<Status>): Promise<void> {
    try {
      for await (const s of statuses) {
        if (this.closed) break;
        if (s.type === Events.Disconnect) this.#disconnected();
        else if (s.type === Events.Reconnect) {
          this.log(`event bus: reconnected to ${this.url}`);
          void this.#connected(nc);
        } else if (s.type === Events.Error) {
          this.#lastError = natsErrorName(s.data);
          this.log(`event bus: NATS reported an error: ${this.#lastError}`);
        }
      }
    } catch {
      // The iterator stopped with an error: the connection is gone, and #lost() starts over.
    }
  }

  /** nats.js closed the connection by itself (it should not, reconnecting forever): start over. */
  #lost(nc: NatsConnection): void {
    if (this.closed || this.#nc !== nc) return;
    this.#disconnected();
    this.#nc = undefined;
    this.#sub = undefined;
    this.#runLoop = this.#run();
  }

  /** The live subscription count this bus holds (always 0 or 1), for tests. */
  get subscriptions(): number {
    return this.#sub !== undefined && !this.#sub.isClosed() ? 1 : 0;
  }
}

function positive(label: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected a positive integer`);
  }
  return value;
}

/** A NATS error's code or name (never an Error's message, which could in principle quote a URL). */
function natsErrorName(err: unknown): string {
  // Server errors (e.g. a permissions violation) arrive as text the server wrote; keep it short and plain.
  if (typeof err === 'string') return err.replace(/[^\w "'.:/-]/g, '').slice(0, 120) || 'error';
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && /^[A-Za-z0-9_ .-]{1,64}$/.test(code)) return code;
  return err instanceof Error ? err.name : 'error';
}

/**
 * Starts a NATS event bus. Returns at once; the bus connects in the background (see
 * `status`, `ready()`). Invalid options throw INVALID_ARGUMENT.
 */
export function connectNatsBus(options: NatsBusOptions): NatsBus {
  return new NatsBus(options);
}
