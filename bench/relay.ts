/**
 * `npm run bench -- relay [--json] [--devices N] [--seconds S] [--rate R] [--idle M]`
 *
 * A real `qalqon server start` process on loopback (embedded SQLCipher database, TLS 1.3),
 * and simulated devices in this process, each enrolled through the admin socket and the
 * HTTPS API and connected over its own authenticated WSS connection. Envelopes are 200
 * opaque bytes carrying their send time; each is acknowledged by its recipient, so the
 * server does the whole store → deliver → delete cycle for every message.
 *
 * - throughput: every device keeps send frames of up to 64 envelopes (to random other
 *   devices) in flight; delivered messages/s over the measured window;
 * - latency: the same devices offer a fixed rate (default 5,000 messages/s); p50 and p99
 *   of send-to-deliver time (the sender and the receiver share this process's clock);
 * - idle: M more devices, each holding one idle authenticated connection (spread over
 *   child processes because of per-process file-descriptor limits); the server's resident
 *   memory is read from /proc. M defaults to 20,000 or as many as the server process may
 *   open file descriptors for.
 *
 * The spec's targets: ≥ 20,000 messages/s, p99 < 50 ms at 5,000/s, 20,000 idle connections
 * in < 2 GiB. JSON fields: throughput, p50Ms, p99Ms, offeredRate, idleConnections, idleRssMiB.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { decodeBase64 } from '@qalqon/wire';
import type WebSocket from 'ws';
import { parseFlags } from './lib.js';
import {
  connect,
  type Device,
  enrolDevice,
  makeSharedKeys,
  type PushedEnvelope,
  pool,
  type Server,
  serverFromDataDir,
} from './relay-client.js';

const here = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(here, '../../..');
const CLI = join(ROOT, 'packages/cli/dist/main.js');
const BODY_BYTES = 200;
const BODY_B64_LEN = 4 * Math.ceil(BODY_BYTES / 3);
const BATCH = 64;
const WINDOW = 2;
const MAX_ACK_IDS = 1000;
/** Connections per idle-holding child process (each has its own descriptor limit). */
const PER_WORKER = 7000;

interface Options {
  json: boolean;
  devices: number;
  seconds: number;
  rate: number;
  idle: number | undefined;
}

