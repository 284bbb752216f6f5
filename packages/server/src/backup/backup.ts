/**
 * Backups of a running server (embedded SQLCipher backend), taken by the server itself and
 * streamed to the CLI over the admin socket.
 *
 * The database snapshot is SQLite's `VACUUM INTO`, run on a second, read-only connection in
 * a worker thread: it reads one consistent snapshot (one read transaction, WAL included)
 * while the server keeps committing, and does not block the server's event loop.
 * SQLite3MultipleCiphers writes the copy encrypted with the source's cipher scheme and key
 * (checked: the copy opens with the database DEK and not without it), so no unencrypted
 * copy ever reaches the disk; the copy is a 0600 file in the data directory, removed once
 * streamed.
 *
 * File contents are not in the database but in `files/` (storage/file-blobs.ts): one blob
 * per file, append-only below the file's `received`. For every file row in the snapshot,
 * the backup carries bytes [0, stored length of its `received`) of its blob, which are
 * exactly what the snapshot's row says is there even while uploads go on. Deletions are
 * the one race: right after the snapshot, every such blob is hard-linked into a private
 * staging directory beside the snapshot (a link keeps the bytes however long the copy
 * takes, without copying them and without holding back the server's deletions or uploads).
 * A blob already gone by then belongs to a file deleted after the snapshot (ids are never
 * reused; the row goes before its blob), whose row is then also deleted from the snapshot
 * copy: the archive is the snapshot with that later deletion applied, still consistent. A
 * blob missing while its row still exists in the live database was lost on disk: the row
 * stays and nothing is carried for it, so the restore has the same unreadable file.
 *
 * Payload entries, in order: `manifest.json`, `data-keys.json` (the raw data keys, so a
 * restore can wrap them under its own KMS), `file-keys.json` (each file's data key, which
 * the database holds only wrapped by this server's KMS under `file:<id>`: read from the
 * snapshot and unwrapped, so a restore onto another KMS re-wraps them and the files open),
 * `config.json`, `tls-cert.pem`, `tls-key.pem` (clients' pins survive a restore),
 * `qalqon.db`, then one `file.<id>` per file with stored contents, by id (its blob's
 * sealed chunks, as they are on disk: still encrypted under the file's data key).
 */
import {
  closeSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { randomBytes } from '@qalqon/crypto';
import Database from 'better-sqlite3-multiple-ciphers';
import { isServerError, ServerError } from '../errors.js';
import { DEK_FILE, DekRegistry } from '../kms/dek-registry.js';
import type { Kms } from '../kms/kms.js';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../secure-file.js';
import { CONFIG_FILE, readConfig } from '../service/data-dir.js';
import { DATABASE_DEK, DATABASE_FILE } from '../storage/embedded.js';
import { FILES_DIR, storedLength } from '../storage/file-blobs.js';
import { openSqlcipher } from '../storage/sqlcipher.js';
import { type NewArchive, newArchive } from './archive.js';
import { type PayloadEntry, payloadBytes, payloadLength } from './payload.js';

export const BACKUP_MANIFEST_FORMAT = 'qalqon-backup';
export const BACKUP_MANIFEST_VERSION = 1;
/** Payload entry names. */
export const BACKUP_ENTRIES = {
  manifest: 'manifest.json',
  dataKeys: 'data-keys.json',
  fileKeys: 'file-keys.json',
  config: 'config.json',
  tlsCert: 'tls-cert.pem',
  tlsKey: 'tls-key.pem',
  database: 'qalqon.db',
} as const;
/** The payload entry of a file's contents: `file.<id>`. */
export const FILE_ENTRY_PREFIX = 'file.';
export const FILE_ENTRY_PATTERN = /^file\.([0-9a-f]{32})$/;
/** The snapshot's temporary name in the data directory; leftovers of a crash are removed by the next backup. */
const SNAPSHOT_PREFIX = '.backup-snapshot-';

export interface BackupManifest {
  readonly format: typeof BACKUP_MANIFEST_FORMAT;
  readonly version: typeof BACKUP_MANIFEST_VERSION;
  readonly hostname: string;
  readonly createdAt: number;
  readonly database: 'embedded';
  readonly dataKeys: readonly string[];
  /** How many files' keys `file-keys.json` carries. */
  readonly files: number;
  /** How many `file.<id>` entries (file contents) follow the database. */
  readonly fileContents: number;
}

/** The file keys as the payload carries them: file id to raw key (base64). */
export interface RawFileKeysJson {
  readonly keys: Record<string, string>;
}

/** The KMS context a file's data key is wrapped under (files/file-store.ts). */
export function fileKeyContextOf(fileId: string): string {
  return `file:${fileId}`;
}

/** Opens an SQLCipher file read-only with its raw key, changing nothing in it. */
export function openEncryptedReadonly(path: string, key: Uint8Array): Database.Database {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    db.pragma(`cipher='sqlcipher'`);
    db.pragma('legacy=4');
    db.pragma(`key="x'${Buffer.from(key).toString('hex')}'"`);
    db.pragma('temp_store=MEMORY');
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    return db;
  } catch (err) {
    db.close();
    throw new ServerError('DATABASE_UNREADABLE', `database ${path} cannot be opened with its data key`, {
      cause: err,
    });
  }
}

