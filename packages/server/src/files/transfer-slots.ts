/**
 * Bounds the file content requests (uploads and downloads) a node serves at once, in all
 * and per user (FileServiceLimits.maxConcurrentTransfers / ...PerUser). Each transfer
 * holds buffers of several MiB for as long as it runs, and a client chooses how many it
 * runs in parallel: without a bound, one user (or a few) opening many at once could take
 * the node's memory. A refused request gets RATE_LIMITED (429, with a retry-after) before
 * a byte of its body is read; clients retry such transfers with backoff. Counts are per
 * node, like the sign-in rate limits.
 */
import { ApiError } from '../service/api-error.js';

/** How long a refused client is asked to wait, milliseconds. */
export const TRANSFER_RETRY_AFTER_MS = 1_000;

export class TransferSlots {
  readonly #max: number;
  readonly #maxPerUser: number;
  readonly #perUser = new Map<string, number>();
  #active = 0;

  constructor(max: number, maxPerUser: number) {
    this.#max = max;
    this.#maxPerUser = maxPerUser;
  }

  /** Transfers running now. */
  get active(): number {
    return this.#active;
  }

  /**
   * Takes a slot for `userId`; returns the function that gives it back (idempotent).
   * RATE_LIMITED when the user's or the node's transfers are all taken.
   */
  acquire(userId: string): () => void {
    const mine = this.#perUser.get(userId) ?? 0;
    if (mine >= this.#maxPerUser) {
      throw new ApiError(
        'RATE_LIMITED',
        429,
        `at most ${this.#maxPerUser} file transfers at once per user; try again when one has ended`,
        TRANSFER_RETRY_AFTER_MS,
      );
    }
    if (this.#active >= this.#max) {
      throw new ApiError(
        'RATE_LIMITED',
        429,
        'the server is serving as many file transfers as it may; try again shortly',
        TRANSFER_RETRY_AFTER_MS,
      );
    }
    this.#perUser.set(userId, mine + 1);
    this.#active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#active--;
      const left = (this.#perUser.get(userId) ?? 1) - 1;
      if (left === 0) this.#perUser.delete(userId);
      else this.#perUser.set(userId, left);
    };
  }
}
