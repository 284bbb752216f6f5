/**
 * `npm run bench -- relay [--json] [--nodes N] [--database embedded|postgres] [--devices N]
 *   [--seconds S] [--rate R] [--idle M] [--quick] [--no-embedded]`
 *
 * Real `qalqon server start` processes on loopback (TLS 1.3), and simulated devices in this
 * process, each enrolled through the admin socket and the HTTPS API and connected over its
 * own authenticated WSS connection. Envelopes are 200 opaque bytes carrying their send time;
 * each is acknowledged by its recipient, so the server does the whole store → deliver →
 * delete cycle for every message.
 *
 * - throughput: every device keeps send frames of up to 64 envelopes (to random other
 *   devices) in flight; delivered messages/s over the measured window;
 * - latency: the same devices offer a fixed rate (default 5,000 messages/s); p50 and p99
 *   of send-to-deliver time (the sender and the receiver share this process's clock);
 * - idle: M more devices, each holding one idle authenticated connection (spread over
 *   child processes because of per-process file-descriptor limits); the server's resident
 *   memory is read from /proc. M defaults to 20,000 or as many as the server processes may
 *   open file descriptors for.
 *
 * One node (`--nodes 1`, the default): one server on the embedded SQLCipher database, or
 * on PostgreSQL with `--database postgres`.
 *
 * Several nodes (`--nodes 2`): one deployment of N server processes on one fresh PostgreSQL
 * database and one NATS server (the same config.json, TLS key and KMS key file in each
 * node's directory, a random NATS subject prefix). Device i connects to node i mod N, and
 * every envelope goes to a random device on another node, so every message crosses nodes
 * (stored by the sender's node, announced on NATS, fetched and pushed by the recipient's
 * node) and both nodes do both halves of the work. The idle connections are spread evenly
 * over the nodes, and the memory figures are the sums over the nodes' processes. In the
 * same invocation, the same benchmark then runs as the reference on one node on a fresh
 * PostgreSQL database (no bus), and on one embedded node (unless `--no-embedded`); the JSON
 * carries them under `reference` with the ratios of the several-node figures to them.
 * PostgreSQL: QALQON_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test,
 * a role that may create databases; each run's databases are dropped afterwards). NATS:
 * QALQON_BENCH_NATS_URL (default nats://127.0.0.1:4222).
 *
 * `--quick`: tiny sizes for a smoke run (4 devices, 0.5 s per phase, 200 messages/s, 10
 * idle connections); explicit flags still win.
 *
 * The spec's targets: ≥ 20,000 messages/s, p99 < 50 ms at 5,000/s, 20,000 idle connections
 * in < 2 GiB. JSON fields: throughput, p50Ms, p99Ms, offeredRate, idleConnections, idleRssMiB
 * (and peakRssMiB, perConnectionKiB, idleRssMiBPerNode, nodes, database, routing, devices,
 * seconds, node; `reference` with --nodes ≥ 2). A figure that could not be measured is null.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { randomBytes } from '@qalqon/crypto';
import { decodeBase64 } from '@qalqon/wire';
import pg from 'pg';
import type WebSocket from 'ws';
import { parseFlags, serverNodeArgs } from './lib.js';
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
/**
 * Send frames one device leaves unanswered at most in the fixed-rate phase. The server closes
 * a connection with more than 128 frames pending (sends and acks alike); when every device is
 * at this bound, the messages due wait here, and count their latency from when they were due.
 */
const MAX_SEND_FRAMES = 64;
/** Connections per idle-holding child process (each has its own descriptor limit). */
const PER_WORKER = 7000;
const MAX_NODES = 8;

const POSTGRES_URL = process.env.QALQON_BENCH_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';
const NATS_URL = process.env.QALQON_BENCH_NATS_URL ?? 'nats://127.0.0.1:4222';
/** The variables the server processes read their URLs from (config.json names them, never the URLs). */
const DB_ENV = 'QALQON_BENCH_DATABASE_URL';
const NATS_ENV = 'QALQON_BENCH_PUBSUB_URL';
/** What every node of a deployment shares (the rest of the directory is per node). */
const SHARED_FILES = ['config.json', 'tls-key.pem', 'tls-cert.pem', 'kms-master.key'];

interface Options {
  json: boolean;
  nodes: number;
  database: 'embedded' | 'postgres';
  devices: number;
  seconds: number;
  rate: number;
  idle: number | undefined;
  /** With --nodes ≥ 2: also run the one-node embedded reference. */
  embedded: boolean;
}

