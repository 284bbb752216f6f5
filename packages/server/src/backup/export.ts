/**
 * Exports: the directory (users, their devices, roles, grants, org units), channel
 * membership and the audit log as one JSON document, sealed in an archive of kind `export`
 * exactly as a backup is. Never message content (the server cannot read it), never a key:
 * devices appear by id, name and creation time only. Works with either backend: it reads
 * through the Storage interface (several reads, not one transaction: a change made during
 * the export may or may not be in it).
 */
import { ServerError } from '../errors.js';
import type { Kms } from '../kms/kms.js';
import type { Storage } from '../storage/types.js';
import {
  type ArchiveKeySource,
  newArchive,
  openArchiveKey,
  openSegments,
  readArchiveHeader,
} from './archive.js';
import type { PreparedArchive } from './backup.js';

export const EXPORT_PARTS = ['directory', 'channels', 'audit'] as const;
export type ExportPart = (typeof EXPORT_PARTS)[number];
export const EXPORT_FORMAT = 'qalqon-export';
export const EXPORT_VERSION = 1;
/** An export is read back into memory whole; refuse anything larger. */
const MAX_EXPORT_BYTES = 1024 * 1024 * 1024;
const AUDIT_PAGE = 5000;

/** Builds the export document from storage. */
export async function buildExport(
  storage: Storage,
  parts: readonly ExportPart[],
  meta: { readonly hostname: string; readonly createdAt: number },
): Promise<Record<string, unknown>> {
  const want = new Set(parts);
  const out: Record<string, unknown> = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    hostname: meta.hostname,
    createdAt: meta.createdAt,
    parts: EXPORT_PARTS.filter((p) => want.has(p)),
  };
  const users = await storage.listUsers();
  const userNames = new Map(users.map((u) => [u.id, u.name]));
  const units = await storage.listOrgUnits();
  const unitNames = new Map(units.map((u) => [u.id, u.name]));
  if (want.has('directory')) {
    const userList: unknown[] = [];
    for (const u of users) {
      const [devices, unitIds] = await Promise.all([
        storage.listDevices(u.id),
        storage.listUserOrgUnits(u.id),
      ]);
      userList.push({
        id: u.id,
        name: u.name,
        roles: [...u.roles],
        units: unitIds.map((id) => unitNames.get(id)).filter((n) => n !== undefined),
        enrolled: u.identityKey !== undefined,
        createdAt: u.createdAt,
        devices: devices.map((d) => ({ deviceId: d.deviceId, name: d.name, createdAt: d.createdAt })),
      });
    }
    const grants = (await storage.listGrants()).map((g) => ({
      user: userNames.get(g.userId) ?? g.userId,
      role: g.role,
      scope:
        g.scope.kind === 'global'
          ? { kind: 'global' }
          : g.scope.kind === 'unit'
            ? { kind: 'unit', unit: unitNames.get(g.scope.unitId) ?? g.scope.unitId }
            : { kind: 'channel', channelId: g.scope.channelId },
    }));
    const orgUnits: unknown[] = [];
    for (const u of units) {
      const members = await storage.listOrgUnitUsers(u.id);
      orgUnits.push({
        id: u.id,
        name: u.name,
        ...(u.parentId === undefined ? {} : { parent: unitNames.get(u.parentId) ?? u.parentId }),
        users: members.map((id) => userNames.get(id) ?? id).sort(),
        createdAt: u.createdAt,
      });
    }
    out.directory = {
      users: userList,
      roles: (await storage.listRoles()).map((r) => ({
        name: r.name,
        builtin: r.builtin,
        permissions: [...r.permissions],
        createdAt: r.createdAt,
      })),
      grants,
      orgUnits,
    };
  }
  if (want.has('channels')) {
    const channels: unknown[] = [];
    for (const c of await storage.listChannels()) {
      const members = await storage.channelMembers(c.id);
      channels.push({
        id: c.id,
        name: c.name,
        ...(c.unitId === undefined ? {} : { unit: unitNames.get(c.unitId) ?? c.unitId }),
        createdBy: userNames.get(c.createdBy) ?? c.createdBy,
        logSeq: c.seq,
        createdAt: c.createdAt,
        members: members.map((m) => ({
          user: userNames.get(m.userId) ?? m.userId,
          role: m.role,
          addedSeq: m.addedSeq,
        })),
      });
    }
    out.channels = channels;
  }
  if (want.has('audit')) {
    const records: unknown[] = [];
    let after: number | undefined;
    for (;;) {
      const page = await storage.listAudit({
        limit: AUDIT_PAGE,
        ...(after === undefined ? {} : { afterSeq: after }),
      });
      for (const r of page) {
        records.push({
          seq: r.seq,
          at: r.at,
          actor: r.actor,
          action: r.action,
          target: r.target,
          outcome: r.outcome,
          ...(r.detail === undefined ? {} : { detail: r.detail }),
          prevHash: r.prevHash,
          hash: r.hash,
        });
      }
      const last = page.at(-1)?.seq;
      if (page.length < AUDIT_PAGE || last === undefined || (after !== undefined && last <= after)) break;
      after = last;
    }
    out.audit = { records, verification: await storage.verifyAudit() };
  }
  return out;
}

