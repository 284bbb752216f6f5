/**
 * `server init --database-url-env VAR` / `--database-url URL` and `server start` on the
 * PostgreSQL backend, with a real PostgreSQL server: every test gets its own throwaway
 * database (CREATE DATABASE qalqon_cli_<random>, dropped afterwards, through psql), and
 * `server init` / `server start` run as real processes of the CLI's entry point, which read
 * the URL from the environment they inherit. The admin commands reach the running server
 * through its Unix socket.
 *
 * The URL handed over in the variable carries a password (PostgreSQL's trust authentication
 * on the test server ignores it): it must never appear in config.json, stdout or stderr.
 *
 * PostgreSQL must be running (CI starts it); the suite fails rather than skips.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cliHarness, healthz, oneJson, qalqon, stopServer, userNames } from './cli-harness.test-util.js';

const { tempDir, runQalqon, startServer } = cliHarness('qalqon-cli-pg-');

const ADMIN_URL = process.env.QALQON_TEST_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';
const START_HINT =
  'start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` ' +
  '(.ci/run does this in CI), or point QALQON_TEST_POSTGRES_URL at a server with trust auth';

const URL_ENV = 'QALQON_CLI_TEST_DATABASE_URL';
const PASSWORD = `pw-${randomBytes(8).toString('hex')}`;

const databases: string[] = [];

afterEach(() => {
  for (const db of databases.splice(0)) psql(ADMIN_URL, `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
});

function psql(url: string, sql: string): string {
  try {
    return execFileSync('psql', [url, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], {
      stdio: 'pipe',
      encoding: 'utf8',
    }).trim();
  } catch (err) {
    throw new Error(`psql failed (${(err as Error).message}): is PostgreSQL running? ${START_HINT}`);
  }
}

/** A throwaway database; its URL without and with a (trust-ignored) password. */
function createDb(): { name: string; url: string; urlWithPassword: string } {
  const name = `qalqon_cli_${randomBytes(8).toString('hex')}`;
  psql(ADMIN_URL, `CREATE DATABASE ${name}`);
  databases.push(name);
  const u = new URL(ADMIN_URL);
  u.pathname = `/${name}`;
  const url = u.toString();
  u.password = PASSWORD;
  return { name, url, urlWithPassword: u.toString() };
}

function expectNoSecret(...texts: string[]): void {
  for (const t of texts) {
    expect(t).not.toContain(PASSWORD);
    expect(t).not.toContain('postgresql://');
    expect(t).not.toContain('postgres://');
  }
}

