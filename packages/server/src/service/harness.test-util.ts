/**
 * Test harness for the service: a real server on 127.0.0.1 port 0 over real TLS, on a
 * real SQLCipher file in a temporary directory, and a small client that builds real keys
 * (X25519, XEdDSA signatures, Kyber1024) the way a device does. Nothing is mocked.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kyber1024GenerateKeyPair, x25519GenerateKeyPair, xeddsaSign } from '@qalqon/crypto';
import {
  type AdminRequestJson,
  authChallengeMessage,
  ChallengeResponse,
  DEFAULT_ROLE,
  EnrolResponse,
  ErrorResponse,
  encodeBase64,
  type NewDeviceJson,
  ServerFrame,
  type ServerFrameJson,
  SessionResponse,
} from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import type { FileServiceLimits } from '../files/file-store.js';
import { DEK_FILE } from '../kms/dek-registry.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { openEmbeddedStorage } from '../storage/embedded.js';
import type { Storage, StorageLimits } from '../storage/types.js';
import { startAdminSocket } from './admin.js';
import { createService, type Service } from './app.js';
import { issueEnrolmentCode } from './data-dir.js';
import { generateSelfSignedIdentity, type TlsIdentity } from './tls.js';

export interface Endpoint {
  readonly port: number;
  /** PEM of the server's certificate: the trust anchor for the client. */
  readonly cert: string;
}

export interface Harness extends Endpoint {
  readonly service: Service;
  readonly storage: Storage;
  readonly dir: string;
  readonly tls: TlsIdentity;
  readonly logs: string[];
  /** The KMS the storage's data keys and the files' keys are wrapped by. */
  readonly kms: LocalKms;
  /** Creates a user (global roles: [DEFAULT_ROLE] unless given) and returns a fresh enrolment code for them. */
  addUser(name: string, options?: { roles?: readonly string[] }): Promise<{ userId: string; code: string }>;
  /** One request on the local admin socket (started with `adminSocket: true`). */
  admin(body: AdminRequestJson | Record<string, unknown>): Promise<HttpResult>;
  close(): Promise<void>;
}

export async function startHarness(
  options: {
    limits?: Partial<StorageLimits>;
    wrapStorage?: (s: Storage) => Storage;
    adminSocket?: boolean;
    /** File limits (plugins/files.ts); defaults otherwise. */
    files?: Partial<FileServiceLimits>;
  } = {},
): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'qalqon-svc-'));
  const kms = await LocalKms.create(join(dir, LOCAL_KMS_FILE));
  const real = await openEmbeddedStorage({
    dataDir: dir,
    kms,
    ...(options.limits ? { limits: options.limits } : {}),
  });
  const storage = options.wrapStorage ? options.wrapStorage(real) : real;
  const tls = generateSelfSignedIdentity('localhost');
  const logs: string[] = [];
  const service = await createService({
    storage,
    tls: { cert: tls.certPem, key: tls.keyPem },
    log: (l) => logs.push(l),
    kms,
    ...(options.files ? { files: options.files } : {}),
  });
  const { port } = await service.listen('127.0.0.1', 0);
  const adminPath = join(dir, 'admin.sock');
  const adminApp: FastifyInstance | undefined = options.adminSocket
    ? await startAdminSocket(adminPath, service.ctx, { kms, dekFile: join(dir, DEK_FILE) })
    : undefined;
  return {
    service,
    storage: real,
    dir,
    tls,
    logs,
    kms,
    port,
    cert: tls.certPem,
    async addUser(name, opts = {}) {
      const u = await real.createUser({ name, roles: opts.roles ?? [DEFAULT_ROLE] });
      const { code } = await issueEnrolmentCode(real, u.id, Date.now());
      return { userId: u.id, code };
    },
    admin(body) {
      if (!adminApp) throw new Error('start the harness with adminSocket: true');
      return adminRequest(adminPath, body);
    },
    async close() {
      await adminApp?.close();
      await service.close();
      await real.close();
      await kms.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One `POST /admin` on a Unix socket. */
export function adminRequest(socketPath: string, body: unknown): Promise<HttpResult> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        socketPath,
        method: 'POST',
        path: '/admin',
        headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, json, text });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** TLS options that trust exactly the server's self-signed certificate (its name is localhost, we dial 127.0.0.1). */
export function tlsOptions(ep: Endpoint) {
  return { ca: ep.cert, servername: 'localhost', minVersion: 'TLSv1.3' as const };
}

export interface HttpResult {
  readonly status: number;
  readonly json: unknown;
  readonly text: string;
}

