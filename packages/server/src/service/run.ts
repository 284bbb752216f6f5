/**
 * Runs a server from a data directory: initialises it if it never was, opens the KMS (the
 * local key file or the PKCS#11 token, as config.json says) and the database it names (the
 * embedded SQLCipher file, or PostgreSQL with the URL from the named environment variable),
 * serves HTTPS + WebSocket on one TLS 1.3 port and the admin API on the Unix socket, and
 * shuts all of it down in order on `close()`.
 *
 * With `pubsub` in the config it joins the other nodes' event bus (NATS; connecting in the
 * background, so a NATS server that is down delays nothing: the node serves and its bus
 * catches up, see cluster.ts) and closes it last, after the service, so the events of the
 * shutdown (connections ending) still go out.
 */
import { hostname as osHostname } from 'node:os';
import { join, resolve } from 'node:path';
import { DEK_FILE } from '../kms/dek-registry.js';
import { openEventBus, resolvePubsub } from '../pubsub/config.js';
import type { StorageLimits } from '../storage/types.js';
import { startAdminSocket } from './admin.js';
import { createService, type Service } from './app.js';
import {
  ADMIN_SOCKET_FILE,
  type InitResult,
  initDataDir,
  isInitialised,
  loadTls,
  openDatabase,
  openKms,
  openSessionKey,
  parseListen,
  readConfig,
  resolveDatabase,
} from './data-dir.js';

export interface RunOptions {
  readonly dataDir: string;
  /** `HOST:PORT`; default: the config's `listen`. Port 0 picks a free port. */
  readonly listen?: string;
  /** Used only when the directory is initialised by this start. */
  readonly hostname?: string;
  readonly limits?: Partial<StorageLimits>;
  readonly log?: (line: string) => void;
  /** The presence heartbeat interval (default 5 s; tests use less). */
  readonly presenceIntervalMs?: number;
}

export interface RunningServer {
  readonly service: Service;
  readonly host: string;
  readonly port: number;
  readonly url: string;
  readonly pin: string;
  readonly adminSocket: string;
  /** Set when this start initialised the directory (it carries the first admin's enrolment code). */
  readonly init: InitResult | undefined;
  close(): Promise<void>;
}

export async function runServer(options: RunOptions): Promise<RunningServer> {
  const dataDir = resolve(options.dataDir);
  const init = isInitialised(dataDir)
    ? undefined
    : await initDataDir({
        dataDir,
        ...(options.hostname === undefined ? {} : { hostname: options.hostname }),
        ...(options.listen === undefined ? {} : { listen: options.listen }),
      });
  const config = readConfig(dataDir);
  const listen = parseListen('listen', options.listen ?? config.listen);
  const tls = loadTls(config.paths);
  // Before the KMS: an unset URL variable is a configuration slip, reported without a token login.
  const database = resolveDatabase(config.databaseSetting);
  const pubsub = resolvePubsub(config.pubsubSetting);
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  // The local master-key file or the PKCS#11 token, as the config says (a token's PIN from its env variable or file).
  const kms = await openKms(config.kmsSetting);
  const cleanup: (() => Promise<unknown>)[] = [() => kms.close()];
  const unwind = async () => {
    for (const f of cleanup.splice(0).reverse()) await f().catch(() => undefined);
  };
  try {
    const storage = await openDatabase(database, {
      dataDir,
      kms,
      ...(options.limits ? { limits: options.limits } : {}),
    });
    cleanup.push(() => storage.close());
    const sessionKey = await openSessionKey(database, { dataDir, kms });
    cleanup.push(async () => sessionKey.fill(0));
    const bus =
      pubsub.provider === 'nats'
        ? openEventBus(pubsub, { name: `qalqon-${osHostname().slice(0, 100)}`, log })
        : undefined;
    if (bus) cleanup.push(() => bus.close());
    const service = await createService({
      storage,
      tls: { cert: tls.cert, key: tls.key },
      processMetrics: true,
      sessionKey,
      log,
      kms,
      files: config.filesSetting,
      ...(bus ? { bus } : {}),
      ...(options.presenceIntervalMs === undefined ? {} : { presenceIntervalMs: options.presenceIntervalMs }),
    });
    cleanup.push(() => service.close());
    // The admin socket first: it refuses to start when another server owns the directory.
    const adminSocket = join(dataDir, ADMIN_SOCKET_FILE);
    const admin = await startAdminSocket(adminSocket, service.ctx, {
      kms,
      // PostgreSQL keeps its data keys in its data_keys table, which the kms.* operations re-wrap there.
      dekFile: database.provider === 'embedded' ? join(dataDir, DEK_FILE) : undefined,
      postgres: database.provider === 'postgres' ? { url: database.url, ssl: database.ssl } : undefined,
    });
    cleanup.push(() => admin.close());
    const addr = await service.listen(listen.host, listen.port);
    const hostForUrl = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
    let closing: Promise<void> | undefined;
    return {
      service,
      host: addr.host,
      port: addr.port,
      url: `https://${hostForUrl}:${addr.port}`,
      pin: tls.pin,
      adminSocket,
      init,
      close() {
        closing ??= unwind();
        return closing;
      },
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}