function progress(json: boolean, line: string): void {
  // Progress goes to stderr so that --json output stays one object on stdout.
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${line}`);
  else if (!json) process.stderr.write(`${line}\n`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const hex = (n: number) => Buffer.from(randomBytes(n)).toString('hex');

/** One `qalqon server start` process. */
interface Node {
  readonly child: ChildProcess;
  readonly server: Server;
  readonly listening: string;
  readonly dataDir: string;
}

/** One deployment: its nodes, and what it takes to tear it down (processes, directories, database). */
interface Deployment {
  readonly label: string;
  readonly database: 'embedded' | 'postgres';
  readonly nodes: readonly Node[];
  /** Stops the nodes (SIGTERM, or SIGKILL when aborting), removes the directories, drops the database. */
  close(signal?: NodeJS.Signals): Promise<void>;
}

/** Deployments not yet closed, for the interrupt handler. */
const live = new Set<Deployment>();

async function startNode(dataDir: string, env: NodeJS.ProcessEnv): Promise<Node> {
  const child = spawn(
    process.execPath,
    [...serverNodeArgs(), CLI, 'server', 'start', '--data', dataDir, '--listen', '127.0.0.1:0', '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'], env },
  );
  let err = '';
  child.stderr!.on('data', (c: Buffer) => {
    // The last few KiB only: a long run's log must not grow this process without bound.
    err = (err + c.toString()).slice(-4096);
  });
  const line = await new Promise<string>((resolvePromise, reject) => {
    let out = '';
    const onData = (c: Buffer) => {
      out += c.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        child.stdout!.off('data', onData);
        child.stdout!.resume();
        resolvePromise(out.slice(0, nl));
      }
    };
    child.stdout!.on('data', onData);
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

async function stopNode(node: Node, signal: NodeJS.Signals): Promise<void> {
  const { child } = node;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await exited;
}

/** Runs the CLI to completion (e.g. `server init`) and fails with its stderr if it fails. */
function runCli(args: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => {
    err = (err + c.toString()).slice(-4096);
  });
  return new Promise((resolvePromise, reject) => {
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0
        ? resolvePromise()
        : reject(new Error(`qalqon ${args.slice(0, 2).join(' ')} failed (${code}): ${err}`)),
    );
  });
}

/** One statement on the PostgreSQL server's admin connection (CREATE/DROP DATABASE). */
async function adminSql(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  try {
    await client.connect();
    await client.query(sql);
  } catch (err) {
    throw new Error(
      `PostgreSQL at QALQON_BENCH_POSTGRES_URL (default 127.0.0.1:5432/test) refused "${sql.split(' ').slice(0, 2).join(' ')}": ${(err as Error).message}`,
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** GET /healthz of a node, parsed. */
function healthz(node: Node): Promise<Record<string, unknown>> {
  return new Promise((resolvePromise, reject) => {
    const req = httpsRequest(
      {
        host: node.server.host,
        port: node.server.port,
        path: '/healthz',
        ca: node.server.cert,
        servername: 'localhost',
        minVersion: 'TLSv1.3',
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          text += c.toString();
        });
        res.on('end', () => {
          try {
            resolvePromise(JSON.parse(text) as Record<string, unknown>);
          } catch (err) {
            reject(err);
          }
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Waits until a node says its event bus is connected (it connects in the background). */
async function waitForBus(node: Node): Promise<void> {
  const deadline = performance.now() + 30_000;
  let last: unknown;
  while (performance.now() < deadline) {
    last = (await healthz(node)).pubsub;
    if (last === 'connected') return;
    await sleep(100);
  }
  throw new Error(
    `node ${node.listening}: the event bus is ${String(last)} after 30 s (is NATS running at QALQON_BENCH_NATS_URL?)`,
  );
}

/** One node on a fresh embedded (SQLCipher) data directory: today's benchmark. */
async function startEmbedded(): Promise<Deployment> {
  const dataDir = mkdtempSync(join(tmpdir(), 'qalqon-bench-relay-'));
  const nodes: Node[] = [];
  const deployment: Deployment = {
    label: '1 node, embedded SQLCipher',
    database: 'embedded',
    nodes,
    async close(signal = 'SIGTERM') {
      live.delete(deployment);
      for (const n of nodes) await stopNode(n, signal);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  live.add(deployment);
  try {
    nodes.push(await startNode(dataDir, process.env));
  } catch (err) {
    await deployment.close('SIGKILL');
    throw err;
  }
  return deployment;
}

/**
 * `count` nodes on one fresh PostgreSQL database; with more than one, on NATS too, under a
 * subject prefix of their own (other deployments may share the NATS server).
 */
async function startPostgres(count: number): Promise<Deployment> {
  const database = `qalqon_bench_${hex(8)}`;
  const root = mkdtempSync(join(tmpdir(), 'qalqon-bench-relay-'));
  const nodes: Node[] = [];
  let created = false;
  const bus = count > 1;
  const deployment: Deployment = {
    label: bus ? `${count} nodes, PostgreSQL + NATS` : '1 node, PostgreSQL',
    database: 'postgres',
    nodes,
    async close(signal = 'SIGTERM') {
      live.delete(deployment);
      for (const n of nodes) await stopNode(n, signal);
      rmSync(root, { recursive: true, force: true });
      if (created) await adminSql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    },
  };
  live.add(deployment);
  try {
    await adminSql(`CREATE DATABASE ${database}`);
    created = true;
    const url = new URL(POSTGRES_URL);
    url.pathname = `/${database}`;
    const env = { ...process.env, [DB_ENV]: url.toString(), ...(bus ? { [NATS_ENV]: NATS_URL } : {}) };
    const dirs = Array.from({ length: count }, (_, k) => join(root, `node${k}`));
    await runCli(
      [
        'server',
        'init',
        '--data',
        dirs[0]!,
        '--database-url-env',
        DB_ENV,
        ...(bus ? ['--pubsub-url-env', NATS_ENV] : []),
        '--json',
      ],
      env,
    );
    if (bus) {
      const configPath = join(dirs[0]!, 'config.json');
      const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
      config.pubsub = { provider: 'nats', urlEnv: NATS_ENV, subjectPrefix: `qbench.${hex(6)}` };
      writeFileSync(configPath, JSON.stringify(config), { mode: 0o600 });
    }
    for (const dir of dirs.slice(1)) {
      mkdirSync(dir, { mode: 0o700 });
      for (const f of SHARED_FILES) copyFileSync(join(dirs[0]!, f), join(dir, f));
    }
    for (const dir of dirs) nodes.push(await startNode(dir, env));
    if (bus) await Promise.all(nodes.map(waitForBus));
  } catch (err) {
    await deployment.close('SIGKILL').catch(() => undefined);
    throw err;
  }
  return deployment;
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
    /** The index of the node this device connects to. */
    readonly node: number,
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

  /** Send frames the server has not answered yet. */
  get inFlight(): number {
    return this.#pendingSends.size;
  }

  /**
   * Sends one frame of envelopes and resolves when the server says they are on disk. The
   * bodies carry `sentAt`, from which the receiver measures the latency (default: now).
   */
  send(recipients: readonly Device[], sentAt = performance.now()): Promise<void> {
    const id = `s${this.#seq++}`;
    // Every envelope of one frame leaves at the same moment: one body, encoded once (Buffer's
    // base64 is native and the same standard padded encoding the server expects).
    const body = Buffer.alloc(BODY_BYTES);
    body.writeDoubleBE(sentAt, 0);
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

function procStatusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

function maxOpenFiles(pid: number): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  return !m || m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
}

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);

