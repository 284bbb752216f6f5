/**
 * What the CLI's tests share: running `qalqon` in this process (admin and client commands,
 * which only talk to sockets) or as a real child process (server init/start), temporary
 * directories and children cleaned up after each test, and a few probes of a running server.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { get } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type RunningServer, runServer } from '@qalqon/server';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { childRunner, type EnvChanges, firstLine, sourceUrl } from '../../../tests/support/ts-child.js';
import { run } from './cli.js';
import type { CliIo } from './io.js';

export interface CliResult {
  readonly code: number | null;
  readonly out: string;
  readonly err: string;
}

/** Runs `qalqon ARGV` in this process. */
export function qalqon(...argv: string[]): Promise<CliResult & { code: number }> {
  return runCaptured(argv, undefined);
}

/** Runs `qalqon ARGV` in this process with an io that says whether stderr is a terminal. */
export function qalqonTty(tty: boolean, ...argv: string[]): Promise<CliResult & { code: number }> {
  return runCaptured(argv, tty);
}

async function runCaptured(argv: string[], tty: boolean | undefined): Promise<CliResult & { code: number }> {
  let out = '';
  let err = '';
  const io: CliIo = {
    stdout: (t) => {
      out += t;
    },
    stderr: (t) => {
      err += t;
    },
    ...(tty === undefined ? {} : { stderrIsTTY: tty }),
  };
  const code = await run(argv, io);
  return { code, out, err };
}

/** The one JSON object a `--json` command printed (and nothing else). */
export function oneJson(out: string): Record<string, unknown> {
  const lines = out.split('\n').filter((l) => l !== '');
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]!) as Record<string, unknown>;
}

export interface Started {
  readonly child: ChildProcess;
  readonly listening: string;
  readonly stderr: () => string;
}

export interface CliHarness {
  /** A fresh temporary directory, removed after the test. */
  tempDir(): string;
  /** Starts `qalqon ARGS` as a real process (killed after the test if still running). */
  spawnQalqon(dir: string, args: string[], env?: EnvChanges): ChildProcess;
  /** Runs `qalqon ARGS` as a process to completion. */
  runQalqon(dir: string, args: string[], env?: EnvChanges): Promise<CliResult>;
  /** `qalqon server start` on port 0; resolves with its first JSON line's `listening`. */
  startServer(dir: string, data: string, env?: EnvChanges): Promise<Started>;
  /** Makes the harness kill `child` after the test if it is still running. */
  track(child: ChildProcess): ChildProcess;
}

/** Call once at the top of a test file: registers the clean-up after each test. */
export function cliHarness(prefix: string): CliHarness {
  const dirs: string[] = [];
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const track = (child: ChildProcess) => {
    children.push(child);
    return child;
  };
  const spawnQalqon = (dir: string, args: string[], env: EnvChanges = {}) =>
    track(childRunner(dir)(`import ${JSON.stringify(sourceUrl('cli', 'main.ts'))};`, args, env));
  return {
    tempDir() {
      const d = mkdtempSync(join(tmpdir(), prefix));
      dirs.push(d);
      return d;
    },
    spawnQalqon,
    runQalqon(dir, args, env = {}) {
      const child = spawnQalqon(dir, args, env);
      let out = '';
      let err = '';
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
      });
      child.stderr?.on('data', (d: Buffer) => {
        err += d.toString();
      });
      return new Promise((resolve) => child.once('close', (code) => resolve({ code, out, err })));
    },
    async startServer(dir, data, env = {}) {
      const child = spawnQalqon(
        dir,
        ['server', 'start', '--data', data, '--listen', '127.0.0.1:0', '--json'],
        env,
      );
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const line = JSON.parse(await firstLine(child)) as { listening: string };
      return { child, listening: line.listening, stderr: () => stderr };
    },
    track,
  };
}

/** SIGTERM, and expects a clean exit. */
export async function stopServer(s: Started): Promise<void> {
  const exited = new Promise<number | null>((resolve) => s.child.once('exit', (c) => resolve(c)));
  s.child.kill('SIGTERM');
  expect(await exited).toBe(0);
}

/** The status of `GET /healthz` (the certificate is the server's own; trust is not the point here). */
export function healthz(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = get(`${url}/healthz`, { rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
  });
}

/** The names of the users of the running server on `data`, sorted. */
export async function userNames(data: string): Promise<string[]> {
  const r = await qalqon('admin', '--data', data, 'user', 'list', '--json');
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  return (oneJson(r.out) as { users: { name: string }[] }).users.map((u) => u.name).sort();
}

/** The passphrase of the test profiles (`--keystore passphrase`, read from QALQON_PASSPHRASE). */
export const TEST_PASSPHRASE = 'correct horse battery staple';

/** Where a test's server is: its URL and pin, and the data directory of its admin socket. */
export interface TestServer {
  readonly url: string;
  readonly pin: string;
  readonly data: string;
}

/** A server shared by the tests of one file (see `sharedServer`). */
export interface SharedServer extends TestServer {
  /** The file's temporary directory: the server's data is `root/server`, profiles go beside it. */
  readonly root: string;
  /** Closes the server; its data directory stays. */
  stop(): Promise<void>;
  /** Starts the server again on the same data directory (on a new port). */
  start(): Promise<void>;
}

/**
 * Call once at the top of a test file: before its tests, a real server (`runServer`: TLS 1.3,
 * SQLCipher, the admin socket) in a fresh temporary directory, with QALQON_PASSPHRASE set to
 * TEST_PASSPHRASE; after them, the server closed and the directory removed. A `beforeAll`
 * the file registers after this call runs once the server is up.
 */
export function sharedServer(prefix: string): SharedServer {
  let root = '';
  let running: RunningServer | undefined;
  const data = () => join(root, 'server');
  const current = () => {
    if (!running) throw new Error('the shared test server is not running');
    return running;
  };
  const start = async () => {
    running = await runServer({ dataDir: data(), listen: '127.0.0.1:0', log: () => undefined });
  };
  const stop = async () => {
    await current().close();
    running = undefined;
  };
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), prefix));
    await start();
    process.env.QALQON_PASSPHRASE = TEST_PASSPHRASE;
  });
  afterAll(async () => {
    await running?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });
  return {
    get root() {
      return root;
    },
    get data() {
      return data();
    },
    get url() {
      return current().url;
    },
    get pin() {
      return current().pin;
    },
    start,
    stop,
  };
}

/**
 * Adds user `name` over the admin socket (with `addArgs`, e.g. `--role auditor`) and enrols
 * a device of theirs into `profile` with the passphrase keystore (QALQON_PASSPHRASE must
 * be set to TEST_PASSPHRASE).
 */
export async function addAndEnrol(
  server: TestServer,
  profile: string,
  name: string,
  ...addArgs: string[]
): Promise<void> {
  const add = await qalqon('admin', '--data', server.data, 'user', 'add', name, ...addArgs, '--json');
  expect(add.err).toBe('');
  expect(add.code).toBe(0);
  const code = String(oneJson(add.out).enrollmentCode);
  const enrolled = await qalqon(
    'enroll',
    '--server',
    server.url,
    '--pin',
    server.pin,
    '--code',
    code,
    '--profile',
    profile,
    '--keystore',
    'passphrase',
    '--json',
  );
  expect(enrolled.code, enrolled.err).toBe(0);
  expect(oneJson(enrolled.out)).toMatchObject({ user: name });
}

/** stderr without the notice every command on a passphrase-keystore profile prints first. */
export function withoutKeystoreNotice(err: string): string {
  return err.replace(/^qalqon: using the passphrase keystore[^\n]*\n/, '');
}
