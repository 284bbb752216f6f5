/**
 * Counts failures (sign-in, enrolment and link codes) per key in a sliding window and
 * refuses further attempts once a key reaches its limit. In memory: a restart forgets the
 * counts, which costs an attacker one restart per window, not a bypass. The table is bounded,
 * so a flood of distinct keys cannot exhaust memory (the oldest entries go first).
 */
import { ApiError } from './api-error.js';

export interface RateLimitOptions {
  /** Failures allowed per key within the window. */
  readonly maxFailures: number;
  readonly windowMs: number;
  /** Keys tracked at once. */
  readonly maxKeys?: number;
  readonly clock?: () => number;
}

export class FailureLimiter {
  readonly #max: number;
  readonly #window: number;
  readonly #maxKeys: number;
  readonly #clock: () => number;
  /** key → failure times, oldest first. Map order is insertion order: the oldest key is first. */
  readonly #failures = new Map<string, number[]>();

  constructor(o: RateLimitOptions) {
    this.#max = o.maxFailures;
    this.#window = o.windowMs;
    this.#maxKeys = o.maxKeys ?? 100_000;
    this.#clock = o.clock ?? Date.now;
  }

  #recent(key: string, now: number): number[] {
    const list = this.#failures.get(key);
    if (!list) return [];
    while (list.length && list[0]! <= now - this.#window) list.shift();
    if (!list.length) this.#failures.delete(key);
    return list;
  }

  /** Throws RATE_LIMITED (429) while any of `keys` is at its limit. */
  check(...keys: string[]): void {
    const now = this.#clock();
    for (const key of keys) {
      const list = this.#recent(key, now);
      if (list.length >= this.#max) {
        const retryAfterMs = Math.max(1, list[0]! + this.#window - now);
        throw new ApiError('RATE_LIMITED', 429, 'too many failed attempts; try again later', retryAfterMs);
      }
    }
  }

  /** Records one failure against each of `keys`. */
  fail(...keys: string[]): void {
    const now = this.#clock();
    for (const key of keys) {
      const list = this.#recent(key, now);
      list.push(now);
      this.#failures.delete(key);
      this.#failures.set(key, list);
      if (this.#failures.size > this.#maxKeys) {
        const oldest = this.#failures.keys().next().value;
        if (oldest !== undefined) this.#failures.delete(oldest);
      }
    }
  }
}
