import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import { generateIdentityKeyPair, generateKyberPreKey, generateSignedPreKey } from './keys.js';
import { createPreKeyBundle } from './prekey-bundle.js';
import { encryptMessage, processPreKeyBundle } from './session-cipher.js';
import {
  decodeSessionState,
  deserializeSessionRecord,
  encodeSessionState,
  SESSION_RECORD_FORMAT,
  SessionRecord,
} from './session-record.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isProtocolError(e) ? e.code : `not a ProtocolError: ${String(e)}`;
  }
  return undefined;
}

function record(): SessionRecord {
  const alice = { identityKeyPair: generateIdentityKeyPair(), registrationId: 1 };
  const bob = generateIdentityKeyPair();
  const bundle = createPreKeyBundle({
    registrationId: 2,
    deviceId: 1,
    identity: bob,
    signedPreKey: generateSignedPreKey(bob, 1),
    kyberPreKey: generateKyberPreKey(bob, 2),
  });
  const first = processPreKeyBundle(undefined, bundle, alice).record;
  const second = processPreKeyBundle(first, bundle, alice).record;
  return encryptMessage(second, new Uint8Array(3)).record;
}

describe('session records', () => {
  it('round-trips: format byte first, current state and archived states', () => {
    const rec = record();
    const bytes = rec.serialize();
    expect(bytes[0]).toBe(SESSION_RECORD_FORMAT);
    const back = deserializeSessionRecord(bytes);
    expect(back.serialize()).toEqual(bytes);
    expect(back.previousStates.length).toBe(1);
    expect(back.currentState).toEqual(rec.currentState);
    // The archived state lost its pending prekey, as in libsignal.
    expect(back.previousState(0).pendingPreKey).toBeUndefined();
    expect(rec.currentState!.pendingPreKey?.kyberCiphertext.length).toBe(1569);
    const s = rec.currentState!;
    expect(decodeSessionState(encodeSessionState(s))).toEqual(s);
  });

  it('an empty record round-trips', () => {
    const bytes = SessionRecord.empty().serialize();
    expect(bytes).toEqual(Uint8Array.of(SESSION_RECORD_FORMAT, 0, 0));
    expect(deserializeSessionRecord(bytes).hasCurrentState).toBe(false);
  });

  it('is independent of the buffer it was read from and of the bytes it returns', () => {
    const bytes = record().serialize();
    const rec = deserializeSessionRecord(bytes);
    const copy = bytes.slice();
    bytes.fill(0);
    expect(rec.serialize()).toEqual(copy);
    rec.serialize().fill(0);
    expect(rec.serialize()).toEqual(copy);
  });

  it('every truncation, an extension, and a wrong format byte are INVALID_STATE', () => {
    const bytes = record().serialize();
    for (let n = 0; n < bytes.length; n++) {
      expect(code(() => deserializeSessionRecord(bytes.subarray(0, n)))).toBe('INVALID_STATE');
    }
    expect(code(() => deserializeSessionRecord(Uint8Array.of(...bytes, 0)))).toBe('INVALID_STATE');
    expect(code(() => deserializeSessionRecord(Uint8Array.of(2, ...bytes.subarray(1))))).toBe(
      'INVALID_STATE',
    );
    expect(code(() => deserializeSessionRecord('x' as unknown as Uint8Array))).toBe('INVALID_ARGUMENT');
  });
});
