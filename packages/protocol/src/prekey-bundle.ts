/**
 * A prekey bundle: what an initiator fetches from the server to start a PQXDH session
 * (PQXDH specification section 3.2; libsignal `PreKeyBundle`). Every field is checked on
 * entry; `verifyPreKeyBundle` rejects malformed keys (INVALID_KEY) and bad signatures
 * (INVALID_SIGNATURE) before the initiator does any secret-dependent work.
 */
import { parseCurveKey } from './curve.js';
import { ProtocolError } from './errors.js';
import {
  checkBytes,
  checkId,
  type IdentityKeyPair,
  type KyberPreKeyRecord,
  type PreKeyRecord,
  parseKyberPublicKey,
  SIGNATURE_LEN,
  type SignedPreKeyRecord,
  verifyPreKeySignature,
} from './keys.js';

export interface PreKeyBundle {
  readonly registrationId: number;
  readonly deviceId: number;
  /** The one-time prekey, if the server had one left. */
  readonly preKeyId?: number | undefined;
  readonly preKey?: Uint8Array | undefined;
  readonly signedPreKeyId: number;
  /** 33 bytes, `0x05 ‖ u`. */
  readonly signedPreKey: Uint8Array;
  readonly signedPreKeySignature: Uint8Array;
  /** 33 bytes, `0x05 ‖ u`. */
  readonly identityKey: Uint8Array;
  readonly kyberPreKeyId: number;
  /** 1569 bytes, `0x08 ‖ Kyber1024 public key`. */
  readonly kyberPreKey: Uint8Array;
  readonly kyberPreKeySignature: Uint8Array;
}

/** The public parts of a bundle, checked: raw keys as views, ready for PQXDH. */
export interface VerifiedPreKeyBundle {
  readonly bundle: PreKeyBundle;
  readonly identityKeyRaw: Uint8Array;
  readonly signedPreKeyRaw: Uint8Array;
  readonly preKeyRaw: Uint8Array | undefined;
  readonly kyberPreKeyRaw: Uint8Array;
}

/** Builds our own bundle from our records, as a client would publish it. */
export function createPreKeyBundle(args: {
  registrationId: number;
  deviceId: number;
  identity: IdentityKeyPair;
  signedPreKey: SignedPreKeyRecord;
  kyberPreKey: KyberPreKeyRecord;
  preKey?: PreKeyRecord | undefined;
}): PreKeyBundle {
  return {
    registrationId: args.registrationId,
    deviceId: args.deviceId,
    preKeyId: args.preKey?.id,
    preKey: args.preKey?.keyPair.publicKey,
    signedPreKeyId: args.signedPreKey.id,
    signedPreKey: args.signedPreKey.keyPair.publicKey,
    signedPreKeySignature: args.signedPreKey.signature,
    identityKey: args.identity.publicKey,
    kyberPreKeyId: args.kyberPreKey.id,
    kyberPreKey: args.kyberPreKey.publicKey,
    kyberPreKeySignature: args.kyberPreKey.signature,
  };
}

/**
 * Checks the shape of every field (INVALID_ARGUMENT), the type and length of every key
 * (INVALID_KEY), then both signatures (INVALID_SIGNATURE), in that order; no secret is
 * touched. libsignal verifies the same two signatures in `process_prekey_bundle`.
 */
export function verifyPreKeyBundle(bundle: PreKeyBundle): VerifiedPreKeyBundle {
  if (typeof bundle !== 'object' || bundle === null) {
    throw new ProtocolError('INVALID_ARGUMENT', '"bundle" expected an object');
  }
  checkId(bundle.registrationId, 'registrationId');
  checkId(bundle.deviceId, 'deviceId');
  checkId(bundle.signedPreKeyId, 'signedPreKeyId');
  checkId(bundle.kyberPreKeyId, 'kyberPreKeyId');
  if ((bundle.preKeyId === undefined) !== (bundle.preKey === undefined)) {
    throw new ProtocolError('INVALID_ARGUMENT', '"preKeyId" and "preKey" must be given together');
  }
  if (bundle.preKeyId !== undefined) checkId(bundle.preKeyId, 'preKeyId');
  checkBytes(bundle.signedPreKeySignature, SIGNATURE_LEN, 'signedPreKeySignature');
  checkBytes(bundle.kyberPreKeySignature, SIGNATURE_LEN, 'kyberPreKeySignature');

  const identityKeyRaw = parseCurveKey(bundle.identityKey, 'identityKey');
  const signedPreKeyRaw = parseCurveKey(bundle.signedPreKey, 'signedPreKey');
  const preKeyRaw = bundle.preKey === undefined ? undefined : parseCurveKey(bundle.preKey, 'preKey');
  const kyberPreKeyRaw = parseKyberPublicKey(bundle.kyberPreKey, 'kyberPreKey');

  if (!verifyPreKeySignature(bundle.identityKey, bundle.signedPreKey, bundle.signedPreKeySignature)) {
    throw new ProtocolError('INVALID_SIGNATURE', 'the signed prekey signature does not verify');
  }
  if (!verifyPreKeySignature(bundle.identityKey, bundle.kyberPreKey, bundle.kyberPreKeySignature)) {
    throw new ProtocolError('INVALID_SIGNATURE', 'the Kyber prekey signature does not verify');
  }
  return { bundle, identityKeyRaw, signedPreKeyRaw, preKeyRaw, kyberPreKeyRaw };
}
