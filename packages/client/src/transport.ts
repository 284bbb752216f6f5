/**
 * The client's only way to the server: HTTPS requests and the WebSocket, each over a TLS 1.3
 * connection whose server key has been checked against the profile's pin before a single
 * byte of the request is written.
 *
 * Trust comes from the pin, not from a CA: the server's certificate is self-signed, so the
 * usual chain check is switched off (`rejectUnauthorized: false`) and replaced by comparing
 * the SHA-256 of the certificate's SubjectPublicKeyInfo with the pinned `sha256/<base64>`
 * (the HPKP pin format, RFC 7469 section 2.4). The check runs on `secureConnect`, and only
 * then is the socket handed to `http.request` or `ws` through `createConnection`, so a
 * request never reaches a server whose key is wrong. A changed key is a hard error that
 * names both fingerprints; nothing here retries or re-pins (that takes an explicit command).
 */
import { createHash, X509Certificate } from 'node:crypto';
import { type IncomingMessage, request } from 'node:http';
import { isIP } from 'node:net';
import type { Readable } from 'node:stream';
import { connect, type TLSSocket } from 'node:tls';
import { ErrorResponse, MAX_FRAME_BYTES, WireError, type WireErrorCode, type z } from '@qalqon/wire';
import WebSocket from 'ws';
import { ClientError } from './errors.js';

/** How long to wait for a TCP + TLS handshake, and for a whole HTTP exchange. */
export const CONNECT_TIMEOUT_MS = 10_000;
export const REQUEST_TIMEOUT_MS = 30_000;
/** The largest HTTP response body the client reads (a bundle list of many devices fits easily). */
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

const PIN_RE = /^sha256\/[A-Za-z0-9+/]{43}=$/;

export interface ServerAddress {
  /** The canonical `https://host:port` form. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
}

/** Parses `--server`: `https://HOST:PORT` (or `https://HOST`, port 443), nothing else. */
export function parseServerUrl(value: string): ServerAddress {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new ClientError('INVALID_ARGUMENT', '"server" expected a URL like https://HOST:PORT');
  }
  if (u.protocol !== 'https:') throw new ClientError('INVALID_ARGUMENT', '"server" must be an https:// URL');
  if (u.username || u.password || (u.pathname !== '/' && u.pathname !== '') || u.search || u.hash) {
    throw new ClientError(
      'INVALID_ARGUMENT',
      '"server" expected https://HOST:PORT with nothing after the port',
    );
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = u.port === '' ? 443 : Number(u.port);
  return { url: `https://${u.host}`, host, port };
}

/** Checks a `sha256/<base64 of 32 bytes>` pin. */
export function checkPin(pin: string, label = 'pin'): string {
  if (typeof pin !== 'string' || !PIN_RE.test(pin)) {
    throw new ClientError('INVALID_ARGUMENT', `"${label}" expected sha256/ followed by 44 base64 characters`);
  }
  return pin;
}

/** The pin of a DER certificate: SHA-256 over its SubjectPublicKeyInfo. */
export function spkiPinOfCertificate(der: Uint8Array): string {
  const spki = new X509Certificate(Buffer.from(der)).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256/${createHash('sha256').update(spki).digest('base64')}`;
}

/**
 * Where the pin lives. `pin` undefined means trust on first use: the first key seen is
 * accepted and handed to `onFirstUse`, which must persist it before anything is sent.
 */
export interface PinStore {
  readonly pin: string | undefined;
  onFirstUse(pin: string): void;
}

/** Opens a TLS 1.3 connection and checks the server key against the pin; resolves only if it matches. */
export function connectPinned(server: ServerAddress, pins: PinStore): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: server.host,
      port: server.port,
      // SNI only for names: RFC 6066 section 3 forbids IP literals in server_name.
      ...(isIP(server.host) === 0 ? { servername: server.host } : {}),
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['http/1.1'],
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new ClientError(
          'SERVER_UNREACHABLE',
          `no TLS connection to ${server.url} within ${CONNECT_TIMEOUT_MS} ms`,
        ),
      );
    }, CONNECT_TIMEOUT_MS);
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        new ClientError(
          'SERVER_UNREACHABLE',
          `cannot reach ${server.url} (${typeof err.code === 'string' ? err.code : 'TLS handshake failed'})`,
        ),
      );
    });
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const cert = socket.getPeerCertificate(false);
      let seen: string;
      try {
        if (!cert?.raw) throw new Error('no certificate');
        seen = spkiPinOfCertificate(cert.raw);
      } catch {
        socket.destroy();
        reject(new ClientError('SERVER_UNREACHABLE', `${server.url} presented no usable certificate`));
        return;
      }
      if (pins.pin === undefined) {
        pins.onFirstUse(seen);
      } else if (seen !== pins.pin) {
        socket.destroy();
        reject(
          new ClientError(
            'SERVER_KEY_CHANGED',
            `WARNING: the server at ${server.url} presented the key ${seen}, but this profile pins ${pins.pin}; ` +
              'someone may be impersonating the server, so nothing was sent. If the operator confirms the new key, ' +
              'run "qalqon repin" with it',
          ),
        );
        return;
      }
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

/** Reads an answer's body as text, at most MAX_RESPONSE_BYTES. */
function readBounded(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_RESPONSE_BYTES) {
        res.destroy();
        reject(new ClientError('SERVER_PROTOCOL', `the server's answer exceeds ${MAX_RESPONSE_BYTES} bytes`));
        return;
      }
      chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', () =>
      reject(new ClientError('SERVER_UNREACHABLE', 'the connection broke off during the answer')),
    );
  });
}

