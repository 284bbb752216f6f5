/** Test helpers for the event bus tests. */
import type { BusEvent } from './bus.js';

export const U1 = '0123456789abcdef0123456789abcdef';
export const C1 = 'fedcba9876543210fedcba9876543210';

/** One event of every type (and both forms of the optional fields). */
export const EVERY_EVENT: readonly BusEvent[] = [
  { type: 'mail', userId: U1, deviceId: 3 },
  { type: 'device-removed', userId: U1, deviceId: 2 },
  { type: 'device-removed', userId: U1 },
  { type: 'authz-changed', userId: U1 },
  { type: 'authz-changed' },
  { type: 'channel-changed', channelId: C1, seq: 17 },
  { type: 'resync' },
  { type: 'device-connected', userId: U1, deviceId: 4, connectionId: C1 },
  { type: 'device-disconnected', userId: U1, deviceId: 4, connectionId: C1 },
  { type: 'presence', every: 5000, devices: [`${U1}/4/${C1}`, `${U1}/12/${C1}`] },
  { type: 'presence', every: 100, devices: [] },
  { type: 'challenge-used', challenge: C1 + C1 },
];

/** Polls `cond` every 10 ms; throws with `what` after `timeoutMs`. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
