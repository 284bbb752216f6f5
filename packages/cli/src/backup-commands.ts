/**
 * `qalqon admin backup|export|restore|export-read`: encrypted backups of a running server,
 * their offline restore into a new data directory, and encrypted exports of the directory,
 * channel membership and audit log (docs/ARCHITECTURE.md, "Backups, restore and exports").
 *
 * backup and export ask the running server (its admin socket) for the archive, which it
 * streams; this process writes it to a temporary file beside FILE (0600) and renames it into
 * place only once every byte the server announced has arrived. restore and export-read work
 * offline on the archive file. Progress goes to stderr as one updating line, and only when
 * stderr is a terminal; stdout carries the result alone (one JSON object with --json). The
 * recovery key, when asked for, is generated here, sent to the server over the admin socket
 * to wrap the archive key, printed once and never stored.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  linkSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { request } from 'node:http';
import { basename, dirname, join, resolve } from 'node:path';
import {
  ADMIN_SOCKET_FILE,
  type ArchiveKeySource,
  checkRestoreTarget,
  formatRecoveryKey,
  isServerError,
  type Kms,
  LocalKms,
  newRecoveryKey,
  openDataDirKms,
  Pkcs11Kms,
  type Pkcs11KmsSetting,
  parseRecoveryKey,
  readExport,
  restoreBackup,
} from '@qalqon/server';
import { type AdminArchiveRequestJson, ErrorResponse, EXPORT_PART_NAMES } from '@qalqon/wire';
import { type CliIo, EXIT_OK, RefusedError, stderrIsTTY, UsageError } from './io.js';

export const BACKUP_USAGE = `  qalqon admin --data DIR backup --out FILE [--recovery-key] [--json]
  qalqon admin --data DIR export --out FILE [directory] [channels] [audit] [--recovery-key] [--json]
  qalqon admin --data NEWDIR restore --in FILE (--kms-key-file OLD_KMS_KEY_FILE | --recovery-key-env VAR
                      | --recovery-key-file FILE | --kms pkcs11 --pkcs11-module PATH --pkcs11-token LABEL
                      (--pkcs11-pin-env VAR | --pkcs11-pin-file FILE)) [--json]
  qalqon admin [--data DIR] export-read --in FILE [(--kms-key-file FILE | --recovery-key-env VAR
                      | --recovery-key-file FILE | --kms pkcs11 ...)] [--json]
      (backup/export: the running server streams an archive sealed under a fresh key wrapped
       by its KMS, and with --recovery-key also by a recovery key printed once; restore: into
       an empty or new directory, offline, with the KMS or the recovery key; export-read:
       prints an export, opened with DIR's KMS or the key given)
`;

/** The admin subcommands this file handles. */
export const BACKUP_COMMANDS: ReadonlySet<string> = new Set(['backup', 'export', 'restore', 'export-read']);

/** Options that only these commands take (cli.ts refuses them elsewhere). */
export const BACKUP_ONLY_OPTIONS = [
  'in',
  'recovery-key',
  'recovery-key-env',
  'recovery-key-file',
  'kms-key-file',
] as const;

type Values = Readonly<Record<string, string | boolean | readonly string[] | undefined>>;

const RESTORE_OPTIONS = [
  'data',
  'json',
  'in',
  'kms-key-file',
  'recovery-key-env',
  'recovery-key-file',
  'kms',
  'pkcs11-module',
  'pkcs11-token',
  'pkcs11-pin-env',
  'pkcs11-pin-file',
];
const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  backup: ['data', 'json', 'out', 'recovery-key'],
  export: ['data', 'json', 'out', 'recovery-key'],
  restore: RESTORE_OPTIONS,
  'export-read': RESTORE_OPTIONS,
};

// ---------------------------------------------------------------- progress

function unit(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  return `${(n / (1024 * 1024 * 1024)).toFixed(2)} GiB`;
}