/** What one deployment measured (the JSON fields; NaN prints as null). */
interface Figures {
  throughput: number;
  p50Ms: number;
  p99Ms: number;
  offeredRate: number;
  /** Messages/s that went out in the fixed-rate phase; below offeredRate only when saturated. */
  sentRate: number;
  /** The servers fell behind the offered rate (some messages waited for room; see MAX_SEND_FRAMES). */
  saturated: boolean;
  idleConnections: number;
  /** Resident memory with the idle connections held: the sum over the nodes' processes. */
  idleRssMiB: number;
  /** The sum of the nodes' peak resident memory. */
  peakRssMiB: number;
  perConnectionKiB: number;
  idleRssMiBPerNode: number[];
  nodes: number;
  database: 'embedded' | 'postgres';
  /** `any`: to a random other device; `cross-node`: to a random device on another node. */
  routing: 'any' | 'cross-node';
  devices: number;
  seconds: number;
}

/** The benchmark proper, on a running deployment. */
async function measureRelay(
  dep: Deployment,
  o: Options,
  log: (s: string) => void,
  reference = false,
): Promise<Figures> {
  const N = dep.nodes.length;
  const pids = dep.nodes.map((n) => n.child.pid!);
  log(
    `relay benchmark: ${dep.label}: server pid${N > 1 ? 's' : ''} ${pids.join(', ')} at ${dep.nodes
      .map((n) => n.listening)
      .join(
        ', ',
      )}, ${o.devices} devices, ${o.seconds}s per phase${N > 1 ? ', every message crosses nodes' : ''}`,
  );
  // Idle connections first, on a fresh server: its resident memory never shrinks, so
  // measuring after the traffic phases would hide the connections' cost in freed heap.
  // Spread evenly over the nodes, each capped by the files its process may open.
  const wanted = o.idle ?? 20_000;
  const perNode = pids.map((pid, k) => {
    const room = Math.max(0, maxOpenFiles(pid) - Math.ceil(o.devices / N) - 200);
    return Math.min(room, Math.floor(wanted / N) + (k < wanted % N ? 1 : 0));
  });
  const idle = sum(perNode);
  if (o.idle !== undefined && idle < o.idle) {
    process.stderr.write(
      `the server may open only ${pids.map(maxOpenFiles).join(', ')} files: holding ${idle} idle connections\n`,
    );
  }
  const workers: ChildProcess[] = [];
  let figures: Figures;
  try {
    const rssBefore = sum(pids.map((pid) => procStatusKiB(pid, 'VmRSS')));
    let ready = 0;
    const spawned: Promise<void>[] = [];
    for (const [k, node] of dep.nodes.entries()) {
      for (let w = 0; w * PER_WORKER < perNode[k]!; w++) {
        const count = Math.min(PER_WORKER, perNode[k]! - w * PER_WORKER);
        const worker = fork(
          join(here, 'relay-idle-worker.js'),
          [node.dataDir, node.listening, String(count), `idle${k}n${w}x`],
          { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] },
        );
        workers.push(worker);
        spawned.push(
          new Promise<void>((resolveWorker, reject) => {
            worker.on('message', (m: { ready: number }) => {
              ready += m.ready;
              progress(o.json, `idle connections: ${ready}/${idle}`);
              resolveWorker();
            });
            worker.once('exit', (code) => reject(new Error(`idle worker exited (${code})`)));
          }),
        );
      }
    }
    await Promise.all(spawned);
    progress(o.json, '');
    await sleep(2000);
    const idleRssMiBPerNode = pids.map((pid) => procStatusKiB(pid, 'VmRSS') / 1024);
    const idleRssMiB = sum(idleRssMiBPerNode);
    const peakRssMiB = sum(pids.map((pid) => procStatusKiB(pid, 'VmHWM') / 1024));
    const perConnectionKiB = idle > 0 ? (idleRssMiB * 1024 - rssBefore) / idle : Number.NaN;
    log(
      `  idle         ${idle.toLocaleString('en-US')} connections: server RSS ${idleRssMiB.toFixed(0)} MiB` +
        `${N > 1 ? ` (${idleRssMiBPerNode.map((r) => r.toFixed(0)).join(' + ')})` : ''} ` +
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
    // Device i on node i mod N (a slot per device, so the latency phase's round robin alternates nodes).
    const sims: Sim[] = new Array(o.devices);
    let enrolled = 0;
    await pool(o.devices, 16, async (i) => {
      const node = dep.nodes[i % N]!;
      const sim = new Sim(await enrolDevice(node.server, `bench${i}`, keys), i % N, onDelivered);
      await sim.open(node.server);
      sims[i] = sim;
      progress(o.json, `enrolled ${++enrolled}/${o.devices} devices`);
    });
    progress(o.json, '');
    // One node: any other device. Several: any device on another node.
    const pick = (self: Sim): Device => {
      for (;;) {
        const s = sims[Math.floor(Math.random() * sims.length)]!;
        if (s !== self && (N === 1 || s.node !== self.node)) return s.device;
      }
    };

    // Throughput: closed loop, every device keeps WINDOW full frames in flight.
    // A refused frame or a closed connection ends the phase and fails the run (after cleaning up).
    let failure: Error | undefined;
    const failed = (err: Error) => {
      failure ??= err;
      running = false;
    };
    let running = true;
    let sentCount = 0;
    const loops = sims.flatMap((sim) =>
      Array.from({ length: WINDOW }, async () => {
        while (running) {
          await sim.send(Array.from({ length: BATCH }, () => pick(sim)));
          sentCount += BATCH;
        }
      }).map((loop) => loop.catch(failed)),
    );
    await sleep(1000);
    const d0 = delivered;
    const t0 = performance.now();
    await sleep(o.seconds * 1000);
    const throughput = ((delivered - d0) * 1000) / (performance.now() - t0);
    running = false;
    await Promise.all(loops);
    if (failure) throw failure;
    const drainDeadline = performance.now() + 30_000;
    while (delivered < sentCount && performance.now() < drainDeadline) await sleep(20);
    log(`  throughput   ${Math.round(throughput).toLocaleString('en-US')} delivered messages/s`);

    // Latency at a fixed offered rate: every 10 ms, the messages due by now, round-robin over
    // the devices with room for another frame (see MAX_SEND_FRAMES).
    let offered = 0;
    let rr = 0;
    /** When the oldest message due but not yet sent became due; undefined: none waits. */
    let backlogSince: number | undefined;
    let saturated = false;
    const start = performance.now();
    const end = start + (o.seconds + 0.5) * 1000;
    const sends: Promise<void>[] = [];
    await new Promise<void>((resolveTimer) => {
      const timer = setInterval(() => {
        const now = performance.now();
        if (now >= end || failure) {
          clearInterval(timer);
          resolveTimer();
          return;
        }
        if (latencies === undefined && now - start >= 500) latencies = [];
        const due = Math.floor(((now - start) / 1000) * o.rate) - offered;
        // Messages that had to wait count from when the oldest of them became due.
        const stamp = backlogSince ?? now;
        let left = due;
        for (let full = 0; left > 0 && full < sims.length; ) {
          const sim = sims[rr++ % sims.length]!;
          if (sim.inFlight >= MAX_SEND_FRAMES) {
            full++;
            continue;
          }
          full = 0;
          const n = Math.min(left, BATCH, Math.max(1, Math.ceil(due / sims.length)));
          sends.push(
            sim
              .send(
                Array.from({ length: n }, () => pick(sim)),
                stamp,
              )
              .catch(failed),
          );
          left -= n;
          offered += n;
        }
        if (left > 0) {
          backlogSince = stamp;
          saturated = true;
        } else backlogSince = undefined;
      }, 10);
    });
    await Promise.all(sends);
    if (failure) throw failure;
    const settle = performance.now() + 10_000;
    while (delivered < sentCount + offered && performance.now() < settle) await sleep(20);
    // The rate that went out (below the offered rate only when saturated).
    const sentRate = (offered * 1000) / (o.seconds * 1000 + 500);
    const lat = Float64Array.from(latencies ?? []).sort();
    const p50Ms = percentile(lat, 50);
    const p99Ms = percentile(lat, 99);
    log(
      `  latency      p50 ${p50Ms.toFixed(1)} ms, p99 ${p99Ms.toFixed(1)} ms at ${o.rate.toLocaleString('en-US')} messages/s offered` +
        (saturated
          ? ` (saturated: the servers fell behind the offered rate, and ${Math.round(sentRate).toLocaleString('en-US')}/s went out)`
          : ''),
    );
    for (const s of sims) s.ws.close();
    figures = {
      throughput,
      p50Ms,
      p99Ms,
      offeredRate: o.rate,
      sentRate,
      saturated,
      idleConnections: idle,
      idleRssMiB,
      peakRssMiB,
      perConnectionKiB,
      idleRssMiBPerNode,
      nodes: N,
      database: dep.database,
      routing: N === 1 ? 'any' : 'cross-node',
      devices: o.devices,
      seconds: o.seconds,
    };
    if (!reference) {
      log(
        `  targets: ≥ 20,000 msgs/s ${throughput >= 20_000 ? 'met' : 'NOT met'}; p99 < 50 ms at 5,000/s ${
          o.rate === 5000 ? (p99Ms < 50 ? 'met' : 'NOT met') : 'not measured'
        }; 20,000 idle in < 2 GiB ${idle >= 20_000 ? (idleRssMiB < 2048 ? 'met' : 'NOT met') : `projected ${((perConnectionKiB * 20_000 + rssBefore) / 1024).toFixed(0)} MiB`}`,
      );
    }
  } finally {
    for (const w of workers) w.kill('SIGKILL');
  }
  return figures;
}

