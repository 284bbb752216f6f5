/**
 * Files: end-to-end encrypted attachments, uploaded in a resumable stream and downloaded
 * with HTTP range requests.
 *
 * The client encrypts a file with a fresh key (the key travels only inside the message) and
 * uploads the ciphertext; the server never sees the key, the name or the type, only the
 * ciphertext's size. At rest the server encrypts the ciphertext again, in chunks, under a
 * per-file data key wrapped by its KMS.
 *
 * Routes (bearer-authenticated):
 *
 * | route | request | response |
 * |---|---|---|
 * | `GET /v1/files` | — | FileUsageResponse |
 * | `POST /v1/files` | FileCreateRequest | FileStatus |
 * | `GET /v1/files/:fileId` | — | FileStatus (the uploader, or a recipient once complete) |
 * | `PUT /v1/files/:fileId/content` | raw bytes, `Content-Type: application/octet-stream`, `Content-Range: bytes START-END/SIZE` | FileStatus |
 * | `GET /v1/files/:fileId/content` | optional `Range: bytes=A-B` | the bytes (200, or 206 with `Content-Range`) |
 * | `DELETE /v1/files/:fileId` | — | OkResponse (the uploader) |
 *
 * An upload may be sent in one request or several; each PUT must start exactly where the
 * stored bytes end (`received`), so an interrupted upload resumes from `GET` → `received`.
 * Bytes of a PUT that is cut off are kept up to the last whole at-rest chunk. When
 * `received === size` the file is complete and becomes readable by its recipients: the
 * users named in `to`, or the members of `channel` (checked at every download), and its
 * uploader.
 */
import { z } from 'zod';
import { ChannelId } from './channels.js';
import { Timestamp, UserId, UserName } from './primitives.js';

/** Server-generated: 32 lower-case hex digits. */
export const FileId = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');
export const FileIdParam = z.strictObject({ fileId: FileId });
/** The largest file the wire allows (the server's configured limit may be lower). */
export const MAX_FILE_BYTES = 64 * 1024 * 1024 * 1024;
/** The largest at-rest chunk a server may use for a file (FileStatus.chunkSize). */
export const MAX_FILE_CHUNK_BYTES = 16 * 1024 * 1024;
/** Most recipient users one file may name. */
export const MAX_FILE_RECIPIENTS = 256;

export const FileCreateRequest = z
  .strictObject({
    /** Ciphertext size in bytes, exactly. */
    size: z.int().min(1).max(MAX_FILE_BYTES),
    /** Users who may download it once complete (the uploader always may). */
    to: z.array(UserName).min(1).max(MAX_FILE_RECIPIENTS).optional(),
    /** Or: the members of this channel (at download time). */
    channel: ChannelId.optional(),
  })
  .refine((r) => (r.to === undefined) !== (r.channel === undefined), {
    message: 'exactly one of "to" and "channel"',
  });

export const FileStatus = z.strictObject({
  id: FileId,
  /**
   * The id of the user who created (uploads) the file. A client takes a file's key only
   * from a message this user sent: another sender's message naming the same id is not the
   * file's.
   */
  uploaderId: UserId,
  size: z.int().min(1).max(MAX_FILE_BYTES),
  /** Bytes stored so far; resume an upload from here. */
  received: z.int().min(0).max(MAX_FILE_BYTES),
  /**
   * The server's at-rest chunk size for this file: an upload request that does not reach
   * the end of the file must end at a multiple of it.
   */
  chunkSize: z.int().min(1).max(MAX_FILE_CHUNK_BYTES),
  complete: z.boolean(),
  createdAt: Timestamp,
});

/** A user's storage use, as `GET /v1/files` answers it. */
export const FileUsageResponse = z.strictObject({
  /** Bytes of this user's files (complete and in progress). */
  used: z.int().min(0),
  /** The user's quota in bytes. */
  quota: z.int().min(0),
  /** The largest single file the server accepts. */
  maxFileBytes: z.int().min(0),
});