export interface ExportOptions {
  readonly storage: Storage;
  readonly kms: Kms;
  readonly hostname: string;
  readonly parts: readonly ExportPart[];
  readonly recoveryKey?: Uint8Array;
  readonly segmentSize?: number;
  readonly clock?: () => number;
}

/** Builds the export and prepares its archive. */
export async function prepareExport(options: ExportOptions): Promise<PreparedArchive> {
  const parts = EXPORT_PARTS.filter((p) => options.parts.includes(p));
  if (parts.length === 0) throw new ServerError('INVALID_ARGUMENT', '"parts" expected at least one part');
  const createdAt = (options.clock ?? Date.now)();
  const doc = await buildExport(options.storage, parts, { hostname: options.hostname, createdAt });
  const bytes = new TextEncoder().encode(`${JSON.stringify(doc)}\n`);
  const archive = await newArchive({
    kind: 'export',
    hostname: options.hostname,
    payloadBytes: bytes.length,
    kms: options.kms,
    clock: () => createdAt,
    ...(options.recoveryKey ? { recoveryKey: options.recoveryKey } : {}),
    ...(options.segmentSize ? { segmentSize: options.segmentSize } : {}),
  });
  return {
    archiveId: archive.header.archiveId,
    kind: 'export',
    totalBytes: archive.totalBytes,
    what: parts.join(','),
    async *chunks() {
      try {
        yield archive.headerBytes;
        yield* archive.seal([bytes]);
      } finally {
        archive.destroy();
      }
    },
    dispose: () => archive.destroy(),
  };
}

/**
 * Opens an export archive: checks its header and length, unwraps its key, authenticates
 * every segment and returns the document with the archive's id and source hostname.
 */
export async function readExport(
  path: string,
  source: ArchiveKeySource,
  onProgress?: (done: number, total: number) => void,
): Promise<{ archiveId: string; hostname: string; createdAt: number; document: Record<string, unknown> }> {
  const file = readArchiveHeader(path);
  if (file.header.kind !== 'export') {
    throw new ServerError('ARCHIVE_INVALID', `this archive is a ${file.header.kind}, not an export`);
  }
  if (file.header.payloadBytes > MAX_EXPORT_BYTES)
    throw new ServerError('ARCHIVE_INVALID', 'the export is too large to read');
  const key = await openArchiveKey(file, source);
  const chunks: Uint8Array[] = [];
  try {
    for (const c of openSegments(file, key, onProgress)) chunks.push(c);
  } finally {
    key.fill(0);
  }
  let document: unknown;
  try {
    document = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new ServerError('ARCHIVE_INVALID', 'the export payload is not JSON');
  }
  const d = document as { format?: unknown; version?: unknown } | null;
  if (typeof d !== 'object' || d === null || d.format !== EXPORT_FORMAT || d.version !== EXPORT_VERSION) {
    throw new ServerError('ARCHIVE_INVALID', 'the export payload has an unknown format');
  }
  return {
    archiveId: file.header.archiveId,
    hostname: file.header.hostname,
    createdAt: file.header.createdAt,
    document: document as Record<string, unknown>,
  };
}
