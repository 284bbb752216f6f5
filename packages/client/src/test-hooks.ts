/**
 * Hooks into QalqonClient for tests only: filled in by client.ts, not exported by the
 * package (index.ts), imported by tests from this file directly.
 */
import type { QalqonClient } from './client.js';

export interface FileRefOverride {
  readonly key?: string;
  readonly name?: string;
  readonly sha256?: string;
}

export const testHooks: {
  /**
   * Sends `to` a 1:1 message announcing the file `fileId` as this profile knows it (from
   * any sender's message), with `override` applied: what the file's uploader does to
   * announce it again, or, with another key, what a malicious sender's modified client
   * could send (a message naming another user's file id).
   */
  announceFile?: (
    client: QalqonClient,
    to: string,
    fileId: string,
    override?: FileRefOverride,
  ) => Promise<{ id: string; sentAt: number; devices: number }>;
} = {};
