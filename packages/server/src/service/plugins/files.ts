/**
 * Files (@qalqon/wire files.ts): end-to-end encrypted attachments, uploaded as a resumable
 * stream and downloaded whole or by byte range. The bytes are the client's ciphertext; the
 * server seals them again at rest in chunks (files/chunk-format.ts) under a per-file key
 * wrapped by the KMS (files/file-store.ts).
 *
 * Every route's rule is `device` (ROUTE_RULES); the resource checks are here:
 * - creating a file for users (`to`) needs message.send (as sending them a message would),
 *   for a channel channel.post on it and membership;
 * - the uploader may read the status, upload, download and delete; the recipients (the
 *   named users, or the channel's members at the time of each request) may read the status
 *   and download once the file is complete (FILE_INCOMPLETE before); anyone else gets
 *   FILE_NOT_FOUND, exactly as for an id that does not exist.
 *
 * Upload (`PUT .../content`): the body is never buffered. A content-type parser scoped to
 * this plugin hands the raw request stream to the handler, which checks `Content-Range`
 * against the file (START = received, SIZE = size, END + 1 a chunk boundary or the end)
 * before reading a byte, then seals chunk by chunk and stores them in batches, each synced
 * to disk before it is committed (FileStore.upload); the answer's `received` is on stable
 * storage. Until
 * the body has been read to its end, a refusal closes the connection instead of draining
 * an unread body of up to the file's size.
 *
 * Content requests (upload and download) hold a transfer slot for as long as they run
 * (files/transfer-slots.ts): over the node's bounds, in all or per user, they get
 * RATE_LIMITED with a retry-after before a byte is read or sent.
 *
 * Download (`GET .../content`): the first chunk needed is decrypted before the status line
 * is sent, so a corrupt first chunk is a clean FILE_CORRUPT error; a later corrupt chunk
 * aborts the response mid-stream (the connection is reset, never a wrong byte sent) and is
 * logged.
 */
import { Readable } from 'node:stream';
import { chunkedBody } from '@qalqon/fsio';
import {
  FileCreateRequest,
  FileIdParam,
  MAX_HTTP_BODY_BYTES,
  type FileStatus as WireFileStatus,
  type z,
} from '@qalqon/wire';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { Counter, Gauge } from 'prom-client';
import { isServerError } from '../../errors.js';
import { type FileServiceLimits, FileStore } from '../../files/file-store.js';
import { parseContentRange, parseRange } from '../../files/http-ranges.js';
import { TransferSlots } from '../../files/transfer-slots.js';
import type { Kms } from '../../kms/kms.js';
import type { FileRecipients, StoredFile } from '../../storage/types.js';
import { ApiError } from '../api-error.js';
import {
  authorize,
  channelResource,
  deviceSubject,
  notAMember,
  ownUnitsResource,
  requestIdentity,
} from '../authz.js';
import { parse, type ServiceContext } from '../context.js';
import type { SessionIdentity } from '../sessions.js';

/** How often incomplete uploads past their time-to-live are purged. */
export const FILE_SWEEP_INTERVAL_MS = 10 * 60_000;

/** The status of a file as the wire has it. */
function fileStatus(f: StoredFile): z.output<typeof WireFileStatus> {
  return {
    id: f.id,
    uploaderId: f.ownerId,
    size: f.size,
    received: f.received,
    chunkSize: f.chunkSize,
    complete: f.complete,
    createdAt: f.createdAt,
  };
}

const notFound = () => new ApiError('FILE_NOT_FOUND', 404, 'no such file');

export interface FilesPluginOptions {
  readonly ctx: ServiceContext;
  readonly kms: Kms;
  readonly limits?: Partial<FileServiceLimits> | undefined;
}

