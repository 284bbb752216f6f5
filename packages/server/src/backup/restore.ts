/**
 * Restore of a backup archive into a new data directory, offline (no server running on it),
 * in the CLI's process.
 *
 * 1. The target must be absent or an empty directory (RESTORE_TARGET_NOT_EMPTY otherwise).
 * 2. Verify: the header and the file's length are checked, the archive key is unwrapped (by
 *    the KMS that made it, or the recovery key), and every segment is decrypted and
 *    authenticated and the payload's structure checked, writing nothing at all.
 * 3. Write, decrypting again (each segment authenticated again: the file could have changed
 *    in between) into a private staging directory beside the target: the database file as it
 *    was (still encrypted under its own data key), the data keys wrapped under the target's
 *    KMS (a new local key file, or the PKCS#11 token given), every file's data key wrapped
 *    again under that KMS in the restored `files` rows, the TLS certificate and key (so
 *    clients' pins hold), and config.json (the source's, with the new KMS and the TLS files
 *    in the directory), and each file's contents into `files/<id>` (0600, as they were: still
 *    sealed under the file's data key, which the restored row now wraps under the new KMS;
 *    every one must belong to a file row and be no longer than that row's `received` says).
 *    The restored database is opened with the new KMS and a `restore`
 *    audit record appended; then the staging directory is renamed onto the target. Any
 *    failure removes the staging directory: the target is left as it was.
 */
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { AES256_KEY_LEN, randomBytes } from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { DEK_FILE } from '../kms/dek-registry.js';
import type { Kms, KmsDescription } from '../kms/kms.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { fsyncDir, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, writePrivateFileAtomic } from '../secure-file.js';
import {
  CONFIG_FILE,
  loadTls,
  type Pkcs11KmsSetting,
  readConfig,
  TLS_CERT_FILE,
  TLS_KEY_FILE,
} from '../service/data-dir.js';
import { DATABASE_DEK, DATABASE_FILE, openEmbeddedStorage } from '../storage/embedded.js';
import { FILES_DIR, storedLength } from '../storage/file-blobs.js';
import { openSqlcipher } from '../storage/sqlcipher.js';
import {
  type ArchiveFile,
  type ArchiveKeySource,
  openArchiveKey,
  openSegments,
  readArchiveHeader,
} from './archive.js';
import {
  BACKUP_ENTRIES,
  BACKUP_MANIFEST_FORMAT,
  BACKUP_MANIFEST_VERSION,
  type BackupManifest,
  FILE_ENTRY_PATTERN,
  fileKeyContextOf,
  type RawDataKeysJson,
  type RawFileKeysJson,
} from './backup.js';
import { PayloadReader, type PayloadSink } from './payload.js';

/** Every entry but the database and the file contents is small and read into memory. */
const MAX_SMALL_ENTRY = 16 * 1024 * 1024;
const ORDER = [
  BACKUP_ENTRIES.manifest,
  BACKUP_ENTRIES.dataKeys,
  BACKUP_ENTRIES.fileKeys,
  BACKUP_ENTRIES.config,
  BACKUP_ENTRIES.tlsCert,
  BACKUP_ENTRIES.tlsKey,
  BACKUP_ENTRIES.database,
] as const;

/** The new data directory's KMS: a fresh local key file, or an open PKCS#11 token. */
export type RestoreTargetKms =
  | { readonly provider: 'local' }
  | { readonly provider: 'pkcs11'; readonly kms: Kms; readonly setting: Pkcs11KmsSetting };

export interface RestoreOptions {
  readonly archive: string;
  readonly dataDir: string;
  readonly source: ArchiveKeySource;
  readonly target: RestoreTargetKms;
  /** Called as bytes are read: `verify` (first pass) then `restore` (second). */
  readonly onProgress?: (phase: 'verify' | 'restore', done: number, total: number) => void;
  readonly clock?: () => number;
}

