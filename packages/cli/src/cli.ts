/**
 * The `qalqon` command (SPEC section 3): `server init|start` here, `admin ...` (local over
 * the admin socket, or remote with --profile) in admin-commands.ts, the client commands
 * (enroll, link, device, channel, send, recv, safety-number, verify, repin) in
 * client-commands.ts. Rules every command keeps: with `--json` it
 * prints one JSON object (or JSON lines for a stream) and nothing else on stdout; errors go
 * to stderr as one sentence (a server's refusal ends with its code, e.g. "(ROLE_IN_USE)"); exit 1 for a refused operation, 2 for bad usage; secrets are
 * never printed except enrolment codes, which these commands exist to print.
 */
import { isAbsolute } from 'node:path';
import { parseArgs } from 'node:util';
import { isClientError } from '@qalqon/client';
import {
  type InitOptions,
  type InitResult,
  initDataDir,
  isServerError,
  runServer,
  urlHasPassword,
} from '@qalqon/server';
import { isWireError } from '@qalqon/wire';
import { ADMIN_USAGE, adminCommand } from './admin-commands.js';
import { BACKUP_COMMANDS, BACKUP_ONLY_OPTIONS, BACKUP_USAGE, backupCommand } from './backup-commands.js';
import { CLIENT_COMMANDS, CLIENT_USAGE, clientCommand } from './client-commands.js';
import { FILE_USAGE, fileCommand } from './file-commands.js';
import { type CliIo, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, RefusedError, UsageError } from './io.js';

export const USAGE = `usage:
  qalqon server init  --data DIR [--hostname NAME] [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE] [--kms local] [--json]
  qalqon server init  --data DIR --kms pkcs11 --pkcs11-module PATH --pkcs11-token LABEL
                      (--pkcs11-pin-env VAR | --pkcs11-pin-file FILE) [other init options] [--json]
  qalqon server init  --data DIR (--database-url-env VAR | --database-url URL_WITHOUT_PASSWORD)
                      [--database-ssl] [--pubsub-url-env VAR | --pubsub-url URL_WITHOUT_CREDENTIALS]
                      [other init options] [--json]
  qalqon server start --data DIR [--listen HOST:PORT] [--hostname NAME] [--json]
${ADMIN_USAGE}${BACKUP_USAGE}${CLIENT_USAGE}${FILE_USAGE}`;