describe('qalqon server init/start with PostgreSQL', () => {
  it('keeps the embedded database as the default, also for a config written without "database"', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const init = await runQalqon(dir, ['server', 'init', '--data', data, '--json'], { [URL_ENV]: undefined });
    expect(init.err).toBe('');
    expect(init.code).toBe(0);
    expect(oneJson(init.out).database).toBe('embedded');
    const configPath = join(data, 'config.json');
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    expect(config.database).toEqual({ provider: 'embedded' });
    expect(existsSync(join(data, 'qalqon.db'))).toBe(true);
    // A data directory from before the PostgreSQL backend has no "database": still embedded.
    delete config.database;
    writeFileSync(configPath, JSON.stringify(config), { mode: 0o600 });
    const server = await startServer(dir, data, { [URL_ENV]: '' });
    expect(await healthz(server.listening)).toBe(200);
    expect((await qalqon('admin', '--data', data, 'user', 'add', 'bob')).code).toBe(0);
    expect(await userNames(data)).toEqual(['admin', 'bob']);
    await stopServer(server);
  });

  it('inits into the database named by --database-url-env, serves from it and keeps its users across restarts', async () => {
    const db = createDb();
    const dir = tempDir();
    const data = join(dir, 'data');

    const init = await runQalqon(
      dir,
      ['server', 'init', '--data', data, '--database-url-env', URL_ENV, '--json'],
      {
        [URL_ENV]: db.urlWithPassword,
      },
    );
    expect(init.err).toBe('');
    expect(init.code).toBe(0);
    const initJson = oneJson(init.out) as { database: string; user: string; enrollmentCode: string };
    expect(initJson.database).toBe('postgres');
    expect(initJson.user).toBe('admin');
    expect(initJson.enrollmentCode).toMatch(/^[A-Za-z0-9_-]{20}$/);
    expectNoSecret(init.out);

    // The config names the variable, never the URL; the data (and its keys) live in PostgreSQL.
    const configText = readFileSync(join(data, 'config.json'), 'utf8');
    expect(JSON.parse(configText).database).toEqual({ provider: 'postgres', urlEnv: URL_ENV, ssl: false });
    expectNoSecret(configText);
    expect(configText).not.toContain(db.name);
    expect(existsSync(join(data, 'qalqon.db'))).toBe(false);
    expect(existsSync(join(data, 'data-keys.json'))).toBe(false);
    expect(existsSync(join(data, 'kms-master.key'))).toBe(true);
    expect(psql(db.url, 'SELECT count(*) FROM users')).toBe('1');
    expect(psql(db.url, 'SELECT count(*) FROM enrolment_codes')).toBe('1');
    expect(psql(db.url, 'SELECT name FROM data_keys ORDER BY name')).toBe('audit-signing\nfields-1\nlookup');

    let server = await startServer(dir, data, { [URL_ENV]: db.urlWithPassword });
    expect(await healthz(server.listening)).toBe(200);
    const added = await qalqon('admin', '--data', data, 'user', 'add', 'bob', '--json');
    expect(added.err).toBe('');
    expect(added.code).toBe(0);
    expect(await userNames(data)).toEqual(['admin', 'bob']);
    expect(psql(db.url, 'SELECT count(*) FROM users')).toBe('2');
    // The kms commands count the keys in data_keys (multinode-kill.test.ts rotates them).
    const kms = await qalqon('admin', '--data', data, 'kms', 'status', '--json');
    expect(kms.code, kms.err).toBe(0);
    const status = oneJson(kms.out) as { keyVersions: { wrappedKeys: number }[] };
    expect(status.keyVersions[0]?.wrappedKeys).toBe(4);
    await stopServer(server);
    expectNoSecret(server.stderr());
    expect(existsSync(join(data, 'qalqon.db'))).toBe(false);

    // Restarted, it opens the same database and still has bob.
    server = await startServer(dir, data, { [URL_ENV]: db.urlWithPassword });
    expect(await healthz(server.listening)).toBe(200);
    expect(await userNames(data)).toEqual(['admin', 'bob']);
    await stopServer(server);
    expectNoSecret(server.stderr());
    expect(existsSync(join(data, 'qalqon.db'))).toBe(false);

    // Without the variable, start refuses with one sentence (and no URL to echo).
    const unset = await runQalqon(dir, ['server', 'start', '--data', data, '--listen', '127.0.0.1:0'], {
      [URL_ENV]: undefined,
    });
    expect(unset.code).toBe(1);
    expect(unset.out).toBe('');
    expect(unset.err).toBe(
      `qalqon: the PostgreSQL URL is expected in environment variable ${URL_ENV}, which is not set.\n`,
    );
  });

  it('refuses a second init against a database that holds a deployment; a copied config adds a node instead', async () => {
    const db = createDb();
    const dir = tempDir();
    const first = join(dir, 'first');
    const init = await runQalqon(dir, ['server', 'init', '--data', first, '--database-url-env', URL_ENV], {
      [URL_ENV]: db.urlWithPassword,
    });
    expect(init.code).toBe(0);
    expect(init.out).toContain('Database: PostgreSQL\n');
    expectNoSecret(init.out, init.err);

    // No silent sharing: refused before the KMS or TLS files are made.
    const second = join(dir, 'second');
    const again = await runQalqon(dir, ['server', 'init', '--data', second, '--database-url-env', URL_ENV], {
      [URL_ENV]: db.urlWithPassword,
    });
    expect(again.code).toBe(1);
    expect(again.out).toBe('');
    expect(again.err).toBe(
      'qalqon: the PostgreSQL database already holds a Qalqon deployment; to add a node, copy the ' +
        "first node's config.json, TLS certificate and key and KMS access instead of running init.\n",
    );
    for (const f of ['config.json', 'kms-master.key', 'tls-key.pem', 'data-keys.json', 'qalqon.db']) {
      expect(existsSync(join(second, f))).toBe(false);
    }
    expect(psql(db.url, 'SELECT count(*) FROM users')).toBe('1');

    // The multi-node flow: the second node gets a copy of config.json, the TLS pair and the
    // KMS key file (the same KMS), and the URL in the same variable; then it simply starts.
    const node2 = join(dir, 'node2');
    mkdirSync(node2, { mode: 0o700 });
    for (const f of ['config.json', 'tls-key.pem', 'tls-cert.pem', 'kms-master.key']) {
      copyFileSync(join(first, f), join(node2, f));
    }
    const a = await startServer(dir, first, { [URL_ENV]: db.urlWithPassword });
    const b = await startServer(dir, node2, { [URL_ENV]: db.urlWithPassword });
    expect(await healthz(a.listening)).toBe(200);
    expect(await healthz(b.listening)).toBe(200);
    expect((await qalqon('admin', '--data', first, 'user', 'add', 'bob')).code).toBe(0);
    expect((await qalqon('admin', '--data', node2, 'user', 'add', 'carol')).code).toBe(0);
    expect(await userNames(node2)).toEqual(['admin', 'bob', 'carol']);
    expect(await userNames(first)).toEqual(['admin', 'bob', 'carol']);
    await stopServer(b);
    await stopServer(a);
  });

  it('refuses a password in --database-url (exit 2) without echoing it, and takes a password-free one', async () => {
    const db = createDb();
    const dir = tempDir();
    const data = join(dir, 'data');
    const refused = await runQalqon(
      dir,
      ['server', 'init', '--data', data, '--database-url', db.urlWithPassword],
      {},
    );
    expect(refused.code).toBe(2);
    expect(refused.out).toBe('');
    expect(refused.err).toMatch(/^qalqon: --database-url must not carry a password \(/);
    expectNoSecret(refused.err);
    expect(existsSync(data)).toBe(false);

    const asParam = `${db.url}?password=${PASSWORD}`;
    const refusedParam = await qalqon('server', 'init', '--data', data, '--database-url', asParam);
    expect(refusedParam.code).toBe(2);
    expectNoSecret(refusedParam.err, refusedParam.out);

    const init = await runQalqon(
      dir,
      ['server', 'init', '--data', data, '--database-url', db.url, '--json'],
      {},
    );
    expect(init.err).toBe('');
    expect(init.code).toBe(0);
    expect(JSON.parse(readFileSync(join(data, 'config.json'), 'utf8')).database).toEqual({
      provider: 'postgres',
      url: db.url,
      ssl: false,
    });
    const server = await startServer(dir, data, { [URL_ENV]: '' });
    expect(await healthz(server.listening)).toBe(200);
    expect(await userNames(data)).toEqual(['admin']);
    await stopServer(server);
    expect(existsSync(join(data, 'qalqon.db'))).toBe(false);
  });

  it('fails init with one sentence when the variable is unset, the database unreachable or without the TLS required, creating nothing', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const unset = await runQalqon(dir, ['server', 'init', '--data', data, '--database-url-env', URL_ENV], {
      [URL_ENV]: undefined,
    });
    expect(unset.code).toBe(1);
    expect(unset.out).toBe('');
    expect(unset.err).toBe(
      `qalqon: the PostgreSQL URL is expected in environment variable ${URL_ENV}, which is not set.\n`,
    );
    expect(existsSync(join(data, 'config.json'))).toBe(false);

    // Port 1 on loopback: nothing listens there.
    const unreachable = await runQalqon(
      dir,
      ['server', 'init', '--data', data, '--database-url-env', URL_ENV],
      {
        [URL_ENV]: `postgresql://postgres:${PASSWORD}@127.0.0.1:1/qalqon_nowhere`,
      },
    );
    expect(unreachable.code).toBe(1);
    expect(unreachable.out).toBe('');
    expect(unreachable.err).toBe('qalqon: cannot reach the database (ECONNREFUSED).\n');
    for (const f of ['config.json', 'kms-master.key', 'tls-key.pem'])
      expect(existsSync(join(data, f))).toBe(false);

    // --database-ssl requires TLS: the test server offers none (ssl = off), so init refuses.
    const db = createDb();
    const tls = await runQalqon(
      dir,
      ['server', 'init', '--data', data, '--database-url-env', URL_ENV, '--database-ssl'],
      { [URL_ENV]: db.urlWithPassword },
    );
    expect(tls.code).toBe(1);
    expect(tls.err).toBe(
      'qalqon: the database server does not offer TLS, which the configuration requires (ssl / sslmode).\n',
    );
    expect(existsSync(join(data, 'config.json'))).toBe(false);

    // The options belong to init; start refuses them as usage.
    const onStart = await qalqon('server', 'start', '--data', data, '--database-url-env', URL_ENV);
    expect(onStart.code).toBe(2);
    expect(onStart.err).toMatch(/^qalqon: --database-url-env applies to "server init" only\.\n/);
  });
});