/** A file row as a backup sees it. */
export interface SnapshotFile {
  readonly id: string;
  readonly keyId: string;
  readonly wrapped: Uint8Array;
  readonly chunkSize: number;
  readonly received: number;
}

/** The files in a database, by id, with their wrapped keys (none before the files table existed). */
export function wrappedFileKeys(db: Database.Database): SnapshotFile[] {
  const t = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").get();
  if (t === undefined) return [];
  return (
    db.prepare('SELECT id, key_id, wrapped_key, chunk_size, received FROM files ORDER BY id').all() as {
      id: string;
      key_id: string;
      wrapped_key: Uint8Array;
      chunk_size: number;
      received: number;
    }[]
  ).map((r) => ({
    id: r.id,
    keyId: r.key_id,
    wrapped: new Uint8Array(r.wrapped_key),
    chunkSize: r.chunk_size,
    received: r.received,
  }));
}

/** The raw data keys as the payload carries them (inside the encrypted archive only). */
export interface RawDataKeysJson {
  readonly keys: Record<string, { readonly key: string; readonly createdAt: number }>;
}

/** An archive ready to stream: its length is known before the first byte. */
export interface PreparedArchive {
  readonly archiveId: string;
  readonly kind: 'backup' | 'export';
  readonly totalBytes: number;
  /** What it holds, for the audit record (no secrets). */
  readonly what: string;
  /** Header then sealed segments. Cleans up (temporary files, keys) when done or abandoned. */
  chunks(): AsyncGenerator<Uint8Array>;
  /** Releases everything if `chunks` is never run to its end. Idempotent. */
  dispose(): void;
}

