/** The identity handover through the server's link slot: only the device that opened the slot can open it. */
import { describe, expect, it } from 'vitest';
import { isClientError } from './errors.js';
import { linkCodeFor, newLinkRequest, openHandover, sealHandover, splitLinkCode } from './link-handover.js';

const SLOT = 'AbCdEfGhIjKlMnOpQrSt';
const SECRET = new TextEncoder().encode('{"identity":"stand-in for a serialised key pair"}');

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isClientError(err) ? err.code : `not a ClientError: ${String(err)}`;
  }
  return undefined;
}

describe('link handover', () => {
  it('round-trips to the device that made the request', () => {
    const { ephemeral, request } = newLinkRequest();
    const code = linkCodeFor(SLOT, request);
    expect(splitLinkCode(code)).toEqual({
      slotCode: SLOT,
      commitment: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/),
    });
    const handover = sealHandover(code, request, SECRET);
    // The server sees ciphertext only.
    expect(Buffer.from(handover).includes(Buffer.from('stand-in'))).toBe(false);
    expect(openHandover(ephemeral, request, handover)).toEqual(SECRET);
  });

  it('refuses a request the server swapped in (it does not match the code the user carried)', () => {
    const mine = newLinkRequest();
    const servers = newLinkRequest();
    expect(codeOf(() => sealHandover(linkCodeFor(SLOT, mine.request), servers.request, SECRET))).toBe(
      'LINK_HANDOVER_INVALID',
    );
  });

  it('cannot be opened by another key, and a changed byte anywhere is refused', () => {
    const { ephemeral, request } = newLinkRequest();
    const handover = sealHandover(linkCodeFor(SLOT, request), request, SECRET);
    expect(codeOf(() => openHandover(newLinkRequest().ephemeral, request, handover))).toBe(
      'LINK_HANDOVER_INVALID',
    );
    for (const i of [0, 1, 20, 33, 40, handover.length - 1]) {
      const bad = handover.slice();
      bad[i]! ^= 0x01;
      expect(
        codeOf(() => openHandover(ephemeral, request, bad)),
        `byte ${i}`,
      ).toBe('LINK_HANDOVER_INVALID');
    }
    expect(codeOf(() => openHandover(ephemeral, request, handover.subarray(0, 60)))).toBe(
      'LINK_HANDOVER_INVALID',
    );
  });

  it('checks the form of a typed link code', () => {
    for (const bad of [
      '',
      SLOT,
      `${SLOT}.`,
      `${SLOT}.short`,
      `short.${'A'.repeat(22)}`,
      `${SLOT}.${'A'.repeat(21)}!`,
    ]) {
      expect(
        codeOf(() => splitLinkCode(bad)),
        bad,
      ).toBe('INVALID_ARGUMENT');
    }
  });
});