export interface RestoreResult {
  readonly dataDir: string;
  readonly archiveId: string;
  readonly sourceHostname: string;
  readonly createdAt: number;
  readonly pin: string;
  readonly kms: KmsDescription;
  readonly users: number;
  readonly keySource: 'kms' | 'recovery-key';
}

function invalidPayload(why: string): ServerError {
  return new ServerError('ARCHIVE_INVALID', `the backup's payload is malformed: ${why}`);
}

/** Refuses a target that exists and is not an empty directory. */
export function checkRestoreTarget(dataDir: string): void {
  const st = lstatSync(dataDir, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isDirectory() || readdirSync(dataDir).length > 0) {
    throw new ServerError(
      'RESTORE_TARGET_NOT_EMPTY',
      `${dataDir} exists and is not an empty directory; restore only into a new (or empty) directory`,
    );
  }
}

/**
 * A sink checking the entries' order and sizes; with `dir`, small entries are kept in
 * memory, the database goes to `dir/qalqon.db` and each file's contents to `dir/files/<id>`.
 */
class BackupSink implements PayloadSink {
  readonly small = new Map<string, Uint8Array>();
  /** The ids of the `file.<id>` entries, in order. */
  readonly fileIds: string[] = [];
  #index = 0;
  #current: { name: string; parts: Uint8Array[] } | undefined;
  #fd: number | undefined;
  readonly #dir: string | undefined;

  constructor(dir?: string) {
    this.#dir = dir;
  }

