import { WireError } from '@qalqon/wire';
import { describe, expect, it } from 'vitest';
import { ClientError } from './errors.js';
import { MAX_RETRY_WAIT_MS, retryDelay } from './files.js';

describe('retryDelay', () => {
  it('backs off exponentially, waits longer when the server asks, and never longer than the cap', () => {
    const broken = new ClientError('SERVER_UNREACHABLE', 'the connection broke off');
    expect([1, 2, 3, 4].map((n) => retryDelay(broken, n))).toEqual([250, 500, 1000, 2000]);
    const busy = (ms: number) => new WireError('RATE_LIMITED', 'busy', { status: 429, retryAfterMs: ms });
    expect(retryDelay(busy(1000), 1)).toBe(1000);
    // A shorter request than the backoff does not shorten it.
    expect(retryDelay(busy(10), 3)).toBe(1000);
    // A forged or absurd retry-after cannot park a transfer.
    expect(retryDelay(busy(10 ** 12), 1)).toBe(MAX_RETRY_WAIT_MS);
    expect(retryDelay(busy(Number.MAX_SAFE_INTEGER), 2)).toBe(MAX_RETRY_WAIT_MS);
    expect(retryDelay(new WireError('RATE_LIMITED', 'busy', { status: 429 }), 1)).toBe(250);
    expect(retryDelay(broken, 30)).toBe(MAX_RETRY_WAIT_MS);
  });
});
