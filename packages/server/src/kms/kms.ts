/**
 * Key custody. A KMS holds key-encryption keys (KEKs) that never leave it and wraps the
 * server's data keys (DEKs) with them; only wrapped DEKs are ever written to disk.
 *
 * The interface is shaped for a PKCS#11 token as much as for the local key file:
 * - a wrapped key names the KEK version that wrapped it, so after `rotate()` old wrapped
 *   keys still unwrap (several versions coexist) and can be re-wrapped under the new
 *   version without touching the data they encrypt; `destroy()` then retires the old one;
 * - every call is asynchronous, because a token call may block on hardware or a session;
 * - the KMS wraps and unwraps only: it never hands out a KEK, so a non-extractable token
 *   key works unchanged.
 */

/** Which implementation holds the KEKs. */
export type KmsProvider = 'local' | 'pkcs11';

/** A KEK version as the KMS describes it: metadata only, never key bytes. */
export interface KekVersion {
  /** Stable identifier, bound into every key it wraps. `[A-Za-z0-9._-]{1,64}`. */
  readonly id: string;
  /** Creation time, milliseconds since the epoch. */
  readonly createdAt: number;
  /** True for the one version new keys are wrapped with. */
  readonly active: boolean;
}

export interface KmsDescription {
  readonly provider: KmsProvider;
  /** Where the KEKs live, for operators: a file path or a token label. Never secret. */
  readonly location: string;
  /** The version `wrap()` uses. */
  readonly activeKeyId: string;
  /** Every version still held, oldest first. */
  readonly keys: readonly KekVersion[];
}

/**
 * A DEK wrapped by the KMS. `keyId` says which KEK version can unwrap it; `context` names
 * what the key is for and is authenticated with it, so a wrapped key cannot be passed off
 * as another (e.g. the field key as the database key). `ciphertext` is opaque and
 * provider-specific (for `local`: nonce ‖ AES-256-GCM ciphertext ‖ tag).
 */
export interface WrappedKey {
  readonly keyId: string;
  readonly context: string;
  readonly ciphertext: Uint8Array;
}

export interface Kms {
  describe(): Promise<KmsDescription>;
  /** Wraps a 32-byte DEK under the active KEK version, binding `context`. */
  wrap(dek: Uint8Array, context: string): Promise<WrappedKey>;
  /**
   * Unwraps a key wrapped by any version still held. Throws KMS_KEY_NOT_FOUND when its
   * version was destroyed (or never existed here), KMS_UNWRAP_FAILED when it does not
   * authenticate (corrupted, or its keyId/context were altered).
   */
  unwrap(wrapped: WrappedKey): Promise<Uint8Array>;
  /** Creates a new KEK version, makes it active, and returns its id. Old versions stay until destroyed. */
  rotate(): Promise<string>;
  /**
   * Destroys a KEK version; keys wrapped by it can never be unwrapped again. Refuses the
   * active version (KMS_KEY_ACTIVE). Callers re-wrap everything first (DekRegistry.rewrapAll).
   */
  destroy(keyId: string): Promise<void>;
  /** Forgets any key material held in memory. The KMS cannot be used afterwards. */
  close(): Promise<void>;
}

/** KEK version ids and wrap contexts: printable, bounded, safe in file names and logs. */
export const KEY_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
export const CONTEXT_PATTERN = /^[A-Za-z0-9._:/-]{1,128}$/;