const OPTIONS = {
  data: { type: 'string' },
  hostname: { type: 'string' },
  listen: { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  kms: { type: 'string' },
  // The token's PIN is never an option: it comes from the named variable or file.
  'pkcs11-module': { type: 'string' },
  'pkcs11-token': { type: 'string' },
  'pkcs11-pin-env': { type: 'string' },
  'pkcs11-pin-file': { type: 'string' },
  // PostgreSQL: a URL with a password only through the named variable (argv is public).
  'database-url-env': { type: 'string' },
  'database-url': { type: 'string' },
  'database-ssl': { type: 'boolean' },
  // The NATS event bus joining several nodes (PostgreSQL only); credentials only through the variable.
  'pubsub-url-env': { type: 'string' },
  'pubsub-url': { type: 'string' },
  role: { type: 'string', multiple: true },
  unit: { type: 'string' },
  permission: { type: 'string', multiple: true },
  parent: { type: 'string' },
  since: { type: 'string' },
  manager: { type: 'boolean' },
  server: { type: 'string' },
  code: { type: 'string' },
  profile: { type: 'string' },
  pin: { type: 'string' },
  'device-name': { type: 'string' },
  keystore: { type: 'string' },
  to: { type: 'string' },
  channel: { type: 'string' },
  wait: { type: 'string' },
  out: { type: 'string' },
  // Backups and exports (backup-commands.ts). A recovery key only from a variable or a file.
  in: { type: 'string' },
  'recovery-key': { type: 'boolean' },
  'recovery-key-env': { type: 'string' },
  'recovery-key-file': { type: 'string' },
  'kms-key-file': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = {
  data?: string;
  hostname?: string;
  listen?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  kms?: string;
  'pkcs11-module'?: string;
  'pkcs11-token'?: string;
  'pkcs11-pin-env'?: string;
  'pkcs11-pin-file'?: string;
  'database-url-env'?: string;
  'database-url'?: string;
  'database-ssl'?: boolean;
  'pubsub-url-env'?: string;
  'pubsub-url'?: string;
  role?: string[];
  unit?: string;
  permission?: string[];
  parent?: string;
  since?: string;
  manager?: boolean;
  server?: string;
  code?: string;
  profile?: string;
  pin?: string;
  'device-name'?: string;
  keystore?: string;
  to?: string;
  channel?: string;
  wait?: string;
  out?: string;
  in?: string;
  'recovery-key'?: boolean;
  'recovery-key-env'?: string;
  'recovery-key-file'?: string;
  'kms-key-file'?: string;
  json?: boolean;
  help?: boolean;
};

export interface RunHooks {
  /** Resolves when the running server should stop (default: SIGINT or SIGTERM). */
  readonly stopSignal?: () => Promise<string>;
}

function waitForSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

function need(values: Values, name: 'data'): string {
  const v = values[name];
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function exactly(positionals: string[], n: number, what: string): void {
  if (positionals.length !== n) throw new UsageError(`expected ${what}`);
}

const PKCS11_OPTIONS = ['pkcs11-module', 'pkcs11-token', 'pkcs11-pin-env', 'pkcs11-pin-file'] as const;

/** The KMS `server init` sets up, from --kms and the --pkcs11-* options. */
function kmsChoice(values: Values): NonNullable<InitOptions['kms']> {
  const kms = values.kms ?? 'local';
  if (kms !== 'local' && kms !== 'pkcs11') throw new UsageError('--kms must be local or pkcs11');
  if (kms === 'local') {
    const stray = PKCS11_OPTIONS.find((o) => values[o] !== undefined);
    if (stray) throw new UsageError(`--${stray} applies to --kms pkcs11 only`);
    return { provider: 'local' };
  }
  const module = values['pkcs11-module'];
  const tokenLabel = values['pkcs11-token'];
  const env = values['pkcs11-pin-env'];
  const file = values['pkcs11-pin-file'];
  if (!module) throw new UsageError('--kms pkcs11 needs --pkcs11-module PATH');
  // An absolute path only: a bare name would be looked up along LD_LIBRARY_PATH at every start.
  if (!isAbsolute(module)) throw new UsageError('--pkcs11-module must be an absolute path');
  if (!tokenLabel) throw new UsageError('--kms pkcs11 needs --pkcs11-token LABEL');
  if ((env === undefined) === (file === undefined)) {
    throw new UsageError('--kms pkcs11 needs exactly one of --pkcs11-pin-env VAR and --pkcs11-pin-file FILE');
  }
  if (env !== undefined && !/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(env)) {
    throw new UsageError('--pkcs11-pin-env must name an environment variable (letters, digits, _)');
  }
  if (file === '') throw new UsageError('--pkcs11-pin-file must name a file');
  return {
    provider: 'pkcs11',
    module,
    tokenLabel,
    pin: env !== undefined ? { env } : { file: file! },
  };
}

const DATABASE_OPTIONS = [
  'database-url-env',
  'database-url',
  'database-ssl',
  'pubsub-url-env',
  'pubsub-url',
] as const;

/** The event bus `server init` records (checked by the server: NATS needs PostgreSQL, no credentials in a URL). */
function pubsubChoice(values: Values): InitOptions['pubsub'] {
  const env = values['pubsub-url-env'];
  const url = values['pubsub-url'];
  if (env === undefined && url === undefined) return undefined;
  if (env !== undefined && url !== undefined) {
    throw new UsageError('give one of --pubsub-url-env VAR and --pubsub-url URL');
  }
  return env !== undefined ? { provider: 'nats', urlEnv: env } : { provider: 'nats', url: url! };
}

/** The database `server init` sets up: embedded unless a PostgreSQL URL (or its variable) is given. */
function databaseChoice(values: Values): NonNullable<InitOptions['database']> {
  const env = values['database-url-env'];
  const url = values['database-url'];
  if (env === undefined && url === undefined) {
    if (values['database-ssl'] !== undefined) {
      throw new UsageError('--database-ssl needs --database-url-env VAR or --database-url URL');
    }
    return { provider: 'embedded' };
  }
  if (env !== undefined && url !== undefined) {
    throw new UsageError('give one of --database-url-env VAR and --database-url URL');
  }
  const ssl = values['database-ssl'] === true;
  if (env !== undefined) {
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(env)) {
      throw new UsageError('--database-url-env must name an environment variable (letters, digits, _)');
    }
    return { provider: 'postgres', urlEnv: env, ssl };
  }
  // Never echo the URL: it is refused precisely because it may carry a secret.
  if (urlHasPassword(url!)) {
    throw new UsageError(
      '--database-url must not carry a password (other users can see a command line); ' +
        'put the URL in an environment variable and pass --database-url-env VAR',
    );
  }
  return { provider: 'postgres', url: url!, ssl };
}

function printInit(io: CliIo, r: InitResult, json: boolean): void {
  if (json) {
    io.stdout(
      `${JSON.stringify({
        dataDir: r.dataDir,
        hostname: r.hostname,
        listen: r.listen,
        pin: r.pin,
        user: r.adminUser,
        enrollmentCode: r.enrollmentCode,
        expiresAt: r.enrollmentCodeExpiresAt,
        kms: { provider: r.kms.provider, location: r.kms.location, activeKeyId: r.kms.activeKeyId },
        database: r.database,
      })}\n`,
    );
    return;
  }
  io.stdout(
    `Initialised ${r.dataDir} for ${r.hostname}.\n` +
      `KMS: ${r.kms.provider} at ${r.kms.location}, key-encryption key ${r.kms.activeKeyId}\n` +
      `Database: ${r.database === 'postgres' ? 'PostgreSQL' : 'embedded (SQLCipher)'}\n` +
      `TLS certificate pin: ${r.pin}\n` +
      `One-time enrolment code for user "${r.adminUser}" (valid until ${new Date(r.enrollmentCodeExpiresAt).toISOString()}): ${r.enrollmentCode}\n`,
  );
}

async function serverCommand(io: CliIo, values: Values, rest: string[], hooks: RunHooks): Promise<number> {
  const [sub, ...args] = rest;
  const json = values.json === true;
  if (sub === 'init') {
    exactly(args, 0, 'no arguments after "server init"');
    if ((values['tls-cert'] === undefined) !== (values['tls-key'] === undefined)) {
      throw new UsageError('--tls-cert and --tls-key go together');
    }
    const kms = kmsChoice(values);
    const database = databaseChoice(values);
    const pubsub = pubsubChoice(values);
    const r = await initDataDir({
      dataDir: need(values, 'data'),
      kms,
      database,
      ...(pubsub === undefined ? {} : { pubsub }),
      ...(values.hostname === undefined ? {} : { hostname: values.hostname }),
      ...(values.listen === undefined ? {} : { listen: values.listen }),
      ...(values['tls-cert'] === undefined ? {} : { tlsCertFile: values['tls-cert'] }),
      ...(values['tls-key'] === undefined ? {} : { tlsKeyFile: values['tls-key'] }),
    });
    printInit(io, r, json);
    return EXIT_OK;
  }
  if (sub === 'start') {
    exactly(args, 0, 'no arguments after "server start"');
    // The KMS and the database are chosen once, at init, and kept in config.json.
    const initOnly = (['kms', ...PKCS11_OPTIONS, ...DATABASE_OPTIONS] as const).find(
      (o) => values[o] !== undefined,
    );
    if (initOnly) throw new UsageError(`--${initOnly} applies to "server init" only`);
    const dataDir = need(values, 'data');
    const server = await runServer({
      dataDir,
      ...(values.listen === undefined ? {} : { listen: values.listen }),
      ...(values.hostname === undefined ? {} : { hostname: values.hostname }),
      log: (line) => io.stderr(`${line}\n`),
    });
    const stop = (hooks.stopSignal ?? waitForSignal)();
    if (json) {
      io.stdout(
        `${JSON.stringify({
          listening: server.url,
          pin: server.pin,
          dataDir: server.init?.dataDir ?? dataDir,
          adminSocket: server.adminSocket,
          ...(server.init ? { user: server.init.adminUser, enrollmentCode: server.init.enrollmentCode } : {}),
        })}\n`,
      );
    } else {
      if (server.init) io.stdout(`Initialised ${server.init.dataDir} for ${server.init.hostname}.\n`);
      io.stdout(
        `Qalqon server listening on ${server.url} (TLS 1.3 only)\n` +
          `TLS certificate pin: ${server.pin}\n` +
          (server.init
            ? `Enrol the first administrator: qalqon enroll --server ${server.url} --pin ${server.pin} --code ${server.init.enrollmentCode} --profile DIR\n`
            : '') +
          `Add a user and get their enrolment code: qalqon admin --data ${dataDir} user add NAME\n` +
          'Stop with Ctrl-C (SIGINT) or SIGTERM.\n',
      );
    }
    const sig = await stop;
    io.stderr(`${sig}: shutting down\n`);
    await server.close();
    return EXIT_OK;
  }
  throw new UsageError(`unknown command "server ${sub ?? ''}"`.trimEnd());
}

/** Runs one `qalqon` invocation and returns its exit status. */
export async function run(argv: readonly string[], io: CliIo, hooks: RunHooks = {}): Promise<number> {
  try {
    let parsed: { values: Values; positionals: string[] };
    try {
      parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true }) as {
        values: Values;
        positionals: string[];
      };
    } catch (err) {
      // parseArgs names the offending option; keep its first sentence.
      throw new UsageError((err as Error).message.split('\n')[0]!.replace(/\.$/, ''));
    }
    const { values, positionals } = parsed;
    if (values.help) {
      io.stdout(USAGE);
      return EXIT_OK;
    }
    const [command, ...rest] = positionals;
    if (command === 'server') return await serverCommand(io, values, rest, hooks);
    if (command === 'admin' && BACKUP_COMMANDS.has(rest[0] ?? '')) {
      return await backupCommand(io, values, rest, () => kmsChoice(values));
    }
    const backupOnly = BACKUP_ONLY_OPTIONS.find((o) => values[o] !== undefined);
    if (backupOnly)
      throw new UsageError(`--${backupOnly} applies to "admin backup|export|restore|export-read" only`);
    if (command === 'admin') return await adminCommand(io, values, rest);
    if (command === 'file') return await fileCommand(io, values, rest);
    if (command !== undefined && CLIENT_COMMANDS.has(command))
      return await clientCommand(io, command, values, rest);
    throw new UsageError(command === undefined ? 'no command given' : `unknown command "${command}"`);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`qalqon: ${err.message}.\n${USAGE}`);
      return EXIT_USAGE;
    }
    if (err instanceof RefusedError || isWireError(err)) {
      // A server's refusal: its code too, so a script (or the operator) can tell them apart.
      io.stderr(`qalqon: ${err.message.replace(/\.$/, '')} (${err.code}).\n`);
      return EXIT_REFUSED;
    }
    if (isServerError(err) || isClientError(err)) {
      io.stderr(`qalqon: ${(err as Error).message.replace(/\.$/, '')}.\n`);
      return EXIT_REFUSED;
    }
    const sys = err as NodeJS.ErrnoException;
    if (typeof sys?.code === 'string' && typeof sys.syscall === 'string') {
      // An operating-system refusal (address in use, permission denied): name it, nothing more.
      io.stderr(`qalqon: ${sys.syscall} failed with ${sys.code}.\n`);
      return EXIT_REFUSED;
    }
    // Unexpected: say so without internals (a stack could carry paths or worse).
    io.stderr(`qalqon: an unexpected error occurred (${err instanceof Error ? err.name : 'error'}).\n`);
    return EXIT_REFUSED;
  }
}