  start(name: string, size: number): void {
    if (this.#index < ORDER.length) {
      if (name !== ORDER[this.#index]) throw invalidPayload(`unexpected entry ${name}`);
      this.#index++;
    } else {
      // After the database: file contents, by strictly increasing id.
      const id = FILE_ENTRY_PATTERN.exec(name)?.[1];
      const prev = this.fileIds[this.fileIds.length - 1];
      if (id === undefined || (prev !== undefined && id <= prev))
        throw invalidPayload(`unexpected entry ${name}`);
      this.fileIds.push(id);
      if (this.#dir !== undefined) {
        if (this.fileIds.length === 1) mkdirSync(join(this.#dir, FILES_DIR), { mode: PRIVATE_DIR_MODE });
        this.#fd = openSync(join(this.#dir, FILES_DIR, id), 'wx', PRIVATE_FILE_MODE);
      }
      this.#current = { name, parts: [] };
      return;
    }
    if (name === BACKUP_ENTRIES.database) {
      if (this.#dir !== undefined)
        this.#fd = openSync(join(this.#dir, DATABASE_FILE), 'wx', PRIVATE_FILE_MODE);
      this.#current = { name, parts: [] };
      return;
    }
    if (size > MAX_SMALL_ENTRY) throw invalidPayload(`entry ${name} is too large`);
    this.#current = { name, parts: [] };
  }

  #streamed(name: string): boolean {
    return name === BACKUP_ENTRIES.database || FILE_ENTRY_PATTERN.test(name);
  }

  data(chunk: Uint8Array): void {
    const c = this.#current!;
    if (this.#streamed(c.name)) {
      if (this.#fd !== undefined) {
        let off = 0;
        while (off < chunk.length) off += writeSync(this.#fd, chunk, off, chunk.length - off);
      }
      return;
    }
    c.parts.push(chunk.slice());
  }

  end(name: string): void {
    const c = this.#current!;
    this.#current = undefined;
    if (this.#streamed(name)) {
      if (this.#fd !== undefined) {
        fsyncSync(this.#fd);
        closeSync(this.#fd);
        this.#fd = undefined;
      }
      return;
    }
    this.small.set(name, Buffer.concat(c.parts));
    for (const p of c.parts) p.fill(0);
  }

  finish(): void {
    if (this.#index !== ORDER.length) throw invalidPayload('entries are missing');
    if (this.#dir !== undefined && this.fileIds.length > 0) fsyncDir(join(this.#dir, FILES_DIR));
  }

  abort(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
    this.wipe();
  }

  wipe(): void {
    for (const b of this.small.values()) b.fill(0);
  }
}

function pass(
  file: ArchiveFile,
  key: Uint8Array,
  sink: BackupSink,
  onProgress?: (done: number, total: number) => void,
): void {
  const reader = new PayloadReader(sink);
  for (const plain of openSegments(file, key, onProgress)) {
    reader.push(plain);
    plain.fill(0);
  }
  reader.close();
  sink.finish();
}

function parseJson(name: string, bytes: Uint8Array): Record<string, unknown> {
  try {
    const v = JSON.parse(Buffer.from(bytes).toString('utf8')) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw invalidPayload(`${name} is not a JSON object`);
}

function parseManifest(bytes: Uint8Array): BackupManifest {
  const m = parseJson(BACKUP_ENTRIES.manifest, bytes) as Partial<BackupManifest>;
  if (m.format !== BACKUP_MANIFEST_FORMAT || m.version !== BACKUP_MANIFEST_VERSION) {
    throw invalidPayload('the manifest has an unknown format or version');
  }
  if (m.database !== 'embedded') throw invalidPayload('the manifest names an unknown database');
  if (!Array.isArray(m.dataKeys) || !m.dataKeys.every((n) => typeof n === 'string')) {
    throw invalidPayload('the manifest lists no data keys');
  }
  if (!Number.isSafeInteger(m.files) || (m.files as number) < 0)
    throw invalidPayload('the manifest has no file count');
  if (!Number.isSafeInteger(m.fileContents) || (m.fileContents as number) < 0)
    throw invalidPayload('the manifest has no file contents count');
  return m as BackupManifest;
}

function parseRawKeys(
  bytes: Uint8Array,
  names: readonly string[],
): Map<string, { key: Uint8Array; createdAt: number }> {
  const j = parseJson(BACKUP_ENTRIES.dataKeys, bytes) as Partial<RawDataKeysJson>;
  const out = new Map<string, { key: Uint8Array; createdAt: number }>();
  if (typeof j.keys !== 'object' || j.keys === null) throw invalidPayload('data-keys.json has no keys');
  for (const [name, e] of Object.entries(j.keys)) {
    const key = typeof e?.key === 'string' ? new Uint8Array(Buffer.from(e.key, 'base64')) : undefined;
    if (!key || key.length !== AES256_KEY_LEN || !Number.isSafeInteger(e.createdAt)) {
      throw invalidPayload(`data key ${name} is malformed`);
    }
    out.set(name, { key, createdAt: e.createdAt });
  }
  const listed = [...names].sort().join(',');
  if ([...out.keys()].sort().join(',') !== listed || !out.has('database')) {
    throw invalidPayload('data-keys.json does not match the manifest');
  }
  return out;
}

function parseFileKeys(bytes: Uint8Array, count: number): Map<string, Uint8Array> {
  const j = parseJson(BACKUP_ENTRIES.fileKeys, bytes) as Partial<RawFileKeysJson>;
  if (typeof j.keys !== 'object' || j.keys === null) throw invalidPayload('file-keys.json has no keys');
  const out = new Map<string, Uint8Array>();
  for (const [id, k] of Object.entries(j.keys)) {
    const key = typeof k === 'string' ? new Uint8Array(Buffer.from(k, 'base64')) : undefined;
    if (!/^[0-9a-f]{32}$/.test(id) || !key || key.length !== AES256_KEY_LEN) {
      throw invalidPayload('file-keys.json holds a malformed key');
    }
    out.set(id, key);
  }
  if (out.size !== count) throw invalidPayload('file-keys.json does not match the manifest');
  return out;
}

/**
 * Re-wraps every file's data key under the target KMS (context `file:<id>`) in the restored
 * database, in one transaction.
 */
async function rewrapFileKeys(
  dbPath: string,
  databaseKey: Uint8Array,
  kms: Kms,
  keys: ReadonlyMap<string, Uint8Array>,
  contents: ReadonlyMap<string, number>,
): Promise<void> {
  if (contents.size > 0) {
    // Every file's contents belong to a file row, and are no longer than its `received` says.
    const db = openSqlcipher(dbPath, databaseKey);
    try {
      const row = db.prepare('SELECT chunk_size AS chunkSize, received FROM files WHERE id = ?');
      for (const [id, size] of contents) {
        const r = row.get(id) as { chunkSize: number; received: number } | undefined;
        if (!r || size > storedLength(r)) {
          throw invalidPayload(`the contents of file ${id} do not match the database`);
        }
      }
    } finally {
      db.close();
    }
  }
  if (keys.size === 0) return;
  const wrapped: { id: string; keyId: string; ciphertext: Uint8Array }[] = [];
  for (const [id, key] of keys) {
    const w = await kms.wrap(key, fileKeyContextOf(id));
    wrapped.push({ id, keyId: w.keyId, ciphertext: w.ciphertext });
  }
  const db = openSqlcipher(dbPath, databaseKey);
  try {
    const update = db.prepare('UPDATE files SET key_id = ?, wrapped_key = ? WHERE id = ?');
    db.transaction(() => {
      for (const w of wrapped) {
        if (update.run(w.keyId, w.ciphertext, w.id).changes !== 1) {
          throw invalidPayload(`file-keys.json names file ${w.id}, which the database does not hold`);
        }
      }
    })();
  } finally {
    db.close();
  }
}

/** data-keys.json in DekRegistry's format: each key wrapped by `kms` with context `dek:<name>`. */
async function writeWrappedKeys(
  path: string,
  kms: Kms,
  keys: ReadonlyMap<string, { key: Uint8Array; createdAt: number }>,
): Promise<void> {
  const json: { format: string; version: number; keys: Record<string, unknown> } = {
    format: 'qalqon-data-keys',
    version: 1,
    keys: {},
  };
  for (const name of [...keys.keys()].sort()) {
    const e = keys.get(name)!;
    const w = await kms.wrap(e.key, `dek:${name}`);
    json.keys[name] = {
      keyId: w.keyId,
      createdAt: e.createdAt,
      ciphertext: Buffer.from(w.ciphertext).toString('base64'),
    };
  }
  writePrivateFileAtomic(path, new TextEncoder().encode(`${JSON.stringify(json, null, 2)}\n`), {
    exclusive: true,
  });
}

export async function restoreBackup(options: RestoreOptions): Promise<RestoreResult> {
  const dataDir = resolve(options.dataDir);
  const clock = options.clock ?? Date.now;
  checkRestoreTarget(dataDir);

  const file = readArchiveHeader(options.archive);
  if (file.header.kind !== 'backup') {
    throw new ServerError('ARCHIVE_INVALID', `this archive is an ${file.header.kind}, not a backup`);
  }
  const keySource = options.source.recoveryKey !== undefined ? 'recovery-key' : 'kms';
  const key = await openArchiveKey(file, options.source);
  let staging: string | undefined;
  let localKms: LocalKms | undefined;
  const sink = new BackupSink();
  try {
    // Pass 1: authenticate everything, write nothing.
    pass(file, key, sink, (d, t) => options.onProgress?.('verify', d, t));
    sink.wipe();
    checkRestoreTarget(dataDir);

    // Pass 2: into a staging directory beside the target.
    const parent = dirname(dataDir);
    mkdirSync(parent, { recursive: true, mode: PRIVATE_DIR_MODE });
    staging = join(parent, `.${basename(dataDir)}.restore-${Buffer.from(randomBytes(6)).toString('hex')}`);
    mkdirSync(staging, { mode: PRIVATE_DIR_MODE });
    const writer = new BackupSink(staging);
    try {
      pass(file, key, writer, (d, t) => options.onProgress?.('restore', d, t));
    } catch (err) {
      writer.abort();
      throw err;
    }
    const manifest = parseManifest(writer.small.get(BACKUP_ENTRIES.manifest)!);
    const rawKeys = parseRawKeys(writer.small.get(BACKUP_ENTRIES.dataKeys)!, manifest.dataKeys);
    const fileKeys = parseFileKeys(writer.small.get(BACKUP_ENTRIES.fileKeys)!, manifest.files);
    if (writer.fileIds.length !== manifest.fileContents) {
      throw invalidPayload('the file contents do not match the manifest');
    }
    const contents = new Map(
      writer.fileIds.map((id) => [id, lstatSync(join(staging!, FILES_DIR, id)).size] as const),
    );
    let kms: Kms;
    let kmsSetting: Record<string, unknown>;
    try {
      if (options.target.provider === 'local') {
        localKms = await LocalKms.create(join(staging, LOCAL_KMS_FILE), clock);
        kms = localKms;
        kmsSetting = { provider: 'local', keyFile: LOCAL_KMS_FILE };
      } else {
        kms = options.target.kms;
        const { module, tokenLabel, pin } = options.target.setting;
        kmsSetting = { provider: 'pkcs11', module, tokenLabel, pin };
      }
      await writeWrappedKeys(join(staging, DEK_FILE), kms, rawKeys);
      await rewrapFileKeys(
        join(staging, DATABASE_FILE),
        rawKeys.get(DATABASE_DEK)!.key,
        kms,
        fileKeys,
        contents,
      );
    } finally {
      for (const e of rawKeys.values()) e.key.fill(0);
      for (const k of fileKeys.values()) k.fill(0);
    }
    writePrivateFileAtomic(join(staging, TLS_CERT_FILE), writer.small.get(BACKUP_ENTRIES.tlsCert)!, {
      exclusive: true,
    });
    writePrivateFileAtomic(join(staging, TLS_KEY_FILE), writer.small.get(BACKUP_ENTRIES.tlsKey)!, {
      exclusive: true,
    });
    const tls = loadTls({ cert: join(staging, TLS_CERT_FILE), key: join(staging, TLS_KEY_FILE) });
    const source = parseJson(BACKUP_ENTRIES.config, writer.small.get(BACKUP_ENTRIES.config)!);
    writer.wipe();

    // The restored database must open under the new KMS; its audit log records the restore.
    const storage = await openEmbeddedStorage({ dataDir: staging, kms, ...(options.clock ? { clock } : {}) });
    let users: number;
    try {
      users = (await storage.listUsers()).length;
      await storage.appendAudit({
        at: clock(),
        actor: { kind: 'operator' },
        action: 'restore',
        target: `archive:${file.header.archiveId}`,
        outcome: 'ok',
        detail: {
          archiveId: file.header.archiveId,
          sourceHostname: file.header.hostname,
          archiveCreatedAt: file.header.createdAt,
          keySource,
        },
      });
    } finally {
      await storage.close();
    }

    const config = {
      ...source,
      tls: { certFile: TLS_CERT_FILE, keyFile: TLS_KEY_FILE },
      kms: kmsSetting,
      database: { provider: 'embedded' },
    };
    writePrivateFileAtomic(
      join(staging, CONFIG_FILE),
      new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`),
      {
        exclusive: true,
      },
    );
    // The same checks a start makes, before the directory takes the target's place.
    readConfig(staging);
    const description = await kms.describe();

    checkRestoreTarget(dataDir);
    renameSync(staging, dataDir);
    staging = undefined;
    fsyncDir(parent);
    return {
      dataDir,
      archiveId: file.header.archiveId,
      sourceHostname: file.header.hostname,
      createdAt: file.header.createdAt,
      pin: tls.pin,
      kms:
        description.provider === 'local'
          ? { ...description, location: join(dataDir, LOCAL_KMS_FILE) }
          : description,
      users,
      keySource,
    };
  } finally {
    key.fill(0);
    sink.wipe();
    await localKms?.close();
    if (staging !== undefined) rmSync(staging, { recursive: true, force: true });
  }
}