export async function filesPlugin(app: FastifyInstance, opts: FilesPluginOptions): Promise<void> {
  const { ctx } = opts;
  const registers = [ctx.metrics.registry];
  const uploaded = new Counter({
    name: 'qalqon_file_bytes_uploaded_total',
    help: 'File bytes received and committed to storage',
    registers,
  });
  const downloaded = new Counter({
    name: 'qalqon_file_bytes_downloaded_total',
    help: 'File bytes decrypted and sent to downloaders',
    registers,
  });
  const refusals = new Counter({
    name: 'qalqon_file_refusals_total',
    help: 'File creations refused for size or quota, and transfers refused for concurrency (RATE_LIMITED)',
    labelNames: ['code'],
    registers,
  });
  const files = new FileStore({
    storage: ctx.storage,
    kms: opts.kms,
    ...(opts.limits === undefined ? {} : { limits: opts.limits }),
    clock: ctx.clock,
    onBytes: (direction, bytes) => (direction === 'uploaded' ? uploaded : downloaded).inc(bytes),
  });
  const slots = new TransferSlots(
    files.limits.maxConcurrentTransfers,
    files.limits.maxConcurrentTransfersPerUser,
  );
  new Gauge({
    name: 'qalqon_file_transfers_active',
    help: 'File uploads and downloads being served',
    registers,
    collect() {
      this.set(slots.active);
    },
  });
  /** A transfer slot for this user, or RATE_LIMITED (counted). */
  const slotFor = (userId: string) => {
    try {
      return slots.acquire(userId);
    } catch (err) {
      refusals.inc({ code: 'RATE_LIMITED' });
      throw err;
    }
  };

  const sweep = setInterval(() => {
    files.purgeIncomplete().catch(() => ctx.log('files: purging incomplete uploads failed'));
  }, FILE_SWEEP_INTERVAL_MS);
  sweep.unref();
  app.addHook('onClose', async () => clearInterval(sweep));

  // Scoped to this plugin: the upload route receives the request stream itself.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  /** How `me` may see the file: as its owner, as a recipient, or not at all. */
  const relation = async (me: SessionIdentity, f: StoredFile): Promise<'owner' | 'recipient' | undefined> => {
    if (f.ownerId === me.userId) return 'owner';
    const r = f.recipients;
    if (r.kind === 'users') return r.userIds.includes(me.userId) ? 'recipient' : undefined;
    return (await ctx.storage.channelMembership(r.channelId, me.userId)) ? 'recipient' : undefined;
  };

  /** The file if `me` may read it (owner always; recipient once complete). */
  const readable = async (me: SessionIdentity, fileId: string): Promise<StoredFile> => {
    const f = await files.get(fileId);
    const rel = f && (await relation(me, f));
    if (!f || !rel) throw notFound();
    if (rel === 'recipient' && !f.complete) {
      throw new ApiError('FILE_INCOMPLETE', 409, 'the file is still being uploaded');
    }
    return f;
  };

  const recipientsOf = async (
    me: SessionIdentity,
    body: z.output<typeof FileCreateRequest>,
  ): Promise<FileRecipients> => {
    const subject = deviceSubject(me);
    if (body.channel !== undefined) {
      const resource = await channelResource(ctx, body.channel);
      const channel = resource.channel;
      if (!channel) throw new ApiError('CHANNEL_NOT_FOUND', 404, 'no such channel');
      await authorize(ctx, subject, 'channel.post', resource, 'POST /v1/files');
      if (!(await ctx.storage.channelMembership(channel.id, me.userId))) {
        throw await notAMember(ctx, subject, resource, 'POST /v1/files');
      }
      return { kind: 'channel', channelId: channel.id };
    }
    await authorize(ctx, subject, 'message.send', await ownUnitsResource(ctx, me), 'POST /v1/files');
    const ids: string[] = [];
    for (const name of new Set(body.to ?? [])) {
      const u = await ctx.storage.findUserByName(name);
      if (!u) throw new ApiError('USER_NOT_FOUND', 404, `no user named ${name}`);
      ids.push(u.id);
    }
    return { kind: 'users', userIds: ids };
  };

  const limits = { bodyLimit: MAX_HTTP_BODY_BYTES };

  app.get('/v1/files', async (req) => {
    const me = requestIdentity(req);
    return {
      used: await files.usage(me.userId),
      quota: files.limits.quotaBytesPerUser,
      maxFileBytes: files.limits.maxFileBytes,
    };
  });

  app.post('/v1/files', limits, async (req) => {
    const me = requestIdentity(req);
    const body = parse(FileCreateRequest, req.body);
    const recipients = await recipientsOf(me, body);
    try {
      return fileStatus(await files.create(me.userId, body.size, recipients));
    } catch (err) {
      if (isServerError(err, 'FILE_TOO_LARGE') || isServerError(err, 'QUOTA_EXCEEDED')) {
        refusals.inc({ code: err.code });
      }
      throw err;
    }
  });

  app.get('/v1/files/:fileId', async (req) => {
    const me = requestIdentity(req);
    const { fileId } = parse(FileIdParam, req.params);
    return fileStatus(await readable(me, fileId));
  });

  app.delete('/v1/files/:fileId', async (req) => {
    const me = requestIdentity(req);
    const { fileId } = parse(FileIdParam, req.params);
    await files.delete(fileId, me.userId);
    return { ok: true as const };
  });

  // streamingBody: exempt from the service's 30 s bound on receiving a request (app.ts).
  app.put('/v1/files/:fileId/content', { ...limits, config: { streamingBody: true } }, async (req, reply) => {
    // Until the body is read to its end, any answer closes the connection (see the header).
    reply.header('connection', 'close');
    const me = requestIdentity(req);
    const { fileId } = parse(FileIdParam, req.params);
    const body = req.body;
    if (!(body instanceof Readable)) {
      throw new ApiError('UNSUPPORTED_MEDIA_TYPE', 415, 'the body must be application/octet-stream');
    }
    const h = req.headers['content-range'];
    const range = parseContentRange(typeof h === 'string' ? h : undefined);
    if (!range) {
      throw new ApiError('BAD_REQUEST', 400, 'expected a Content-Range: bytes START-END/SIZE header');
    }
    const f = await files.get(fileId);
    if (!f || f.ownerId !== me.userId) throw notFound();
    if (range.size !== f.size) {
      throw new ApiError('BAD_REQUEST', 400, `the Content-Range size is not the file's size, ${f.size}`);
    }
    if (f.complete || range.start !== f.received) {
      throw new ApiError(
        'UPLOAD_OFFSET_MISMATCH',
        409,
        f.complete
          ? 'the file is complete'
          : `the upload continues at byte ${f.received}, not ${range.start}`,
      );
    }
    const endExclusive = range.end + 1;
    if (endExclusive !== f.size && endExclusive % f.chunkSize !== 0) {
      throw new ApiError(
        'BAD_REQUEST',
        400,
        `an upload request must end at a multiple of ${f.chunkSize} bytes or at the end of the file`,
      );
    }
    const length = endExclusive - range.start;
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) !== length) {
      throw new ApiError('BAD_REQUEST', 400, 'the Content-Length does not match the Content-Range');
    }
    const release = slotFor(me.userId);
    let updated: StoredFile;
    try {
      // Read in whole chunks, sealed where they lie (@qalqon/fsio chunkedBody).
      updated = await files.upload(f, range.start, length, chunkedBody(body, f.chunkSize));
    } finally {
      release();
    }
    // The body was read to its end: the connection may be reused.
    reply.removeHeader('connection');
    return fileStatus(updated);
  });

  app.get('/v1/files/:fileId/content', async (req, reply: FastifyReply) => {
    const me = requestIdentity(req);
    const { fileId } = parse(FileIdParam, req.params);
    const f = await readable(me, fileId);
    if (!f.complete) throw new ApiError('FILE_INCOMPLETE', 409, 'the file is still being uploaded');
    const h = req.headers.range;
    const range = parseRange(typeof h === 'string' ? h : undefined, f.size);
    if (range.kind === 'unsatisfiable') {
      reply.header('content-range', `bytes */${f.size}`);
      throw new ApiError('RANGE_NOT_SATISFIABLE', 416, `the range lies outside the file's ${f.size} bytes`);
    }
    const start = range.kind === 'partial' ? range.start : 0;
    const end = range.kind === 'partial' ? range.end : f.size - 1;
    // Held until the response ends or its connection closes.
    const release = slotFor(me.userId);
    reply.raw.once('close', release);
    const chunks = files.read(f, start, end);
    let first: IteratorResult<Buffer, void>;
    try {
      first = await chunks.next();
    } catch (err) {
      release();
      if (isServerError(err, 'FILE_CORRUPT')) ctx.log(`files: ${err.message}`);
      throw err;
    }
    async function* rest(): AsyncGenerator<Buffer, void, undefined> {
      try {
        if (!first.done) yield first.value;
        yield* chunks;
      } catch (err) {
        if (isServerError(err, 'FILE_CORRUPT')) ctx.log(`files: ${err.message}; the download was aborted`);
        throw err;
      } finally {
        await chunks.return(undefined);
      }
    }
    reply
      .code(range.kind === 'partial' ? 206 : 200)
      .header('content-type', 'application/octet-stream')
      .header('content-length', String(end - start + 1))
      .header('accept-ranges', 'bytes')
      .header('cache-control', 'no-store');
    if (range.kind === 'partial') reply.header('content-range', `bytes ${start}-${end}/${f.size}`);
    // One chunk read ahead at most: the socket's own buffer holds the rest of the backpressure.
    return reply.send(Readable.from(rest(), { objectMode: false, highWaterMark: f.chunkSize }));
  });
}
