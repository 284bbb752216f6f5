/**
 * Wires the embedded backend to key custody: the data directory holds the SQLCipher file
 * and the wrapped-DEK file; the DEKs (database key, field key, lookup key, audit signing
 * key) are unwrapped by the KMS at start and exist only in memory. Without the KMS nothing
 * on disk opens.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AUDIT_SIGNING_DEK } from '../audit/chain.js';
import { DEK_FILE, DekRegistry } from '../kms/dek-registry.js';
import type { Kms } from '../kms/kms.js';
import { ensurePrivateDir } from '../secure-file.js';
import { astring } from '../validate.js';
import { FieldSealer } from './field-sealer.js';
import { SqliteStorage } from './sqlite.js';
import type { StorageLimits } from './types.js';

/** The database file's name inside the data directory. */
export const DATABASE_FILE = 'qalqon.db';
/** DEK names. The field key carries a generation so it can be rotated later without re-encrypting old rows. */
export const DATABASE_DEK = 'database';
export const FIELD_DEK_GENERATION = 1;
export const FIELD_DEK = `fields-${FIELD_DEK_GENERATION}`;
export const LOOKUP_DEK = 'lookup';

export interface EmbeddedStorageOptions {
  readonly dataDir: string;
  readonly kms: Kms;
  readonly limits?: Partial<StorageLimits>;
  readonly clock?: () => number;
  readonly synchronous?: 'FULL' | 'NORMAL';
}

/**
 * Opens the embedded storage in `dataDir`, creating the DEKs and the database on first use.
 * If the database exists, its DEKs must too (DEK_NOT_FOUND otherwise): a fresh key would
 * only fail to open it.
 */
export async function openEmbeddedStorage(options: EmbeddedStorageOptions): Promise<SqliteStorage> {
  const dataDir = astring('options.dataDir', options.dataDir, 1, 4096);
  ensurePrivateDir(dataDir);
  const dbPath = join(dataDir, DATABASE_FILE);
  const registry = await DekRegistry.open(join(dataDir, DEK_FILE), options.kms, options.clock);
  const existing = existsSync(dbPath);
  const key = (name: string) => (existing ? registry.get(name) : registry.getOrCreate(name));
  const databaseKey = await key(DATABASE_DEK);
  const fieldKey = await key(FIELD_DEK);
  const lookupKey = await key(LOOKUP_DEK);
  // Always getOrCreate: a data directory from before the audit log gets its key on first start.
  const auditKey = await registry.getOrCreate(AUDIT_SIGNING_DEK);
  const sealer = new FieldSealer(new Map([[FIELD_DEK_GENERATION, fieldKey]]), FIELD_DEK_GENERATION);
  try {
    return await SqliteStorage.open({
      path: dbPath,
      databaseKey,
      lookupKey,
      auditKey,
      sealer,
      ...(options.limits ? { limits: options.limits } : {}),
      ...(options.clock ? { clock: options.clock } : {}),
      ...(options.synchronous ? { synchronous: options.synchronous } : {}),
    });
  } catch (err) {
    sealer.destroy();
    throw err;
  } finally {
    // The storage and sealer keep their own copies; drop ours.
    databaseKey.fill(0);
    fieldKey.fill(0);
    lookupKey.fill(0);
    auditKey.fill(0);
  }
}