function parse(argv: readonly string[]): Options {
  const { json, values } = parseFlags(argv, ['quick', 'no-embedded']);
  const num = (name: string, dflt: number | undefined): number | undefined => {
    const v = values.get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} expects a non-negative number`);
    return n;
  };
  for (const k of values.keys()) {
    if (!['devices', 'seconds', 'rate', 'idle', 'nodes', 'database', 'quick', 'no-embedded'].includes(k)) {
      throw new Error(`unknown flag --${k}`);
    }
  }
  const quick = values.has('quick');
  const nodes = num('nodes', 1)!;
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > MAX_NODES) {
    throw new Error(`--nodes expects a whole number from 1 to ${MAX_NODES}`);
  }
  const database = values.get('database') ?? (nodes > 1 ? 'postgres' : 'embedded');
  if (database !== 'embedded' && database !== 'postgres') {
    throw new Error('--database expects embedded or postgres');
  }
  if (nodes > 1 && database !== 'postgres') {
    throw new Error('several nodes share one PostgreSQL database: --nodes > 1 needs --database postgres');
  }
  return {
    json,
    nodes,
    database,
    devices: Math.max(2, Math.floor(num('devices', quick ? 4 : 64)!)),
    seconds: num('seconds', quick ? 0.5 : 5)!,
    rate: num('rate', quick ? 200 : 5000)!,
    idle: num('idle', quick ? 10 : undefined),
    embedded: !values.has('no-embedded'),
  };
}

/** `multi ÷ reference` for the figures a ratio means something for (NaN when either is missing). */
function ratios(multi: Figures, ref: Figures) {
  const r = (a: number, b: number) =>
    Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : Number.NaN;
  return {
    throughput: r(multi.throughput, ref.throughput),
    p50Ms: r(multi.p50Ms, ref.p50Ms),
    p99Ms: r(multi.p99Ms, ref.p99Ms),
    idleRssMiB: r(multi.idleRssMiB, ref.idleRssMiB),
    perConnectionKiB: r(multi.perConnectionKiB, ref.perConnectionKiB),
  };
}

async function onDeployment<T>(
  start: () => Promise<Deployment>,
  body: (dep: Deployment) => Promise<T>,
): Promise<T> {
  const dep = await start();
  try {
    return await body(dep);
  } finally {
    await dep.close();
  }
}

export async function run(argv: readonly string[]): Promise<void> {
  const o = parse(argv);
  const log = (s: string) => {
    if (!o.json) process.stdout.write(`${s}\n`);
  };
  // An interrupted run still stops its servers and drops its databases.
  const interrupted = (signal: NodeJS.Signals) => {
    process.stderr.write(`\n${signal}: stopping the servers and dropping the benchmark's databases\n`);
    void Promise.allSettled([...live].map((d) => d.close('SIGKILL'))).then(() => process.exit(130));
  };
  // So does one that fails outside the awaited path (an error frame that answers no request).
  const crashed = (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    void Promise.allSettled([...live].map((d) => d.close('SIGKILL'))).then(() => process.exit(1));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  process.on('uncaughtException', crashed);
  process.on('unhandledRejection', crashed);
  try {
    const startMain = () => (o.database === 'embedded' ? startEmbedded() : startPostgres(o.nodes));
    const main = await onDeployment(startMain, (dep) => measureRelay(dep, o, log));
    const result: Record<string, unknown> = { ...main, node: process.version };
    if (o.nodes > 1) {
      // The references, on the same machine in the same invocation: one PostgreSQL node (the
      // cost of going multi-node), and one embedded node (today's default deployment).
      log('');
      const single = await onDeployment(
        () => startPostgres(1),
        (dep) => measureRelay(dep, o, log, true),
      );
      let embedded: Figures | undefined;
      if (o.embedded) {
        log('');
        embedded = await onDeployment(startEmbedded, (dep) => measureRelay(dep, o, log, true));
      }
      const ratio = ratios(main, single);
      result.reference = {
        single,
        ratio,
        ...(embedded ? { embedded, embeddedRatio: ratios(main, embedded) } : {}),
      };
      const f = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');
      log('');
      log(
        `  ${o.nodes} nodes ÷ 1 node (PostgreSQL): throughput ×${f(ratio.throughput)}, p50 ×${f(ratio.p50Ms)}, ` +
          `p99 ×${f(ratio.p99Ms)}, idle RSS ×${f(ratio.idleRssMiB)} (per connection ×${f(ratio.perConnectionKiB)})`,
      );
      if (embedded) {
        const e = ratios(main, embedded);
        log(
          `  ${o.nodes} nodes ÷ 1 node (embedded):   throughput ×${f(e.throughput)}, p50 ×${f(e.p50Ms)}, ` +
            `p99 ×${f(e.p99Ms)}, idle RSS ×${f(e.idleRssMiB)} (per connection ×${f(e.perConnectionKiB)})`,
        );
      }
    }
    if (o.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    process.off('uncaughtException', crashed);
    process.off('unhandledRejection', crashed);
  }
}
