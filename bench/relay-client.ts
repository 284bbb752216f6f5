/**
 * The simulated devices of the relay benchmark: each one is enrolled through the real
 * admin socket and HTTPS API, signs in with its own auth key, and holds one WSS
 * connection to a real `qalqon server start` process. Only what a device needs to relay
 * envelopes is here; the envelopes' bodies are opaque bytes, as the server sees them.
 */
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { Agent, request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { kyber1024GenerateKeyPair, x25519GenerateKeyPair, xeddsaSign } from '@qalqon/crypto';
import { authChallengeMessage, decodeBase64, encodeBase64, type NewDeviceJson } from '@qalqon/wire';
import WebSocket from 'ws';

export interface Server {
  readonly host: string;
  readonly port: number;
  readonly dataDir: string;
  /** PEM of the server's self-signed certificate: the only trust anchor. */
  readonly cert: string;
}

export function serverFromDataDir(dataDir: string, listening: string): Server {
  const url = new URL(listening);
  const config = JSON.parse(readFileSync(join(dataDir, 'config.json'), 'utf8')) as {
    tls: { certFile: string };
  };
  return {
    host: url.hostname,
    port: Number(url.port),
    dataDir,
    cert: readFileSync(join(dataDir, config.tls.certFile), 'utf8'),
  };
}

function tlsOptions(s: Server) {
  return { ca: s.cert, servername: 'localhost', minVersion: 'TLSv1.3' as const };
}

function collect(res: NodeJS.ReadableStream): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
  });
}

/** One request to the local admin socket (the way `qalqon admin` talks to a running server). */
export function admin(s: Server, body: unknown): Promise<Record<string, unknown>> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        socketPath: join(s.dataDir, 'admin.sock'),
        method: 'POST',
        path: '/admin',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        collect(res).then((text) => {
          if ((res.statusCode ?? 500) >= 400) reject(new Error(`admin: ${res.statusCode} ${text}`));
          else resolve(JSON.parse(text) as Record<string, unknown>);
        }, reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

const agents = new WeakMap<Server, Agent>();

async function api(s: Server, path: string, body: unknown): Promise<Record<string, unknown>> {
  const payload = JSON.stringify(body);
  let agent = agents.get(s);
  if (agent === undefined) {
    agent = new Agent({ keepAlive: true, maxSockets: 16, ...tlsOptions(s) });
    agents.set(s, agent);
  }
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: s.host,
        port: s.port,
        method: 'POST',
        path,
        agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        ...tlsOptions(s),
      },
      (res) => {
        collect(res).then((text) => {
          if ((res.statusCode ?? 500) >= 400) reject(new Error(`${path}: ${res.statusCode} ${text}`));
          else resolve(JSON.parse(text) as Record<string, unknown>);
        }, reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

function typed(type: number, key: Uint8Array): Uint8Array {
  const out = new Uint8Array(key.length + 1);
  out[0] = type;
  out.set(key, 1);
  return out;
}

/**
 * The prekeys every simulated device registers. The server checks their signatures on
 * every enrolment; generating a fresh Kyber key per device would only measure the
 * benchmark's own set-up, so one set is shared and each device differs by its auth key.
 */
export interface SharedKeys {
  readonly identityKey: string;
  readonly signedPrekey: NewDeviceJson['signedPrekey'];
  readonly kyberPrekey: NewDeviceJson['kyberPrekey'];
}

export function makeSharedKeys(): SharedKeys {
  const identity = x25519GenerateKeyPair();
  const spk = typed(0x05, x25519GenerateKeyPair().publicKey);
  const kyber = typed(0x08, kyber1024GenerateKeyPair().publicKey);
  return {
    identityKey: encodeBase64(typed(0x05, identity.publicKey)),
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
  };
}

export interface Device {
  readonly userId: string;
  readonly deviceId: number;
  readonly token: string;
}

/** Creates a user, enrols one device for it and signs it in. */
export async function enrolDevice(s: Server, name: string, keys: SharedKeys): Promise<Device> {
  const added = await admin(s, { op: 'user.add', name });
  const auth = x25519GenerateKeyPair();
  const device: NewDeviceJson = {
    name: 'bench',
    registrationId: 1 + Math.floor(Math.random() * 16000),
    identityKey: keys.identityKey,
    authKey: encodeBase64(typed(0x05, auth.publicKey)),
    signedPrekey: keys.signedPrekey,
    kyberPrekey: keys.kyberPrekey,
    oneTimePrekeys: [],
  };
  const enrolled = await api(s, '/v1/enrol', { code: added.enrollmentCode, device });
  const userId = enrolled.userId as string;
  const deviceId = enrolled.deviceId as number;
  const c = await api(s, '/v1/auth/challenge', { userId, deviceId });
  const challenge = decodeBase64(c.challenge as string);
  if (challenge === undefined) throw new Error('bad challenge');
  const signature = xeddsaSign(auth.privateKey, authChallengeMessage(challenge, userId, deviceId));
  const session = await api(s, '/v1/auth/session', {
    userId,
    deviceId,
    challenge: encodeBase64(challenge),
    signature: encodeBase64(signature),
  });
  return { userId, deviceId, token: session.token as string };
}

export interface PushedEnvelope {
  readonly id: string;
  readonly body: string;
}

/** Opens a WSS connection, authenticates, and resolves on the server's `ready` frame. */
export function connect(
  s: Server,
  d: Device,
  onFrame: (frame: { type: string; [k: string]: unknown }) => void,
): Promise<WebSocket> {
  const ws = new WebSocket(`wss://${s.host}:${s.port}/v1/ws`, { ...tlsOptions(s), perMessageDeflate: false });
  return new Promise((resolve, reject) => {
    ws.once('error', reject);
    // batch: the server pushes several envelopes per `envelopes` frame.
    ws.once('open', () => ws.send(JSON.stringify({ type: 'auth', token: d.token, batch: true })));
    let ready = false;
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString()) as { type: string; [k: string]: unknown };
      if (frame.type === 'ready') {
        ready = true;
        resolve(ws);
      } else if (frame.type === 'error' && !ready)
        reject(new Error(`ws error frame: ${String(frame.code)} ${String(frame.message)}`));
      // After `ready`, error frames go to the caller, which fails the request they answer.
      else onFrame(frame);
    });
  });
}

/** Runs `task(i)` for i in [0, count) with at most `parallel` at a time. */
export async function pool(
  count: number,
  parallel: number,
  task: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(parallel, count) }, async () => {
    while (next < count) await task(next++);
  });
  await Promise.all(workers);
}