const SNAPSHOT_WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const Database = require(workerData.module);
let db;
try {
  db = new Database(workerData.path, { readonly: true, fileMustExist: true });
  db.pragma("cipher='sqlcipher'");
  db.pragma('legacy=4');
  db.pragma('key="x\\'' + Buffer.from(workerData.key).toString('hex') + '\\'"');
  new Uint8Array(workerData.key.buffer, workerData.key.byteOffset, workerData.key.byteLength).fill(0);
  db.pragma('temp_store=MEMORY');
  db.pragma('busy_timeout=10000');
  db.prepare('VACUUM INTO ?').run(workerData.out);
  parentPort.postMessage({ ok: true });
} catch (e) {
  parentPort.postMessage({ ok: false, code: String(e && e.code || 'error') });
} finally {
  if (db) db.close();
}
`;

/**
 * Writes a consistent, still encrypted copy of the database at `dbPath` (keyed with
 * `databaseKey`) to `out`, which must not exist; made 0600 before SQLite writes a byte.
 */
export async function snapshotDatabase(dbPath: string, databaseKey: Uint8Array, out: string): Promise<void> {
  closeSync(openSync(out, 'wx', PRIVATE_FILE_MODE));
  const module = createRequire(import.meta.url).resolve('better-sqlite3-multiple-ciphers');
  // A copy of the key goes to the worker, which zeroes it once the connection holds it.
  const key = new Uint8Array(databaseKey);
  const result = await new Promise<{ ok: boolean; code?: string }>((resolve, reject) => {
    const w = new Worker(SNAPSHOT_WORKER, { eval: true, workerData: { module, path: dbPath, key, out } });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => resolve({ ok: false, code: `worker exit ${code}` }));
  });
  key.fill(0);
  if (!result.ok) {
    rmSync(out, { force: true });
    throw new ServerError('DATABASE_FAILED', `the database snapshot failed (${result.code ?? 'error'})`);
  }
}

/** The first `size` bytes of the file at `path` (all of it by default). */
function fileEntry(name: string, path: string, size = statSync(path).size): PayloadEntry {
  return {
    name,
    size,
    async *chunks() {
      const fh = await open(path, 'r');
      try {
        const buf = new Uint8Array(1024 * 1024);
        let position = 0;
        while (position < size) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - position), position);
          if (bytesRead === 0) return;
          position += bytesRead;
          yield buf.slice(0, bytesRead);
        }
      } finally {
        await fh.close();
      }
    },
  };
}

function bytesEntry(name: string, bytes: Uint8Array): PayloadEntry {
  return { name, size: bytes.length, chunks: () => [bytes] };
}

/** Removes snapshot files and link directories a crashed backup left behind (backups run one at a time). */
function removeLeftovers(dataDir: string): void {
  for (const f of readdirSync(dataDir)) {
    if (f.startsWith(SNAPSHOT_PREFIX)) rmSync(join(dataDir, f), { recursive: true, force: true });
  }
}

/**
 * Hard-links the blob of every file of the snapshot that has stored contents into
 * `linkDir`, and settles the files whose blob is gone (see the header): those deleted
 * since the snapshot leave the snapshot copy too. Returns the payload entries, by id.
 */
function linkFileContents(
  dataDir: string,
  snapshot: string,
  databaseKey: Uint8Array,
  linkDir: string,
  files: readonly SnapshotFile[],
): { entries: PayloadEntry[]; deleted: Set<string> } {
  mkdirSync(linkDir, { mode: PRIVATE_DIR_MODE });
  const entries: PayloadEntry[] = [];
  const missing: string[] = [];
  for (const f of files) {
    if (f.received === 0) continue;
    const link = join(linkDir, f.id);
    try {
      linkSync(join(dataDir, FILES_DIR, f.id), link);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      missing.push(f.id);
      continue;
    }
    // A blob cut short on disk is carried as it is (the restore reads it as corrupt, as here).
    const size = Math.min(storedLength(f), lstatSync(link).size);
    if (size > 0) entries.push(fileEntry(`${FILE_ENTRY_PREFIX}${f.id}`, link, size));
  }
  const deleted = new Set<string>();
  if (missing.length > 0) {
    const live = openEncryptedReadonly(join(dataDir, DATABASE_FILE), databaseKey);
    try {
      const exists = live.prepare('SELECT 1 FROM files WHERE id = ?').pluck();
      for (const id of missing) if (exists.get(id) === undefined) deleted.add(id);
    } finally {
      live.close();
    }
  }
  if (deleted.size > 0) {
    const snap = openSqlcipher(snapshot, databaseKey);
    try {
      const del = snap.prepare('DELETE FROM files WHERE id = ?');
      snap.transaction(() => {
        for (const id of deleted) del.run(id);
      })();
      // Back to one self-contained file: the copy is streamed as it is on disk.
      snap.pragma('wal_checkpoint(TRUNCATE)');
    } finally {
      snap.close();
    }
  }
  return { entries, deleted };
}

export interface BackupOptions {
  readonly dataDir: string;
  readonly kms: Kms;
  readonly recoveryKey?: Uint8Array;
  readonly segmentSize?: number;
  readonly clock?: () => number;
  /**
   * Called once the database snapshot is taken, before the file contents are linked
   * (tests delete a file there, as a client could at that moment).
   */
  readonly afterSnapshot?: () => Promise<void> | void;
}

/**
 * Takes the snapshot and prepares the archive. The caller streams `chunks()`; only one
 * backup may run at a time per data directory (the admin socket serialises them).
 */
export async function prepareBackup(options: BackupOptions): Promise<PreparedArchive> {
  const { dataDir, kms } = options;
  const clock = options.clock ?? Date.now;
  const config = readConfig(dataDir);
  if (config.databaseSetting.provider !== 'embedded') {
    throw new ServerError(
      'BACKUP_UNSUPPORTED',
      'backup covers the embedded database only; for PostgreSQL use pg_dump (or a base backup) ' +
        'and keep the KMS (its key file or token) apart: the data_keys table is wrapped by it',
    );
  }
  removeLeftovers(dataDir);
  const registry = await DekRegistry.open(join(dataDir, DEK_FILE), kms, clock);
  const keys: Record<string, { key: string; createdAt: number }> = {};
  const raw: Uint8Array[] = [];
  let snapshot: string | undefined;
  let linkDir: string | undefined;
  let archive: NewArchive | undefined;
  let dataKeysBytes: Uint8Array | undefined;
  let fileKeysBytes: Uint8Array | undefined;
  let disposed = false;
  const dispose = () => {
    if (disposed) return;
    disposed = true;
    for (const k of raw) k.fill(0);
    dataKeysBytes?.fill(0);
    fileKeysBytes?.fill(0);
    archive?.destroy();
    if (snapshot !== undefined) {
      rmSync(snapshot, { force: true });
      rmSync(`${snapshot}-wal`, { force: true });
      rmSync(`${snapshot}-shm`, { force: true });
    }
    if (linkDir !== undefined) rmSync(linkDir, { recursive: true, force: true });
  };
  try {
    const infos = registry.list().sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const info of infos) {
      const k = await registry.get(info.name);
      raw.push(k);
      keys[info.name] = { key: Buffer.from(k).toString('base64'), createdAt: info.createdAt };
    }
    const databaseKey = raw[infos.findIndex((i) => i.name === DATABASE_DEK)];
    if (!databaseKey) throw new ServerError('DEK_NOT_FOUND', 'the data directory has no database key');
    const base = join(dataDir, `${SNAPSHOT_PREFIX}${Buffer.from(randomBytes(8)).toString('hex')}`);
    snapshot = `${base}.db`;
    await snapshotDatabase(join(dataDir, DATABASE_FILE), databaseKey, snapshot);
    await options.afterSnapshot?.();
    dataKeysBytes = new TextEncoder().encode(JSON.stringify({ keys } satisfies RawDataKeysJson));
    // Every file's key, from the snapshot itself, so the keys match the copied rows exactly.
    const snap = openEncryptedReadonly(snapshot, databaseKey);
    let snapshotFiles: SnapshotFile[];
    try {
      snapshotFiles = wrappedFileKeys(snap);
    } finally {
      snap.close();
    }
    linkDir = `${base}.files`;
    const contents = linkFileContents(dataDir, snapshot, databaseKey, linkDir, snapshotFiles);
    const wrappedFiles = snapshotFiles.filter((f) => !contents.deleted.has(f.id));
    const fileKeys: Record<string, string> = {};
    for (const f of wrappedFiles) {
      let k: Uint8Array;
      try {
        k = await kms.unwrap({ keyId: f.keyId, context: fileKeyContextOf(f.id), ciphertext: f.wrapped });
      } catch (err) {
        // A key that does not unwrap here never will: that file is unreadable already, and
        // stays so after a restore (its row keeps the old wrap). The rest is backed up.
        if (isServerError(err, 'KMS_UNWRAP_FAILED') || isServerError(err, 'KMS_KEY_NOT_FOUND')) continue;
        throw err;
      }
      fileKeys[f.id] = Buffer.from(k).toString('base64');
      k.fill(0);
    }
    fileKeysBytes = new TextEncoder().encode(JSON.stringify({ keys: fileKeys } satisfies RawFileKeysJson));
    const createdAt = clock();
    const manifest: BackupManifest = {
      format: BACKUP_MANIFEST_FORMAT,
      version: BACKUP_MANIFEST_VERSION,
      hostname: config.hostname,
      createdAt,
      database: 'embedded',
      dataKeys: infos.map((i) => i.name),
      files: Object.keys(fileKeys).length,
      fileContents: contents.entries.length,
    };
    const entries: PayloadEntry[] = [
      bytesEntry(BACKUP_ENTRIES.manifest, new TextEncoder().encode(JSON.stringify(manifest))),
      bytesEntry(BACKUP_ENTRIES.dataKeys, dataKeysBytes),
      bytesEntry(BACKUP_ENTRIES.fileKeys, fileKeysBytes),
      bytesEntry(BACKUP_ENTRIES.config, readFileSync(join(dataDir, CONFIG_FILE))),
      bytesEntry(BACKUP_ENTRIES.tlsCert, readFileSync(config.paths.cert)),
      bytesEntry(BACKUP_ENTRIES.tlsKey, readFileSync(config.paths.key)),
      fileEntry(BACKUP_ENTRIES.database, snapshot),
      ...contents.entries,
    ];
    archive = await newArchive({
      kind: 'backup',
      hostname: config.hostname,
      payloadBytes: payloadLength(entries),
      kms,
      clock: () => createdAt,
      ...(options.recoveryKey ? { recoveryKey: options.recoveryKey } : {}),
      ...(options.segmentSize ? { segmentSize: options.segmentSize } : {}),
    });
    const a = archive;
    return {
      archiveId: a.header.archiveId,
      kind: 'backup',
      totalBytes: a.totalBytes,
      what: 'database,data-keys,file-keys,file-contents,config,tls',
      async *chunks() {
        try {
          yield a.headerBytes;
          yield* a.seal(payloadBytes(entries));
        } finally {
          dispose();
        }
      },
      dispose,
    };
  } catch (err) {
    dispose();
    throw err;
  }
}
