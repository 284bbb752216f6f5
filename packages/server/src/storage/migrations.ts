/**
 * Versioned schema migrations for the embedded database. Each migration has a version
 * (1, 2, 3, ... without gaps) and runs once: inside one IMMEDIATE transaction that also
 * records it in `schema_migrations`, so a crash or an error leaves the schema at the
 * previous version, and two processes opening the same file never both apply one (the
 * second waits for the write lock, then sees the version recorded and skips it).
 * Migrations are append-only: a released migration is never edited; a change is a new one.
 */
import { ServerError } from '../errors.js';
import type { SqliteDatabase } from './sqlcipher.js';

export interface Migration {
  readonly version: number;
  readonly name: string;
  /** SQL to run (may hold several statements). */
  readonly sql: string;
}

export interface MigrationResult {
  readonly from: number;
  readonly to: number;
  readonly applied: readonly number[];
}

/** Throws INVALID_ARGUMENT unless the versions run 1, 2, 3, ... in order (every backend's runner checks this). */
export function checkList(migrations: readonly Migration[]): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) {
      throw new ServerError(
        'INVALID_ARGUMENT',
        `"migrations[${i}].version" expected ${i + 1}, got ${m.version}`,
      );
    }
  });
}

function currentVersion(db: SqliteDatabase): number {
  const row = db.prepare('SELECT max(version) AS v FROM schema_migrations').get() as { v: number | null };
  return row.v ?? 0;
}

/** Brings the database to the latest version in `migrations`. SCHEMA_TOO_NEW if it is ahead. */
export function migrate(
  db: SqliteDatabase,
  migrations: readonly Migration[],
  clock: () => number,
): MigrationResult {
  checkList(migrations);
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at INTEGER NOT NULL
  ) STRICT`);
  const latest = migrations.length;
  const from = currentVersion(db);
  if (from > latest) {
    throw new ServerError(
      'SCHEMA_TOO_NEW',
      `the database is at schema version ${from}, newer than this server's ${latest}; run a newer server`,
    );
  }
  const applied: number[] = [];
  for (const m of migrations) {
    if (m.version <= from) continue;
    db.transaction(() => {
      // Re-read under the write lock: another process may have applied it meanwhile.
      if (currentVersion(db) >= m.version) return;
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(
        m.version,
        m.name,
        clock(),
      );
      applied.push(m.version);
    }).immediate();
  }
  return { from, to: currentVersion(db), applied };
}