function wireErrorFrom(status: number, text: string): WireError {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = ErrorResponse.safeParse(json);
  if (!parsed.success) {
    return new WireError('INTERNAL', `the server answered HTTP ${status} without a readable error`, {
      status,
    });
  }
  const e = parsed.data.error;
  return new WireError(e.code as WireErrorCode, e.message, {
    status,
    ...(e.retryAfterMs === undefined ? {} : { retryAfterMs: e.retryAfterMs }),
  });
}

/** Body pieces an upload hands to the socket before waiting for the first of them to be written. */
export const UPLOAD_WRITES_IN_FLIGHT = 2;

/** HTTPS and WebSocket access to one server through pinned connections. */
export class ServerConnection {
  token: string | undefined;

  constructor(
    readonly server: ServerAddress,
    readonly pins: PinStore,
  ) {}

  /**
   * One request over its own pinned connection. A non-2xx answer becomes a `WireError` with
   * the server's code; a 2xx body that does not match `schema` is SERVER_PROTOCOL.
   */
  async request<S extends z.ZodType>(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    schema: S,
    body?: unknown,
  ): Promise<z.output<S>> {
    const socket = await connectPinned(this.server, this.pins);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers = this.#headers();
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request({
        method,
        path,
        headers,
        createConnection: () => socket,
        timeout: REQUEST_TIMEOUT_MS,
      });
      req.on('timeout', () =>
        req.destroy(new ClientError('SERVER_UNREACHABLE', `${this.server.url} did not answer in time`)),
      );
      req.on('error', (err) => reject(this.#unreachable(err, 'failed')));
      req.on('response', (res: IncomingMessage) => {
        readBounded(res).then((t) => resolve({ status: res.statusCode ?? 0, text: t }), reject);
      });
      req.end(payload);
    });
    return this.#parse(method, path, schema, status, text);
  }