/** One progress line, e.g. `backup: 1.5 MiB of 3.0 MiB (50%)`. */
export function formatProgress(label: string, done: number, total: number): string {
  const pct = total > 0 ? Math.floor((Math.min(done, total) / total) * 100) : 100;
  return `${label}: ${unit(done)} of ${unit(total)} (${pct}%)`;
}

export interface Progress {
  update(label: string, done: number, total: number): void;
  /** Ends the line (if one was drawn). */
  done(): void;
}

/** A single updating stderr line (carriage return, clear to end of line), at most ten times a second. */
export function progressLine(io: CliIo, now: () => number = Date.now): Progress {
  if (!stderrIsTTY(io)) return { update() {}, done() {} };
  let drawn = false;
  let last = 0;
  let lastLabel = '';
  return {
    update(label, done, total) {
      const t = now();
      if (drawn && label === lastLabel && done < total && t - last < 100) return;
      if (drawn && label !== lastLabel) io.stderr('\n');
      last = t;
      lastLabel = label;
      drawn = true;
      io.stderr(`\r${formatProgress(label, done, total)}\x1b[K`);
    },
    done() {
      if (drawn) io.stderr('\n');
      drawn = false;
    },
  };
}

// ---------------------------------------------------------------- keys

function str(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/** The recovery key from --recovery-key-env or --recovery-key-file, if one was given. */
function recoveryKeyOf(values: Values): Uint8Array | undefined {
  const env = str(values, 'recovery-key-env');
  const file = str(values, 'recovery-key-file');
  if (env !== undefined && file !== undefined) {
    throw new UsageError('give at most one of --recovery-key-env VAR and --recovery-key-file FILE');
  }
  let text: string;
  if (env !== undefined) {
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(env)) {
      throw new UsageError('--recovery-key-env must name an environment variable (letters, digits, _)');
    }
    const v = process.env[env];
    if (v === undefined || v === '') {
      throw new RefusedError('RECOVERY_KEY_INVALID', `environment variable ${env} is not set`);
    }
    text = v;
  } else if (file !== undefined) {
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new RefusedError(
        'RECOVERY_KEY_INVALID',
        `the recovery key file ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
      );
    }
  } else {
    return undefined;
  }
  return parseRecoveryKey(text);
}

/** What opens an archive, and the PKCS#11 token if one was opened (a restore's target too). */
async function keySource(
  values: Values,
  pkcs11: () => Pkcs11KmsSetting | { provider: 'local' },
  dataDirKms: string | undefined,
): Promise<{ source: ArchiveKeySource; token?: { kms: Kms; setting: Pkcs11KmsSetting }; opened: Kms[] }> {
  const recoveryKey = recoveryKeyOf(values);
  const keyFile = str(values, 'kms-key-file');
  const choice = pkcs11();
  const opened: Kms[] = [];
  try {
    if (keyFile !== undefined && choice.provider === 'pkcs11') {
      throw new UsageError('give at most one of --kms-key-file FILE and --kms pkcs11');
    }
    if (keyFile !== undefined && recoveryKey !== undefined) {
      throw new UsageError('give either --kms-key-file FILE or a recovery key, not both');
    }
    let token: { kms: Kms; setting: Pkcs11KmsSetting } | undefined;
    if (choice.provider === 'pkcs11') {
      const kms = await Pkcs11Kms.open({
        module: choice.module,
        tokenLabel: choice.tokenLabel,
        pin: choice.pin,
      });
      opened.push(kms);
      token = { kms, setting: choice };
    }
    let kms: Kms | undefined = token?.kms;
    if (keyFile !== undefined) {
      kms = await LocalKms.open(resolve(keyFile));
      opened.push(kms);
    }
    if (kms === undefined && recoveryKey === undefined) {
      if (dataDirKms === undefined) {
        throw new UsageError(
          'give the archive key: --kms-key-file FILE, --kms pkcs11 ..., --recovery-key-env VAR or --recovery-key-file FILE',
        );
      }
      kms = await openDataDirKms(resolve(dataDirKms));
      opened.push(kms);
    }
    return {
      source: { ...(kms ? { kms } : {}), ...(recoveryKey ? { recoveryKey } : {}) },
      ...(token ? { token } : {}),
      opened,
    };
  } catch (err) {
    recoveryKey?.fill(0);
    for (const k of opened) await k.close().catch(() => undefined);
    throw err;
  }
}

// ---------------------------------------------------------------- streaming from the server

interface Received {
  readonly archiveId: string;
  readonly bytes: number;
}

/** Asks the running server for an archive and writes it to `out` (0600, temp file then link). */
function fetchArchive(
  dataDir: string,
  body: AdminArchiveRequestJson,
  out: string,
  onProgress: (done: number, total: number) => void,
): Promise<Received> {
  const socketPath = join(resolve(dataDir), ADMIN_SOCKET_FILE);
  const payload = JSON.stringify(body);
  const tmp = join(dirname(out), `.${basename(out)}.${process.pid}-${Date.now()}.tmp`);
  return new Promise<Received>((resolvePromise, reject) => {
    let fd: number | undefined;
    let settled = false;
    const fail = (err: unknown) => {
      if (settled) return;
      settled = true;
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
      rmSync(tmp, { force: true });
      reject(err);
    };
    const req = request(
      {
        socketPath,
        agent: false,
        method: 'POST',
        path: '/admin/archive',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        if ((res.statusCode ?? 500) >= 400) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => {
            if (chunks.reduce((n, b) => n + b.length, 0) < 64 * 1024) chunks.push(c);
          });
          res.on('end', () => {
            let e: ReturnType<typeof ErrorResponse.safeParse> | undefined;
            try {
              e = ErrorResponse.safeParse(JSON.parse(Buffer.concat(chunks).toString('utf8')));
            } catch {
              e = undefined;
            }
            fail(
              e?.success
                ? new RefusedError(e.data.error.code, e.data.error.message)
                : new RefusedError('INTERNAL', `the server answered with status ${res.statusCode}`),
            );
          });
          return;
        }
        const total = Number(res.headers['content-length']);
        const archiveId = String(res.headers['x-qalqon-archive-id'] ?? '');
        if (!Number.isSafeInteger(total) || total <= 0 || !/^[0-9a-f]{32}$/.test(archiveId)) {
          res.destroy();
          fail(new RefusedError('INTERNAL', 'the server sent an archive without its length or id'));
          return;
        }
        try {
          fd = openSync(tmp, 'wx', 0o600);
        } catch (err) {
          res.destroy();
          fail(err);
          return;
        }
        let received = 0;
        onProgress(0, total);
        res.on('data', (c: Buffer) => {
          if (settled || fd === undefined) return;
          received += c.length;
          if (received > total) {
            res.destroy();
            fail(new RefusedError('INTERNAL', 'the server sent more than the archive length it announced'));
            return;
          }
          try {
            let off = 0;
            while (off < c.length) off += writeSync(fd, c, off, c.length - off);
          } catch (err) {
            res.destroy();
            fail(err);
            return;
          }
          onProgress(received, total);
        });
        res.on('aborted', () =>
          fail(new RefusedError('INTERNAL', 'the server stopped sending the archive; nothing was written')),
        );
        res.on('error', () =>
          fail(new RefusedError('INTERNAL', 'the server stopped sending the archive; nothing was written')),
        );
        res.on('end', () => {
          if (settled || fd === undefined) return;
          if (received !== total) {
            fail(
              new RefusedError(
                'INTERNAL',
                `the server sent ${received} of ${total} archive bytes; nothing was written`,
              ),
            );
            return;
          }
          try {
            fsyncSync(fd);
            closeSync(fd);
            fd = undefined;
            // link() refuses to replace a file that appeared meanwhile.
            linkSync(tmp, out);
            rmSync(tmp, { force: true });
          } catch (err) {
            fail(
              (err as NodeJS.ErrnoException).code === 'EEXIST'
                ? new RefusedError('BAD_REQUEST', `${out} already exists`)
                : err,
            );
            return;
          }
          settled = true;
          resolvePromise({ archiveId, bytes: received });
        });
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        fail(
          new RefusedError(
            'NOT_RUNNING',
            `no server is running on ${resolve(dataDir)} (start it with: qalqon server start --data ${dataDir})`,
          ),
        );
      } else if (err.code === 'EACCES') {
        fail(
          new RefusedError('FORBIDDEN', `the admin socket in ${resolve(dataDir)} belongs to another user`),
        );
      } else {
        fail(new RefusedError('INTERNAL', `the admin socket could not be reached (${err.code ?? 'error'})`));
      }
    });
    req.end(payload);
  });
}

// ---------------------------------------------------------------- commands

function checkOptions(sub: string, values: Values): void {
  const allowed = ALLOWED[sub]!;
  for (const [k, v] of Object.entries(values)) {
    if (v !== undefined && !allowed.includes(k))
      throw new UsageError(`--${k} does not apply to "admin ${sub}"`);
  }
}

function needString(values: Values, name: string, sub: string): string {
  const v = str(values, name);
  if (v === undefined || v === '') throw new UsageError(`"admin ${sub}" needs --${name} FILE`);
  return v;
}

/**
 * Runs `qalqon admin backup|export|restore|export-read ...`. `kmsChoice` reads --kms and the
 * --pkcs11-* options as `server init` does.
 */
export async function backupCommand(
  io: CliIo,
  values: Values,
  rest: string[],
  kmsChoice: () => Pkcs11KmsSetting | { provider: 'local' },
): Promise<number> {
  const [sub, ...args] = rest;
  if (sub === undefined || !BACKUP_COMMANDS.has(sub))
    throw new UsageError(`unknown command "admin ${sub ?? ''}"`);
  checkOptions(sub, values);
  const json = values.json === true;
  try {
    switch (sub) {
      case 'backup':
      case 'export':
        return await archiveCommand(io, sub, values, args, json);
      case 'restore':
        return await restoreCommand(io, values, args, json, kmsChoice);
      default:
        return await exportReadCommand(io, values, args, json, kmsChoice);
    }
  } catch (err) {
    // The server's codes name what went wrong with an archive: keep them in the message.
    if (isServerError(err)) throw new RefusedError(err.code, err.message);
    throw err;
  }
}

async function archiveCommand(
  io: CliIo,
  sub: 'backup' | 'export',
  values: Values,
  args: string[],
  json: boolean,
): Promise<number> {
  const data = needString(values, 'data', sub);
  const out = resolve(needString(values, 'out', sub));
  let parts: (typeof EXPORT_PART_NAMES)[number][] = [...EXPORT_PART_NAMES];
  if (sub === 'backup') {
    if (args.length > 0) throw new UsageError('expected no arguments after "admin backup"');
  } else if (args.length > 0) {
    for (const a of args) {
      if (!(EXPORT_PART_NAMES as readonly string[]).includes(a)) {
        throw new UsageError(`unknown export part "${a}"; the parts are ${EXPORT_PART_NAMES.join(', ')}`);
      }
    }
    parts = EXPORT_PART_NAMES.filter((p) => args.includes(p));
  }
  if (existsSync(out)) throw new RefusedError('BAD_REQUEST', `${out} already exists; choose a new file`);
  const recovery = values['recovery-key'] === true ? newRecoveryKey() : undefined;
  const recoveryB64 = recovery ? Buffer.from(recovery).toString('base64') : undefined;
  const body: AdminArchiveRequestJson =
    sub === 'backup'
      ? { kind: 'backup', ...(recoveryB64 ? { recoveryKey: recoveryB64 } : {}) }
      : { kind: 'export', parts, ...(recoveryB64 ? { recoveryKey: recoveryB64 } : {}) };
  const progress = progressLine(io);
  let got: Received;
  let recoveryText: string | undefined;
  try {
    got = await fetchArchive(data, body, out, (d, t) => progress.update(sub, d, t));
    recoveryText = recovery ? formatRecoveryKey(recovery) : undefined;
  } finally {
    progress.done();
    recovery?.fill(0);
  }
  if (json) {
    io.stdout(
      `${JSON.stringify({
        kind: sub,
        out,
        archiveId: got.archiveId,
        bytes: got.bytes,
        ...(sub === 'export' ? { parts } : {}),
        ...(recoveryText ? { recoveryKey: recoveryText } : {}),
      })}\n`,
    );
  } else {
    io.stdout(
      `${sub === 'backup' ? 'Backup' : `Export (${parts.join(', ')})`} written to ${out}: ${got.bytes} bytes, archive ${got.archiveId}.\n` +
        (recoveryText
          ? `Recovery key (shown only now; it opens this archive without the KMS, so keep it offline and apart from the archive):\n  ${recoveryText}\n`
          : ''),
    );
  }
  return EXIT_OK;
}

async function restoreCommand(
  io: CliIo,
  values: Values,
  args: string[],
  json: boolean,
  kmsChoice: () => Pkcs11KmsSetting | { provider: 'local' },
): Promise<number> {
  if (args.length > 0) throw new UsageError('expected no arguments after "admin restore"');
  const data = resolve(needString(values, 'data', 'restore'));
  const archive = needString(values, 'in', 'restore');
  // Refused before any key is opened or any byte read.
  checkRestoreTarget(data);
  const { source, token, opened } = await keySource(values, kmsChoice, undefined);
  const progress = progressLine(io);
  try {
    const r = await restoreBackup({
      archive,
      dataDir: data,
      source,
      target: token ? { provider: 'pkcs11', kms: token.kms, setting: token.setting } : { provider: 'local' },
      onProgress: (phase, d, t) => progress.update(phase === 'verify' ? 'verifying' : 'restoring', d, t),
    });
    progress.done();
    if (json) {
      io.stdout(
        `${JSON.stringify({
          dataDir: r.dataDir,
          archiveId: r.archiveId,
          sourceHostname: r.sourceHostname,
          createdAt: r.createdAt,
          keySource: r.keySource,
          users: r.users,
          pin: r.pin,
          kms: { provider: r.kms.provider, location: r.kms.location, activeKeyId: r.kms.activeKeyId },
        })}\n`,
      );
    } else {
      io.stdout(
        `Restored archive ${r.archiveId} (from ${r.sourceHostname}, made ${new Date(r.createdAt).toISOString()}) into ${r.dataDir}: ${r.users} user(s).\n` +
          `KMS: ${r.kms.provider} at ${r.kms.location}, key-encryption key ${r.kms.activeKeyId}\n` +
          `TLS certificate pin: ${r.pin}\n` +
          `Start it with: qalqon server start --data ${r.dataDir}\n`,
      );
    }
    return EXIT_OK;
  } finally {
    progress.done();
    source.recoveryKey?.fill(0);
    for (const k of opened) await k.close().catch(() => undefined);
  }
}

async function exportReadCommand(
  io: CliIo,
  values: Values,
  args: string[],
  json: boolean,
  kmsChoice: () => Pkcs11KmsSetting | { provider: 'local' },
): Promise<number> {
  if (args.length > 0) throw new UsageError('expected no arguments after "admin export-read"');
  const archive = needString(values, 'in', 'export-read');
  const data = str(values, 'data');
  const { source, opened } = await keySource(values, kmsChoice, data === '' ? undefined : data);
  const progress = progressLine(io);
  try {
    const r = await readExport(archive, source, (d, t) => progress.update('reading', d, t));
    progress.done();
    io.stdout(`${json ? JSON.stringify(r.document) : JSON.stringify(r.document, null, 2)}\n`);
    return EXIT_OK;
  } finally {
    progress.done();
    source.recoveryKey?.fill(0);
    for (const k of opened) await k.close().catch(() => undefined);
  }
}