/** One HTTPS request. `body` is sent as JSON unless it is a string (sent raw with `contentType`). */
export function http(
  ep: Endpoint,
  method: string,
  path: string,
  body?: unknown,
  options: { token?: string; contentType?: string } = {},
): Promise<HttpResult> {
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  const headers: Record<string, string> = {};
  if (payload !== undefined) {
    headers['content-type'] = options.contentType ?? 'application/json';
    headers['content-length'] = String(Buffer.byteLength(payload));
  }
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: ep.port, method, path, headers, ...tlsOptions(ep), agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          const status = res.statusCode ?? 0;
          // The contract holds for refusals too: every error body is a wire ErrorResponse.
          if (status >= 400 && !ErrorResponse.safeParse(json).success) {
            reject(new Error(`error body off the wire contract: ${status} ${text.slice(0, 200)}`));
            return;
          }
          resolve({ status, json, text });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** A device's key material, generated as a real client would. */
export interface DeviceKeys {
  readonly identity: { privateKey: Uint8Array; publicKey: Uint8Array };
  readonly auth: { privateKey: Uint8Array; publicKey: Uint8Array };
  readonly json: NewDeviceJson;
}

export function typed(type: number, key: Uint8Array): Uint8Array {
  const out = new Uint8Array(key.length + 1);
  out[0] = type;
  out.set(key, 1);
  return out;
}

/** Keys for a new device; pass `identity` to make a linked device sharing the user's identity. */
export function makeDevice(
  options: {
    oneTimePrekeys?: number;
    firstPrekeyId?: number;
    identity?: { privateKey: Uint8Array; publicKey: Uint8Array };
    name?: string;
  } = {},
): DeviceKeys {
  const identity = options.identity ?? x25519GenerateKeyPair();
  const auth = x25519GenerateKeyPair();
  const spk = typed(0x05, x25519GenerateKeyPair().publicKey);
  const kyber = typed(0x08, kyber1024GenerateKeyPair().publicKey);
  const first = options.firstPrekeyId ?? 1;
  return {
    identity,
    auth,
    json: {
      name: options.name ?? 'test device',
      registrationId: 1 + Math.floor(Math.random() * 16000),
      identityKey: encodeBase64(typed(0x05, identity.publicKey)),
      authKey: encodeBase64(typed(0x05, auth.publicKey)),
      signedPrekey: {
        id: 1,
        publicKey: encodeBase64(spk),
        signature: encodeBase64(xeddsaSign(identity.privateKey, spk)),
      },
      kyberPrekey: {
        id: 2,
        publicKey: encodeBase64(kyber),
        signature: encodeBase64(xeddsaSign(identity.privateKey, kyber)),
      },
      oneTimePrekeys: Array.from({ length: options.oneTimePrekeys ?? 5 }, (_, i) => ({
        id: first + i,
        publicKey: encodeBase64(typed(0x05, x25519GenerateKeyPair().publicKey)),
      })),
    },
  };
}

export interface Enrolled {
  readonly userId: string;
  readonly deviceId: number;
  readonly keys: DeviceKeys;
}

export async function enrol(ep: Endpoint, code: string, keys: DeviceKeys = makeDevice()): Promise<Enrolled> {
  const r = await http(ep, 'POST', '/v1/enrol', { code, device: keys.json });
  if (r.status !== 200) throw new Error(`enrol failed: ${r.status} ${r.text}`);
  const j = EnrolResponse.parse(r.json);
  return { userId: j.userId, deviceId: j.deviceId, keys };
}

/** The challenge-response sign-in; returns the raw results so tests can inspect refusals. */
export async function signInRaw(
  ep: Endpoint,
  who: { userId: string; deviceId: number },
  authPrivateKey: Uint8Array,
): Promise<HttpResult> {
  const c = await http(ep, 'POST', '/v1/auth/challenge', { userId: who.userId, deviceId: who.deviceId });
  const challenge = ChallengeResponse.parse(c.json).challenge;
  const signature = xeddsaSign(authPrivateKey, authChallengeMessage(challenge, who.userId, who.deviceId));
  return http(ep, 'POST', '/v1/auth/session', {
    userId: who.userId,
    deviceId: who.deviceId,
    challenge: encodeBase64(challenge),
    signature: encodeBase64(signature),
  });
}

export async function signIn(ep: Endpoint, e: Enrolled): Promise<string> {
  const r = await signInRaw(ep, e, e.keys.auth.privateKey);
  if (r.status !== 200) throw new Error(`sign-in failed: ${r.status} ${r.text}`);
  return SessionResponse.parse(r.json).token;
}

/** A WebSocket client that queues every frame it receives. */
export class WsClient {
  readonly frames: ServerFrameJson[] = [];
  /** Frames that did not match the wire's ServerFrame schema (a server bug): next() fails on any. */
  readonly offContract: string[] = [];
  readonly ws: WebSocket;
  closed: { code: number; reason: string } | undefined;
  #waiters: (() => void)[] = [];

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data) => {
      const text = data.toString();
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      if (ServerFrame.safeParse(json).success) this.frames.push(json as ServerFrameJson);
      else this.offContract.push(text.slice(0, 200));
      for (const w of this.#waiters.splice(0)) w();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  static connect(ep: Endpoint): Promise<WsClient> {
    const ws = new WebSocket(`wss://127.0.0.1:${ep.port}/v1/ws`, {
      ...tlsOptions(ep),
      maxPayload: 8 * 1024 * 1024,
    });
    const client = new WsClient(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
    });
  }

  /** Connects and authenticates; resolves after the `ready` frame. */
  static async open(ep: Endpoint, token: string): Promise<WsClient> {
    const c = await WsClient.connect(ep);
    c.send({ type: 'auth', token });
    await c.next((f) => f.type === 'ready');
    return c;
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Removes and returns the first queued frame matching `pred`, waiting up to `timeoutMs`. */
  async next<T = ServerFrameJson>(pred: (f: ServerFrameJson) => boolean, timeoutMs = 5000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.offContract.length)
        throw new Error(`server frame off the wire contract: ${this.offContract[0]}`);
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0] as unknown as T;
      if (this.closed) throw new Error(`socket closed (${this.closed.code} ${this.closed.reason})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a frame');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits until the socket closes. */
  async waitClosed(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('socket did not close');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.closed;
  }

  close(): void {
    this.ws.close();
  }
}