  /** A ClientError as it is; anything else from a request is SERVER_UNREACHABLE. */
  #unreachable(err: unknown, what: 'failed' | 'broke off'): ClientError {
    return err instanceof ClientError
      ? err
      : new ClientError('SERVER_UNREACHABLE', `the connection to ${this.server.url} ${what}`);
  }

  #headers(): Record<string, string> {
    // The URL's authority (IPv6 literals keep their brackets).
    const headers: Record<string, string> = { host: new URL(this.server.url).host, connection: 'close' };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    return headers;
  }

  /**
   * `PUT path` with a streamed raw body of exactly `length` bytes (a file's ciphertext, sent
   * as `body` produces it) and the extra `headers` (Content-Range). The answer is parsed as
   * `request` parses it. At most UPLOAD_WRITES_IN_FLIGHT pieces are handed to the socket
   * and not yet written out, so `body` prepares the next piece while the socket sends;
   * `onWritten(piece)` says when the socket is done with a piece (the producer may then
   * reuse its memory). An error raised by `body` itself (a ClientError) ends the request
   * and is what this rejects with; a broken connection is SERVER_UNREACHABLE, after which
   * the caller may ask the server how much arrived.
   */
  async upload<S extends z.ZodType>(
    path: string,
    schema: S,
    length: number,
    headers: Record<string, string>,
    body: AsyncIterable<Uint8Array>,
    onWritten?: (piece: Uint8Array) => void,
  ): Promise<z.output<S>> {
    const socket = await connectPinned(this.server, this.pins);
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      let settled = false;
      /** Set once the request ends one way or another: the body stops being read. */
      let stopped = false;
      /** Wakes the body loop waiting for a write to finish (or for the request to stop). */
      let wake: (() => void) | undefined;
      const stop = () => {
        stopped = true;
        wake?.();
      };
      const fail = (err: unknown) => {
        stop();
        if (settled) return;
        settled = true;
        req.destroy();
        reject(this.#unreachable(err, 'broke off'));
      };
      const req = request({
        method: 'PUT',
        path,
        headers: {
          ...this.#headers(),
          ...headers,
          'content-type': 'application/octet-stream',
          'content-length': String(length),
        },
        createConnection: () => socket,
        timeout: REQUEST_TIMEOUT_MS,
      });
      req.on('timeout', () =>
        fail(new ClientError('SERVER_UNREACHABLE', `${this.server.url} stopped taking the upload`)),
      );
      req.on('error', fail);
      req.on('close', stop);
      req.on('response', (res: IncomingMessage) => {
        // The server may answer before it has read everything (a refusal): stop sending.
        stop();
        readBounded(res).then((t) => {
          if (settled) return;
          settled = true;
          resolve({ status: res.statusCode ?? 0, text: t });
        }, fail);
      });
      const send = async () => {
        let inFlight = 0;
        for await (const piece of body) {
          if (stopped) break;
          inFlight++;
          req.write(piece, (err) => {
            inFlight--;
            if (!err) onWritten?.(piece);
            wake?.();
          });
          while (inFlight >= UPLOAD_WRITES_IN_FLIGHT && !stopped) {
            await new Promise<void>((r) => {
              wake = r;
            });
            wake = undefined;
          }
          if (stopped) break;
        }
        if (!stopped) req.end();
      };
      // Leaving the loop early (a refusal, a broken connection) closes the body's generator.
      send().catch(fail);
    });
    return this.#parse('PUT', path, schema, status, text);
  }

  /**
   * `GET path` whose answer is streamed: optionally `Range: bytes=start-end` (inclusive).
   * A non-2xx answer becomes the server's WireError; otherwise the caller reads `body` and
   * must call `close` when it stops early. A body that breaks off errors while being read.
   */
  async download(
    path: string,
    range?: { start: number; end: number },
  ): Promise<{
    status: number;
    contentLength: number | undefined;
    contentRange: string | undefined;
    body: Readable;
    close: () => void;
  }> {
    const socket = await connectPinned(this.server, this.pins);
    const headers = this.#headers();
    if (range !== undefined) headers.range = `bytes=${range.start}-${range.end}`;
    return new Promise((resolve, reject) => {
      const req = request({
        method: 'GET',
        path,
        headers,
        createConnection: () => socket,
        timeout: REQUEST_TIMEOUT_MS,
      });
      req.on('timeout', () =>
        req.destroy(new ClientError('SERVER_UNREACHABLE', `${this.server.url} stopped sending`)),
      );
      req.on('error', (err) => reject(this.#unreachable(err, 'failed')));
      req.on('response', (res: IncomingMessage) => {
        const status = res.statusCode ?? 0;
        if (status < 200 || status >= 300) {
          readBounded(res).then((t) => reject(wireErrorFrom(status, t)), reject);
          return;
        }
        const len = res.headers['content-length'];
        resolve({
          status,
          contentLength: len !== undefined && /^[0-9]{1,16}$/.test(len) ? Number(len) : undefined,
          contentRange: res.headers['content-range'],
          body: res,
          close: () => req.destroy(),
        });
      });
      req.end();
    });
  }

  #parse<S extends z.ZodType>(method: string, path: string, schema: S, status: number, text: string) {
    if (status < 200 || status >= 300) throw wireErrorFrom(status, text);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new ClientError('SERVER_PROTOCOL', `the server's answer to ${method} ${path} is not JSON`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      throw new ClientError(
        'SERVER_PROTOCOL',
        `the server's answer to ${method} ${path} is off the wire contract`,
      );
    }
    return parsed.data as z.output<S>;
  }

  /** Opens `/v1/ws` over a pinned connection; resolves once the socket is open (not yet authenticated). */
  async openSocket(): Promise<WebSocket> {
    const socket = await connectPinned(this.server, this.pins);
    const ws = new WebSocket(`wss://${new URL(this.server.url).host}/v1/ws`, {
      createConnection: () => socket,
      maxPayload: MAX_FRAME_BYTES,
      perMessageDeflate: false,
    });
    return new Promise((resolve, reject) => {
      ws.once('open', () => {
        ws.removeAllListeners('error');
        resolve(ws);
      });
      ws.once('error', () =>
        reject(new ClientError('SERVER_UNREACHABLE', `the WebSocket to ${this.server.url} failed`)),
      );
    });
  }
}
