/**
 * The `pubsub` setting of config.json:
 *
 * - absent, or `{ "provider": "local" }`: one node, the in-process bus (delivers nothing);
 * - `{ "provider": "nats", "urlEnv": "QALQON_NATS_URL" }`: the NATS URL (which may carry a
 *   user and password or a token) is read from that environment variable at start;
 * - `{ "provider": "nats", "url": "nats://nats.internal:4222" }`: a URL WITHOUT credentials
 *   (none needed, or TLS client certificates), stored as is.
 *
 * Both NATS forms take an optional `"subjectPrefix"` (default `qalqon`): deployments sharing
 * one NATS server must each use their own. As with the database URL, a URL with credentials
 * is never stored in config.json, and no message quotes a URL.
 */
import { ServerError } from '../errors.js';
import type { BusCoreOptions, EventBus } from './bus.js';
import { createLocalBus } from './local-bus.js';
import {
  checkSubjectPrefix,
  connectNatsBus,
  DEFAULT_SUBJECT_PREFIX,
  natsUrlHasCredentials,
  parseNatsUrl,
} from './nats-bus.js';

const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export type PubsubSetting =
  | { readonly provider: 'local' }
  | { readonly provider: 'nats'; readonly urlEnv: string; readonly subjectPrefix: string }
  | { readonly provider: 'nats'; readonly url: string; readonly subjectPrefix: string };

export type ResolvedPubsub =
  | { readonly provider: 'local' }
  | { readonly provider: 'nats'; readonly url: string; readonly subjectPrefix: string };

function invalid(message: string): ServerError {
  return new ServerError('CONFIG_INVALID', message);
}

/** Checks the `pubsub` value of config.json (`undefined` when absent). Throws CONFIG_INVALID. */
export function checkPubsubSetting(value: unknown, label = 'pubsub'): PubsubSetting {
  if (value === undefined) return { provider: 'local' };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(`"${label}" expected { provider }`);
  }
  const p = value as Record<string, unknown>;
  if (p.provider === 'local') {
    if (Object.keys(p).length !== 1) throw invalid(`"${label}" with the local provider takes no other field`);
    return { provider: 'local' };
  }
  if (p.provider !== 'nats') throw invalid(`"${label}.provider" expected local or nats`);
  for (const key of Object.keys(p)) {
    if (!['provider', 'urlEnv', 'url', 'subjectPrefix'].includes(key)) {
      throw invalid(`"${label}" has an unknown field (expected provider, urlEnv or url, subjectPrefix)`);
    }
  }
  let subjectPrefix = DEFAULT_SUBJECT_PREFIX;
  if (p.subjectPrefix !== undefined) {
    try {
      subjectPrefix = checkSubjectPrefix(`${label}.subjectPrefix`, p.subjectPrefix);
    } catch (err) {
      throw invalid((err as Error).message);
    }
  }
  if ((p.urlEnv === undefined) === (p.url === undefined)) {
    throw invalid(`"${label}" expected exactly one of urlEnv and url`);
  }
  if (p.urlEnv !== undefined) {
    if (typeof p.urlEnv !== 'string' || !ENV_NAME_PATTERN.test(p.urlEnv)) {
      throw invalid(`"${label}.urlEnv" expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*)`);
    }
    return { provider: 'nats', urlEnv: p.urlEnv, subjectPrefix };
  }
  let parsed: ReturnType<typeof parseNatsUrl>;
  try {
    parsed = parseNatsUrl(`${label}.url`, p.url);
  } catch (err) {
    throw invalid((err as Error).message);
  }
  if (natsUrlHasCredentials(parsed)) {
    throw invalid(
      `"${label}.url" carries credentials, which would be stored in config.json; pass the URL in an environment variable (urlEnv) instead`,
    );
  }
  return { provider: 'nats', url: p.url as string, subjectPrefix };
}

/** Reads the NATS URL from where the setting says. Throws CONFIG_INVALID naming the variable (never its value). */
export function resolvePubsub(
  setting: PubsubSetting,
  env: Readonly<Record<string, string | undefined>> = process.env,
): ResolvedPubsub {
  if (setting.provider === 'local') return setting;
  if ('url' in setting) return setting;
  const url = env[setting.urlEnv];
  if (url === undefined || url === '') {
    throw invalid(`the NATS URL is expected in environment variable ${setting.urlEnv}, which is not set`);
  }
  try {
    parseNatsUrl('NATS URL', url);
  } catch {
    throw invalid(`environment variable ${setting.urlEnv} does not hold a valid nats:// or tls:// URL`);
  }
  return { provider: 'nats', url, subjectPrefix: setting.subjectPrefix };
}

/** Starts the bus the resolved setting names (NATS: connecting in the background). */
export function openEventBus(
  resolved: ResolvedPubsub,
  options: BusCoreOptions & { readonly name: string; readonly ca?: string },
): EventBus {
  if (resolved.provider === 'local') return createLocalBus(options);
  return connectNatsBus({ ...options, url: resolved.url, subjectPrefix: resolved.subjectPrefix });
}