function progress(json: boolean, line: string): void {
  // Progress goes to stderr so that --json output stays one object on stdout.
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${line}`);
  else if (!json) process.stderr.write(`${line}\n`);
}

async function startServer(): Promise<{
  child: ChildProcess;
  server: Server;
  listening: string;
  dataDir: string;
}> {
  const dataDir = mkdtempSync(join(tmpdir(), 'qalqon-bench-relay-'));
  // Extra Node flags for the server only, e.g. QALQON_BENCH_SERVER_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=/tmp/p".
  const nodeFlags = (process.env.QALQON_BENCH_SERVER_NODE_OPTIONS ?? '').split(/\s+/).filter((f) => f !== '');
  const child = spawn(
    process.execPath,
    [...nodeFlags, CLI, 'server', 'start', '--data', dataDir, '--listen', '127.0.0.1:0', '--json'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let err = '';
  child.stderr!.on('data', (c: Buffer) => {
    err += c.toString();
  });
  const line = await new Promise<string>((resolvePromise, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolvePromise(out.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`server exited (${code}): ${err.slice(0, 500)}`)));
  });
  const started = JSON.parse(line) as { listening: string };
  return {
    child,
    server: serverFromDataDir(dataDir, started.listening),
    listening: started.listening,
    dataDir,
  };
}

function procStatusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

function maxOpenFiles(pid: number): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  return !m || m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
}

/** One simulated device: its connection, its in-flight sends and its pending acks. */
class Sim {
  readonly #pendingSends = new Map<string, { resolve: () => void; reject: (err: Error) => void }>();
  #acks: string[] = [];
  #ackTimer: NodeJS.Immediate | undefined;
  #seq = 0;
  ws!: WebSocket;

  constructor(
    readonly device: Device,
    private readonly onDelivered: (sentAt: number) => void,
  ) {}

  async open(server: Server): Promise<void> {
    this.ws = await connect(server, this.device, (frame) => {
      if (frame.type === 'envelopes') {
        for (const e of frame.envelopes as PushedEnvelope[]) this.#received(e);
      } else if (frame.type === 'envelope') {
        this.#received(frame as unknown as PushedEnvelope);
      } else if (frame.type === 'sent') {
        const done = this.#pendingSends.get(frame.id as string);
        this.#pendingSends.delete(frame.id as string);
        done?.resolve();
      } else if (frame.type === 'error') {
        // A refused send fails the run instead of leaving it waiting forever.
        const err = new Error(`the server refused a frame: ${String(frame.code)} ${String(frame.message)}`);
        const failed = this.#pendingSends.get(frame.id as string);
        if (failed) {
          this.#pendingSends.delete(frame.id as string);
          failed.reject(err);
        } else throw err;
      }
    });
    this.ws.on('close', (code) => {
      for (const p of this.#pendingSends.values())
        p.reject(new Error(`the server closed the connection (${code})`));
      this.#pendingSends.clear();
    });
  }

  #received(e: PushedEnvelope): void {
    // Strict decoding for the check; the send time is read from the decoded bytes.
    const body = e.body.length === BODY_B64_LEN ? decodeBase64(e.body) : undefined;
    if (body === undefined || body.length !== BODY_BYTES) throw new Error('envelope body mangled');
    this.onDelivered(new DataView(body.buffer, body.byteOffset, 8).getFloat64(0));
    this.#ack(e.id);
  }

  #ack(id: string): void {
    this.#acks.push(id);
    if (this.#acks.length >= MAX_ACK_IDS) this.#flushAcks();
    else this.#ackTimer ??= setImmediate(() => this.#flushAcks());
  }

  #flushAcks(): void {
    if (this.#ackTimer) clearImmediate(this.#ackTimer);
    this.#ackTimer = undefined;
    if (this.#acks.length === 0) return;
    this.ws.send(JSON.stringify({ type: 'ack', ids: this.#acks }));
    this.#acks = [];
  }

  /** Sends one frame of envelopes and resolves when the server says they are on disk. */
  send(recipients: readonly Device[]): Promise<void> {
    const id = `s${this.#seq++}`;
    // Every envelope of one frame leaves at the same moment: one body, encoded once (Buffer's
    // base64 is native and the same standard padded encoding the server expects).
    const body = Buffer.alloc(BODY_BYTES);
    body.writeDoubleBE(performance.now(), 0);
    const b64 = body.toString('base64');
    const messages = recipients.map((r) => ({
      recipientUserId: r.userId,
      recipientDeviceId: r.deviceId,
      body: b64,
    }));
    return new Promise((resolvePromise, rejectPromise) => {
      this.#pendingSends.set(id, { resolve: resolvePromise, reject: rejectPromise });
      this.ws.send(JSON.stringify({ type: 'send', id, messages }));
    });
  }
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function parse(argv: readonly string[]): Options {
  const { json, values } = parseFlags(argv);
  const num = (name: string, dflt: number | undefined): number | undefined => {
    const v = values.get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} expects a non-negative number`);
    return n;
  };
  for (const k of values.keys()) {
    if (!['devices', 'seconds', 'rate', 'idle'].includes(k)) throw new Error(`unknown flag --${k}`);
  }
  return {
    json,
    devices: Math.max(2, Math.floor(num('devices', 64)!)),
    seconds: num('seconds', 5)!,
    rate: num('rate', 5000)!,
    idle: num('idle', undefined),
  };
}

export async function run(argv: readonly string[]): Promise<void> {
  const o = parse(argv);
  const log = (s: string) => {
    if (!o.json) process.stdout.write(`${s}\n`);
  };
  const { child, server, listening, dataDir } = await startServer();
  const workers: ChildProcess[] = [];
  try {
    log(
      `relay benchmark: server pid ${child.pid} at ${listening}, ${o.devices} devices, ${o.seconds}s per phase`,
    );
    // Idle connections first, on a fresh server: its resident memory never shrinks, so
    // measuring after the traffic phases would hide the connections' cost in freed heap.
    const fdRoom = maxOpenFiles(child.pid!) - o.devices - 200;
    const idle = Math.max(0, Math.min(o.idle ?? 20_000, fdRoom));
    if (o.idle !== undefined && idle < o.idle) {
      process.stderr.write(
        `the server may open only ${maxOpenFiles(child.pid!)} files: holding ${idle} idle connections\n`,
      );
    }
    const rssBefore = procStatusKiB(child.pid!, 'VmRSS');
    const workerCount = Math.ceil(idle / PER_WORKER);
    let ready = 0;
    await Promise.all(
      Array.from({ length: workerCount }, (_, w) => {
        const count = Math.min(PER_WORKER, idle - w * PER_WORKER);
        const worker = fork(
          join(here, 'relay-idle-worker.js'),
          [dataDir, listening, String(count), `idle${w}x`],
          {
            stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
          },
        );
        workers.push(worker);
        return new Promise<void>((resolveWorker, reject) => {
          worker.on('message', (m: { ready: number }) => {
            ready += m.ready;
            progress(o.json, `idle connections: ${ready}/${idle}`);
            resolveWorker();
          });
          worker.once('exit', (code) => reject(new Error(`idle worker exited (${code})`)));
        });
      }),
    );
    progress(o.json, '');
    await new Promise((r) => setTimeout(r, 2000));
    const idleRssMiB = procStatusKiB(child.pid!, 'VmRSS') / 1024;
    const peakRssMiB = procStatusKiB(child.pid!, 'VmHWM') / 1024;
    const perConnectionKiB = idle > 0 ? (idleRssMiB * 1024 - rssBefore) / idle : Number.NaN;
    log(
      `  idle         ${idle.toLocaleString('en-US')} connections: server RSS ${idleRssMiB.toFixed(0)} MiB ` +
        `(${perConnectionKiB.toFixed(1)} KiB per connection; peak ${peakRssMiB.toFixed(0)} MiB)`,
    );
    // The idle devices go away before the traffic phases, which measure the relay alone.
    for (const w of workers.splice(0)) w.kill('SIGKILL');
    const keys = makeSharedKeys();
    let delivered = 0;
    let latencies: number[] | undefined;
    const onDelivered = (sentAt: number) => {
      delivered++;
      latencies?.push(performance.now() - sentAt);
    };
    const sims: Sim[] = [];
    await pool(o.devices, 16, async (i) => {
      const sim = new Sim(await enrolDevice(server, `bench${i}`, keys), onDelivered);
      await sim.open(server);
      sims.push(sim);
      progress(o.json, `enrolled ${sims.length}/${o.devices} devices`);
    });
    progress(o.json, '');
    const pick = (self: Sim): Device => {
      for (;;) {
        const s = sims[Math.floor(Math.random() * sims.length)]!;
        if (s !== self) return s.device;
      }
    };

    // Throughput: closed loop, every device keeps WINDOW full frames in flight.
    let running = true;
    let sentCount = 0;
    const loops = sims.flatMap((sim) =>
      Array.from({ length: WINDOW }, async () => {
        while (running) {
          await sim.send(Array.from({ length: BATCH }, () => pick(sim)));
          sentCount += BATCH;
        }
      }),
    );
    await new Promise((r) => setTimeout(r, 1000));
    const d0 = delivered;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, o.seconds * 1000));
    const throughput = ((delivered - d0) * 1000) / (performance.now() - t0);
    running = false;
    await Promise.all(loops);
    const drainDeadline = performance.now() + 30_000;
    while (delivered < sentCount && performance.now() < drainDeadline)
      await new Promise((r) => setTimeout(r, 20));
    log(`  throughput   ${Math.round(throughput).toLocaleString('en-US')} delivered messages/s`);

    // Latency at a fixed offered rate: every 10 ms, the messages due by now, round-robin.
    let offered = 0;
    let rr = 0;
    const start = performance.now();
    const end = start + (o.seconds + 0.5) * 1000;
    const sends: Promise<void>[] = [];
    await new Promise<void>((resolveTimer) => {
      const timer = setInterval(() => {
        const now = performance.now();
        if (now >= end) {
          clearInterval(timer);
          resolveTimer();
          return;
        }
        if (latencies === undefined && now - start >= 500) latencies = [];
        const due = Math.floor(((now - start) / 1000) * o.rate) - offered;
        for (let left = due; left > 0; ) {
          const sim = sims[rr++ % sims.length]!;
          const n = Math.min(left, BATCH, Math.max(1, Math.ceil(due / sims.length)));
          sends.push(sim.send(Array.from({ length: n }, () => pick(sim))));
          left -= n;
          offered += n;
        }
      }, 10);
    });
    await Promise.all(sends);
    const settle = performance.now() + 10_000;
    while (delivered < sentCount + offered && performance.now() < settle)
      await new Promise((r) => setTimeout(r, 20));
    const lat = Float64Array.from(latencies ?? []).sort();
    const p50Ms = percentile(lat, 50);
    const p99Ms = percentile(lat, 99);
    log(
      `  latency      p50 ${p50Ms.toFixed(1)} ms, p99 ${p99Ms.toFixed(1)} ms at ${o.rate.toLocaleString('en-US')} messages/s offered`,
    );
    for (const s of sims) s.ws.close();

    const result = {
      throughput,
      p50Ms,
      p99Ms,
      offeredRate: o.rate,
      idleConnections: idle,
      idleRssMiB,
      peakRssMiB,
      perConnectionKiB,
      devices: o.devices,
      seconds: o.seconds,
      node: process.version,
    };
    if (o.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      log(
        `  targets: ≥ 20,000 msgs/s ${throughput >= 20_000 ? 'met' : 'NOT met'}; p99 < 50 ms at 5,000/s ${
          o.rate === 5000 ? (p99Ms < 50 ? 'met' : 'NOT met') : 'not measured'
        }; 20,000 idle in < 2 GiB ${idle >= 20_000 ? (idleRssMiB < 2048 ? 'met' : 'NOT met') : `projected ${((perConnectionKiB * 20_000 + rssBefore) / 1024).toFixed(0)} MiB`}`,
      );
    }
  } finally {
    for (const w of workers) w.kill('SIGKILL');
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    rmSync(dataDir, { recursive: true, force: true });
  }
}
