/**
 * A KMS whose key-encryption keys live in a PKCS#11 token (an HSM in production, SoftHSM2
 * in tests). The KEKs are generated inside the token and can never leave it; this class
 * only ever holds object handles, and every wrap and unwrap runs inside the token.
 *
 * Mechanism: CKM_AES_GCM through C_Encrypt/C_Decrypt (PKCS#11 v2.40 Current Mechanisms
 * section 2.10.4 "AES-GCM"), with the KEK version id and the caller's context as the
 * additional authenticated data — the same construction as LocalKms, so a wrapped key
 * cannot be relabelled to another version or another purpose. Why not C_WrapKey: the
 * interface wraps DEK *bytes* (the server uses them in memory for SQLCipher and field
 * sealing), not token objects, so C_WrapKey would first need the DEK imported as an
 * extractable token object; and SoftHSM2 2.6 lists CKM_AES_GCM with CKF_ENCRYPT|CKF_DECRYPT
 * but not CKF_WRAP (C_GetMechanismInfo), leaving CKM_AES_KEY_WRAP(_PAD) (RFC 3394/5649) as
 * its only integrity-checked wrap, which cannot bind a context and so would need a second
 * in-token MAC to do what one GCM call does. The KEK therefore carries
 * CKA_ENCRYPT/CKA_DECRYPT and not CKA_WRAP/CKA_UNWRAP: it can encrypt caller data but can
 * never export another token key.
 *
 * The IV is 96 random bits from the host's CSPRNG, passed in CK_GCM_PARAMS (NIST SP 800-38D
 * section 8.2.2, RBG-based IVs; a DEK is wrapped a handful of times, far below 2^32).
 * PKCS#11 v3.0 added message-based encryption (C_EncryptMessage, v3.0 base section 5.13)
 * where the token may generate the IV itself, which some FIPS-mode HSMs insist on; SoftHSM2
 * 2.6 implements v2.40 only, so that path cannot be tested here and is not used.
 *
 * Token layout: each KEK version is one AES-256 secret-key object, CKA_TOKEN (persistent),
 * CKA_PRIVATE (invisible before login), CKA_SENSITIVE and not CKA_EXTRACTABLE, labelled with
 * its version id (`qalqon-kek-<16 hex>`) and carrying its creation time (8 bytes, big-endian
 * milliseconds) in CKA_ID. The active version is the newest one. No other state exists, so
 * every change is a single token operation (C_GenerateKey, C_DestroyObject) and a crash
 * cannot leave the token half-updated. Keys under other labels are ignored, so the token may
 * hold other applications' objects. On every listing the token's own CKA_ALWAYS_SENSITIVE and
 * CKA_NEVER_EXTRACTABLE (v2.40 base section 4.9.2: set by the token, not the caller) must be
 * true: a key that was ever readable is refused, not used.
 *
 * Process model: C_Initialize/C_Finalize are per process and per module (v2.40 base section
 * 5.4), and the login state is shared by all sessions of the process (section 5.6), so
 * modules are reference-counted below and a token may be opened by one Pkcs11Kms at a time.
 * Token calls run one at a time per instance: a session holds only one active encryption
 * operation (section 5.8), and the blocking calls run on the libuv pool (the *Async
 * bindings), which is why the module is initialised with CKF_OS_LOCKING_OK.
 */
import { realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { AES256_KEY_LEN, GCM_NONCE_LEN, GCM_TAG_LEN, randomBytes } from '@qalqon/crypto';
import type { GcmParams, Handle, Mechanism, PKCS11, Template } from 'pkcs11js';
import pkcs11js from 'pkcs11js';
import { ServerError, type ServerErrorCode } from '../errors.js';
import { checkPrivateFile } from '../secure-file.js';
import { abytes, astring } from '../validate.js';
import { CONTEXT_PATTERN, KEY_ID_PATTERN, type Kms, type KmsDescription, type WrappedKey } from './kms.js';

/** Where the user PIN comes from. Never the PIN itself: config files and argv are not for secrets. */
export type Pkcs11PinSource =
  /** The name of an environment variable holding the PIN. */
  | { readonly env: string }
  /** A file (mode 0600, owned by this user) holding the PIN; one trailing newline is ignored. */
  | { readonly file: string };

export interface Pkcs11KmsConfig {
  /** Absolute path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly module: string;
  /** The token's label (CKA_LABEL of the token, at most 32 bytes, unique among the module's tokens). */
  readonly tokenLabel: string;
  readonly pin: Pkcs11PinSource;
}

/** Version ids of KEKs this class made; also their CKA_LABEL in the token. */
const KEK_LABEL_PATTERN = /^qalqon-kek-[0-9a-f]{16}$/;
/** Domain separation for the AAD, distinct from LocalKms's. */
const WRAP_AAD_PREFIX = 'qalqon/pkcs11-kms-wrap/v1';
/** iv ‖ ciphertext of a 32-byte DEK ‖ tag: the same layout and length as LocalKms's. */
export const PKCS11_WRAPPED_LEN = GCM_NONCE_LEN + AES256_KEY_LEN + GCM_TAG_LEN;
/** A PIN longer than this is certainly a misconfiguration (a wrong file); tokens allow far less. */
const MAX_PIN_LEN = 256;
/** Environment variable names as POSIX shells accept them. */
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
/** Token labels: printable ASCII (the label field is 32 blank-padded bytes, v2.40 base section 3.2). */
const TOKEN_LABEL_PATTERN = /^[\x20-\x7e]{1,32}$/;

// CKF_ token flags (v2.40 base section 3.2, CK_TOKEN_INFO), not all exported by pkcs11js.
const CKF_USER_PIN_INITIALIZED = 0x8;
const CKF_TOKEN_INITIALIZED = 0x400;
const CKF_USER_PIN_LOCKED = 0x40000;

interface KekObject {
  readonly id: string;
  readonly createdAt: number;
  readonly handle: Handle;
}

/** One loaded module: C_Initialize'd once per process, C_Finalize'd when its last user closes. */
interface LoadedModule {
  readonly lib: PKCS11;
  refs: number;
  /** Did we call C_Initialize (false if another part of the process already had)? */
  readonly ownsInit: boolean;
  /** Slots (hex of the slot id) a live Pkcs11Kms is logged in to. */
  readonly slotsInUse: Set<string>;
}

const loaded = new Map<string, LoadedModule>();

/** The CKR_ name of a pkcs11js error, or undefined for anything else. */
function ckr(err: unknown): string | undefined {
  return err instanceof pkcs11js.Pkcs11Error && /^CKR_[A-Z0-9_]+$/.test(err.message)
    ? err.message
    : undefined;
}

/**
 * A ServerError for a failed token call. Only the function and the CKR_ name are quoted:
 * pkcs11js messages carry nothing else of use, and the arguments (PINs, data) never appear.
 */
function tokenError(code: ServerErrorCode, what: string, err: unknown, call?: string): ServerError {
  const name = ckr(err);
  const detail = name ? `${call ? `${call}: ` : ''}${name}` : 'a non-PKCS#11 error';
  return new ServerError(code, `${what} (${detail})`, { cause: name ? undefined : err });
}

function acquireModule(path: string): { key: string; mod: LoadedModule } {
  let key: string;
  try {
    key = realpathSync(path);
  } catch {
    throw new ServerError('KMS_MODULE_UNAVAILABLE', `PKCS#11 module ${path} does not exist`);
  }
  const existing = loaded.get(key);
  if (existing) {
    existing.refs++;
    return { key, mod: existing };
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(key);
  } catch {
    // dlopen's message may quote the file; say only that it is not a loadable module.
    throw new ServerError(
      'KMS_MODULE_UNAVAILABLE',
      `${path} could not be loaded as a PKCS#11 module (not a shared library for this platform, or missing dependencies)`,
    );
  }
  let ownsInit = true;
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckr(err) === 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
      // Someone else in this process initialised it (v2.40 base section 5.4): share, never finalise.
      ownsInit = false;
    } else {
      lib.close();
      throw tokenError('KMS_MODULE_UNAVAILABLE', `PKCS#11 module ${path} failed to initialise`, err);
    }
  }
  const mod: LoadedModule = { lib, refs: 1, ownsInit, slotsInUse: new Set() };
  loaded.set(key, mod);
  return { key, mod };
}

function releaseModule(key: string, mod: LoadedModule): void {
  if (--mod.refs > 0) return;
  loaded.delete(key);
  try {
    // C_Finalize closes every session of this process on this module (v2.40 base section 5.4).
    if (mod.ownsInit) mod.lib.C_Finalize();
  } finally {
    mod.lib.close();
  }
}

/** Reads the user PIN from its source. The PIN is never put in an error message. */
async function readPin(source: Pkcs11PinSource): Promise<string> {
  if (typeof source !== 'object' || source === null) {
    throw new ServerError('INVALID_ARGUMENT', '"config.pin" expected { env } or { file }');
  }
  let pin: string;
  let where: string;
  if ('env' in source) {
    astring('config.pin.env', source.env, 1, 128, ENV_NAME_PATTERN);
    where = `environment variable ${source.env}`;
    const value = process.env[source.env];
    if (value === undefined || value === '') {
      throw new ServerError(
        'KMS_PIN_UNAVAILABLE',
        `the PKCS#11 user PIN is expected in ${where}, which is not set`,
      );
    }
    pin = value;
  } else if ('file' in source) {
    astring('config.pin.file', source.file, 1, 4096);
    where = `PIN file ${source.file}`;
    if (!checkPrivateFile(source.file, `PKCS#11 ${where}`, 'KMS_PIN_UNAVAILABLE')) {
      throw new ServerError('KMS_PIN_UNAVAILABLE', `PKCS#11 ${where} does not exist`);
    }
    pin = (await readFile(source.file, 'utf8')).replace(/\r?\n$/, '');
  } else {
    throw new ServerError('INVALID_ARGUMENT', '"config.pin" expected { env } or { file }');
  }
  if (pin.length === 0 || pin.length > MAX_PIN_LEN || /[\0\r\n]/.test(pin)) {
    throw new ServerError(
      'KMS_PIN_UNAVAILABLE',
      `the PKCS#11 user PIN in ${where} is empty, longer than ${MAX_PIN_LEN} characters or spans several lines`,
    );
  }
  return pin;
}

function checkConfig(config: Pkcs11KmsConfig): void {
  if (typeof config !== 'object' || config === null) {
    throw new ServerError('INVALID_ARGUMENT', '"config" expected object');
  }
  astring('config.module', config.module, 1, 4096);
  if (!isAbsolute(config.module)) {
    // A bare name would be searched along LD_LIBRARY_PATH: whoever controls that picks the "HSM".
    throw new ServerError('INVALID_ARGUMENT', '"config.module" expected an absolute path');
  }
  astring('config.tokenLabel', config.tokenLabel, 1, 32, TOKEN_LABEL_PATTERN);
  if (config.tokenLabel.trim() !== config.tokenLabel) {
    throw new ServerError('INVALID_ARGUMENT', '"config.tokenLabel" has leading or trailing blanks');
  }
}

/** RFC 7512 percent-encoding, keeping only unreserved characters and '/' (for the path). */
function pct(s: string): string {
  return Array.from(new TextEncoder().encode(s), (b) =>
    /[A-Za-z0-9._~/-]/.test(String.fromCharCode(b))
      ? String.fromCharCode(b)
      : `%${b.toString(16).toUpperCase().padStart(2, '0')}`,
  ).join('');
}

function wrapAad(keyId: string, context: string): Buffer {
  // NUL separators: neither the id nor the context can contain one (their patterns exclude it).
  return Buffer.from(`${WRAP_AAD_PREFIX}\0${keyId}\0${context}`, 'utf8');
}

function gcm(iv: Buffer, aad: Buffer): Mechanism {
  // CK_GCM_PARAMS as in the v2.40 errata and v3.0 (with ulIvBits), the layout SoftHSM2 2.6 declares.
  const parameter: GcmParams = {
    type: pkcs11js.CK_PARAMS_AES_GCM_v240,
    iv,
    ivBits: iv.length * 8,
    aad,
    tagBits: GCM_TAG_LEN * 8,
  };
  return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
}

function bool(v: unknown): boolean {
  return Buffer.isBuffer(v) && v.length === 1 && v[0] === 1;
}

export class Pkcs11Kms implements Kms {
  readonly #config: Pkcs11KmsConfig;
  readonly #moduleKey: string;
  readonly #mod: LoadedModule;
  readonly #slotKey: string;
  readonly #session: Handle;
  readonly #clock: () => number;
  #keks: KekObject[] = [];
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Token calls run one at a time: this is the tail of the queue. */
  #tail: Promise<unknown> = Promise.resolve();

  private constructor(
    config: Pkcs11KmsConfig,
    moduleKey: string,
    mod: LoadedModule,
    slotKey: string,
    session: Handle,
    clock: () => number,
  ) {
    this.#config = config;
    this.#moduleKey = moduleKey;
    this.#mod = mod;
    this.#slotKey = slotKey;
    this.#session = session;
    this.#clock = clock;
  }

  /**
   * Generates the first KEK in the token. Refuses (KMS_TOKEN_IN_USE) if the token already
   * holds Qalqon KEKs: they belong to another data directory, and sharing a token would let
   * one server destroy the other's keys.
   */
  static async create(config: Pkcs11KmsConfig, clock: () => number = Date.now): Promise<Pkcs11Kms> {
    const kms = await Pkcs11Kms.#connect(config, clock);
    try {
      await kms.#serial(async () => {
        kms.#keks = kms.#list();
        if (kms.#keks.length > 0) {
          throw new ServerError(
            'KMS_TOKEN_IN_USE',
            `token ${config.tokenLabel} already holds ${kms.#keks.length} Qalqon KEK version(s); open it instead, or use another token`,
          );
        }
        await kms.#generate();
      });
      return kms;
    } catch (err) {
      await kms.close();
      throw err;
    }
  }

  /** Opens a token that `create` initialised. Refuses (KMS_KEY_NOT_FOUND) a token holding no Qalqon KEK. */
  static async open(config: Pkcs11KmsConfig, clock: () => number = Date.now): Promise<Pkcs11Kms> {
    const kms = await Pkcs11Kms.#connect(config, clock);
    try {
      await kms.#serial(async () => {
        kms.#keks = kms.#list();
        if (kms.#keks.length === 0) {
          throw new ServerError(
            'KMS_KEY_NOT_FOUND',
            `token ${config.tokenLabel} holds no Qalqon KEK; it was never initialised, or its keys were deleted`,
          );
        }
      });
      return kms;
    } catch (err) {
      await kms.close();
      throw err;
    }
  }

  /** Loads the module, finds the token, opens a read-write session and logs the user in. */
  static async #connect(config: Pkcs11KmsConfig, clock: () => number): Promise<Pkcs11Kms> {
    checkConfig(config);
    if (typeof clock !== 'function') throw new ServerError('INVALID_ARGUMENT', '"clock" expected function');
    // Read the PIN before touching the module: a missing PIN should not cost a module load.
    const pin = await readPin(config.pin);
    const { key, mod } = acquireModule(config.module);
    const { lib } = mod;
    let slotKey: string | undefined;
    let session: Handle | undefined;
    try {
      const slot = findToken(lib, config);
      slotKey = slot.toString('hex');
      if (mod.slotsInUse.has(slotKey)) {
        slotKey = undefined;
        throw new ServerError(
          'KMS_TOKEN_IN_USE',
          `token ${config.tokenLabel} is already open in this process; PKCS#11 login state is per process, so share that KMS`,
        );
      }
      mod.slotsInUse.add(slotKey);
      checkMechanisms(lib, slot, config.tokenLabel);
      try {
        session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      } catch (err) {
        throw tokenError(
          'KMS_TOKEN_FAILED',
          `cannot open a session on token ${config.tokenLabel}`,
          err,
          'C_OpenSession',
        );
      }
      try {
        lib.C_Login(session, pkcs11js.CKU_USER, pin);
      } catch (err) {
        throw loginError(err, config.tokenLabel);
      }
      return new Pkcs11Kms(config, key, mod, slotKey, session, clock);
    } catch (err) {
      if (session !== undefined) {
        try {
          lib.C_CloseSession(session);
        } catch {
          // The module is finalised just below when we were its only user; nothing more to do.
        }
      }
      if (slotKey !== undefined) mod.slotsInUse.delete(slotKey);
      try {
        releaseModule(key, mod);
      } catch {
        // The error that brought us here is the one worth reporting.
      }
      throw err;
    }
  }

  /** Runs `fn` after every token call queued before it. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  #check(): void {
    if (this.#closed) throw new ServerError('CLOSED', 'the KMS was closed');
  }

  get #lib(): PKCS11 {
    return this.#mod.lib;
  }

  /** Every Qalqon KEK in the token, oldest first, after checking that none was ever extractable. */
  #list(): KekObject[] {
    const lib = this.#lib;
    const s = this.#session;
    const label = this.#config.tokenLabel;
    const handles: Handle[] = [];
    try {
      lib.C_FindObjectsInit(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_TOKEN, value: true },
      ]);
      try {
        for (;;) {
          const batch = lib.C_FindObjects(s, 64);
          if (batch.length === 0) break;
          handles.push(...batch);
        }
      } finally {
        lib.C_FindObjectsFinal(s);
      }
    } catch (err) {
      throw tokenError('KMS_TOKEN_FAILED', `cannot list the keys in token ${label}`, err, 'C_FindObjects');
    }
    const out: KekObject[] = [];
    for (const handle of handles) {
      let attrs: Template;
      try {
        // Reading CKA_LABEL/CKA_ID and the booleans is allowed on a sensitive key; CKA_VALUE is not.
        attrs = lib.C_GetAttributeValue(s, handle, [
          { type: pkcs11js.CKA_LABEL },
          { type: pkcs11js.CKA_ID },
          { type: pkcs11js.CKA_VALUE_LEN },
          { type: pkcs11js.CKA_SENSITIVE },
          { type: pkcs11js.CKA_EXTRACTABLE },
          { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
          { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
          { type: pkcs11js.CKA_ENCRYPT },
          { type: pkcs11js.CKA_DECRYPT },
        ]);
      } catch (err) {
        throw tokenError(
          'KMS_TOKEN_FAILED',
          `cannot read key attributes in token ${label}`,
          err,
          'C_GetAttributeValue',
        );
      }
      const v = attrs.map((a) => a.value);
      const id = Buffer.isBuffer(v[0]) ? v[0].toString('utf8') : '';
      if (!KEK_LABEL_PATTERN.test(id)) continue; // another application's key
      const when = v[1];
      const len = v[2];
      if (!Buffer.isBuffer(when) || when.length !== 8 || !Buffer.isBuffer(len)) {
        throw new ServerError(
          'KMS_KEY_INSECURE',
          `KEK ${id} in token ${label} was not made by Qalqon (bad CKA_ID)`,
        );
      }
      const valueLen = len.length === 8 ? Number(len.readBigUInt64LE()) : len.readUInt32LE();
      const createdAt = Number(when.readBigUInt64BE());
      if (
        valueLen !== AES256_KEY_LEN ||
        !bool(v[3]) ||
        bool(v[4]) ||
        !bool(v[5]) ||
        !bool(v[6]) ||
        !bool(v[7]) ||
        !bool(v[8]) ||
        !Number.isSafeInteger(createdAt)
      ) {
        throw new ServerError(
          'KMS_KEY_INSECURE',
          `KEK ${id} in token ${label} is not a 256-bit key that was generated sensitive and non-extractable ` +
            '(CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE must be true); it may have left the token',
        );
      }
      out.push({ id, createdAt, handle });
    }
    if (new Set(out.map((k) => k.id)).size !== out.length) {
      throw new ServerError('KMS_KEY_INSECURE', `token ${label} holds two KEK objects with the same label`);
    }
    return out.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  }

  #active(): KekObject {
    const kek = this.#keks.at(-1);
    if (!kek)
      throw new ServerError('KMS_KEY_NOT_FOUND', `token ${this.#config.tokenLabel} holds no Qalqon KEK`);
    return kek;
  }

  /** Generates a new KEK version inside the token; being the newest, it becomes active. */
  async #generate(): Promise<string> {
    const id = `qalqon-kek-${Buffer.from(randomBytes(8)).toString('hex')}`;
    const newest = this.#keks.at(-1)?.createdAt ?? Number.NEGATIVE_INFINITY;
    // Strictly after the newest: a clock stepped backwards must not leave an older key active.
    const createdAt = Math.max(this.#clock(), newest + 1);
    const when = Buffer.alloc(8);
    when.writeBigUInt64BE(BigInt(createdAt));
    try {
      await this.#lib.C_GenerateKeyAsync(this.#session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: AES256_KEY_LEN },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        // CKA_MODIFIABLE false: no one can later flip CKA_EXTRACTABLE or relabel it (v2.40 base 4.4).
        { type: pkcs11js.CKA_MODIFIABLE, value: false },
        { type: pkcs11js.CKA_ENCRYPT, value: true },
        { type: pkcs11js.CKA_DECRYPT, value: true },
        { type: pkcs11js.CKA_WRAP, value: false },
        { type: pkcs11js.CKA_UNWRAP, value: false },
        { type: pkcs11js.CKA_SIGN, value: false },
        { type: pkcs11js.CKA_VERIFY, value: false },
        { type: pkcs11js.CKA_DERIVE, value: false },
        { type: pkcs11js.CKA_LABEL, value: id },
        { type: pkcs11js.CKA_ID, value: when },
      ]);
    } catch (err) {
      throw tokenError(
        'KMS_TOKEN_FAILED',
        `token ${this.#config.tokenLabel} could not generate an AES-256 KEK`,
        err,
        'C_GenerateKey',
      );
    }
    this.#keks = this.#list();
    if (this.#active().id !== id) {
      // Only if another process generated a newer one meanwhile; ours is still held.
      throw new ServerError('KMS_TOKEN_FAILED', `KEK ${id} was generated but another version is newer`);
    }
    return id;
  }

  async describe(): Promise<KmsDescription> {
    this.#check();
    return this.#serial(async () => {
      // Re-read: another process (an admin command) may have rotated since.
      this.#keks = this.#list();
      const active = this.#active().id;
      const { module, tokenLabel } = this.#config;
      return {
        provider: 'pkcs11',
        // An RFC 7512 PKCS#11 URI: names the token and the module, never the PIN.
        location: `pkcs11:token=${pct(tokenLabel)}?module-path=${pct(module)}`,
        activeKeyId: active,
        keys: this.#keks.map((k) => ({ id: k.id, createdAt: k.createdAt, active: k.id === active })),
      };
    });
  }

  async wrap(dek: Uint8Array, context: string): Promise<WrappedKey> {
    this.#check();
    abytes('dek', dek, AES256_KEY_LEN);
    astring('context', context, 1, 128, CONTEXT_PATTERN);
    const input = Buffer.from(dek);
    return this.#serial(async () => {
      const kek = this.#active();
      const iv = Buffer.from(randomBytes(GCM_NONCE_LEN));
      const out = Buffer.alloc(AES256_KEY_LEN + GCM_TAG_LEN);
      let sealed: Buffer;
      try {
        this.#lib.C_EncryptInit(this.#session, gcm(iv, wrapAad(kek.id, context)), kek.handle);
        sealed = await this.#lib.C_EncryptAsync(this.#session, input, out);
      } catch (err) {
        throw this.#keyCallError(
          err,
          kek.id,
          'C_Encrypt',
          `token ${this.#config.tokenLabel} could not wrap a key`,
        );
      } finally {
        input.fill(0);
      }
      if (sealed.length !== AES256_KEY_LEN + GCM_TAG_LEN) {
        throw new ServerError(
          'KMS_TOKEN_FAILED',
          `token returned ${sealed.length} bytes for an AES-GCM wrap`,
        );
      }
      const ciphertext = new Uint8Array(PKCS11_WRAPPED_LEN);
      ciphertext.set(iv);
      ciphertext.set(sealed, GCM_NONCE_LEN);
      return { keyId: kek.id, context, ciphertext };
    });
  }

  async unwrap(wrapped: WrappedKey): Promise<Uint8Array> {
    this.#check();
    if (typeof wrapped !== 'object' || wrapped === null) {
      throw new ServerError('INVALID_ARGUMENT', '"wrapped" expected object');
    }
    const keyId = astring('wrapped.keyId', wrapped.keyId, 1, 64, KEY_ID_PATTERN);
    const context = astring('wrapped.context', wrapped.context, 1, 128, CONTEXT_PATTERN);
    const ct = Buffer.from(abytes('wrapped.ciphertext', wrapped.ciphertext, PKCS11_WRAPPED_LEN));
    return this.#serial(async () => {
      let kek = this.#keks.find((k) => k.id === keyId);
      if (!kek) {
        // Perhaps made by another process since we listed (an admin rotate): look again once.
        this.#keks = this.#list();
        kek = this.#keks.find((k) => k.id === keyId);
      }
      if (!kek) {
        throw new ServerError(
          'KMS_KEY_NOT_FOUND',
          `KEK version ${keyId} is not held by token ${this.#config.tokenLabel}`,
        );
      }
      const iv = ct.subarray(0, GCM_NONCE_LEN);
      const out = Buffer.alloc(AES256_KEY_LEN + GCM_TAG_LEN);
      let plain: Buffer;
      try {
        this.#lib.C_DecryptInit(this.#session, gcm(iv, wrapAad(kek.id, context)), kek.handle);
        plain = await this.#lib.C_DecryptAsync(this.#session, ct.subarray(GCM_NONCE_LEN), out);
      } catch (err) {
        const name = ckr(err);
        // v2.40 says a failed GCM tag is CKR_ENCRYPTED_DATA_INVALID; SoftHSM2 2.6 reports it as
        // CKR_GENERAL_ERROR (its OpenSSL decryptFinal failure is not told apart). Both mean
        // "does not authenticate" here, since the key, the lengths and the parameters were just checked.
        if (
          name === 'CKR_ENCRYPTED_DATA_INVALID' ||
          name === 'CKR_ENCRYPTED_DATA_LEN_RANGE' ||
          name === 'CKR_GENERAL_ERROR'
        ) {
          throw new ServerError(
            'KMS_UNWRAP_FAILED',
            `wrapped key for ${context} does not authenticate under KEK version ${kek.id}`,
          );
        }
        throw this.#keyCallError(
          err,
          kek.id,
          'C_Decrypt',
          `token ${this.#config.tokenLabel} could not unwrap a key`,
        );
      }
      try {
        if (plain.length !== AES256_KEY_LEN) {
          throw new ServerError('KMS_UNWRAP_FAILED', `wrapped key for ${context} has the wrong length`);
        }
        return new Uint8Array(plain);
      } finally {
        out.fill(0);
      }
    });
  }

  /** Maps a failed call on a KEK: a handle gone stale (destroyed by another process) is KMS_KEY_NOT_FOUND. */
  #keyCallError(err: unknown, keyId: string, call: string, what: string): ServerError {
    const name = ckr(err);
    if (name === 'CKR_KEY_HANDLE_INVALID' || name === 'CKR_OBJECT_HANDLE_INVALID') {
      this.#keks = this.#keks.filter((k) => k.id !== keyId);
      return new ServerError(
        'KMS_KEY_NOT_FOUND',
        `KEK version ${keyId} is no longer in token ${this.#config.tokenLabel}`,
      );
    }
    return tokenError('KMS_TOKEN_FAILED', what, err, call);
  }

  async rotate(): Promise<string> {
    this.#check();
    return this.#serial(async () => {
      this.#keks = this.#list();
      return this.#generate();
    });
  }

  async destroy(keyId: string): Promise<void> {
    this.#check();
    astring('keyId', keyId, 1, 64, KEY_ID_PATTERN);
    return this.#serial(async () => {
      this.#keks = this.#list();
      const victim = this.#keks.find((k) => k.id === keyId);
      const label = this.#config.tokenLabel;
      if (!victim)
        throw new ServerError('KMS_KEY_NOT_FOUND', `KEK version ${keyId} is not held by token ${label}`);
      if (victim === this.#active()) {
        throw new ServerError(
          'KMS_KEY_ACTIVE',
          `KEK version ${keyId} is active; rotate before destroying it`,
        );
      }
      try {
        this.#lib.C_DestroyObject(this.#session, victim.handle);
      } catch (err) {
        throw tokenError(
          'KMS_TOKEN_FAILED',
          `token ${label} could not destroy KEK ${keyId}`,
          err,
          'C_DestroyObject',
        );
      }
      this.#keks = this.#keks.filter((k) => k !== victim);
    });
  }

  /** Logs out, closes the session and, for the module's last user, calls C_Finalize. */
  async close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    // Queued calls finish first; close never throws for their failures.
    this.#closing = this.#tail.then(() => {
      const lib = this.#lib;
      this.#keks = [];
      try {
        // Logging out invalidates every handle (private objects vanish), then the session goes.
        lib.C_Logout(this.#session);
      } catch {
        // Already logged out (e.g. the token was removed): closing is still the right thing.
      }
      try {
        lib.C_CloseSession(this.#session);
      } catch {
        // As above: the session may already be gone with the token.
      }
      this.#mod.slotsInUse.delete(this.#slotKey);
      releaseModule(this.#moduleKey, this.#mod);
    });
    return this.#closing;
  }
}

/** The slot of the one token labelled `config.tokenLabel`. */
function findToken(lib: PKCS11, config: Pkcs11KmsConfig): Handle {
  let slots: Handle[];
  try {
    slots = lib.C_GetSlotList(true);
  } catch (err) {
    throw tokenError(
      'KMS_TOKEN_FAILED',
      `PKCS#11 module ${config.module} cannot list its slots`,
      err,
      'C_GetSlotList',
    );
  }
  const matches: { slot: Handle; flags: number }[] = [];
  for (const slot of slots) {
    let info: { label: string; flags: number };
    try {
      info = lib.C_GetTokenInfo(slot);
    } catch (err) {
      // A token removed between the two calls is simply not there.
      if (ckr(err) === 'CKR_TOKEN_NOT_PRESENT') continue;
      throw tokenError('KMS_TOKEN_FAILED', 'cannot read a token description', err, 'C_GetTokenInfo');
    }
    // The label is 32 bytes padded with blanks (v2.40 base section 3.2, CK_TOKEN_INFO).
    if (info.label.replace(/[ \0]+$/, '') === config.tokenLabel) matches.push({ slot, flags: info.flags });
  }
  const only = matches[0];
  if (!only || matches.length > 1) {
    throw new ServerError(
      'KMS_TOKEN_NOT_FOUND',
      matches.length > 1
        ? `${matches.length} tokens in ${config.module} are labelled ${config.tokenLabel}; the label must be unique`
        : `no token labelled ${config.tokenLabel} in PKCS#11 module ${config.module}`,
    );
  }
  if ((only.flags & CKF_TOKEN_INITIALIZED) === 0 || (only.flags & CKF_USER_PIN_INITIALIZED) === 0) {
    throw new ServerError(
      'KMS_TOKEN_NOT_FOUND',
      `token ${config.tokenLabel} is not initialised or has no user PIN (initialise it with the HSM's tools first)`,
    );
  }
  if ((only.flags & CKF_USER_PIN_LOCKED) !== 0) {
    throw new ServerError(
      'KMS_PIN_INCORRECT',
      `the user PIN of token ${config.tokenLabel} is locked after too many wrong attempts; the security officer must reset it`,
    );
  }
  return only.slot;
}

/** Refuses a token that cannot generate AES-256 keys or do AES-GCM: better now than at the first wrap. */
function checkMechanisms(lib: PKCS11, slot: Handle, label: string): void {
  const need: [number, number, string][] = [
    [pkcs11js.CKM_AES_KEY_GEN, pkcs11js.CKF_GENERATE, 'CKM_AES_KEY_GEN'],
    [pkcs11js.CKM_AES_GCM, pkcs11js.CKF_ENCRYPT | pkcs11js.CKF_DECRYPT, 'CKM_AES_GCM'],
  ];
  for (const [mech, flags, name] of need) {
    let info: { minKeySize: number; maxKeySize: number; flags: number } | undefined;
    try {
      info = lib.C_GetMechanismInfo(slot, mech);
    } catch (err) {
      if (ckr(err) !== 'CKR_MECHANISM_INVALID') {
        throw tokenError('KMS_TOKEN_FAILED', `cannot query token ${label}`, err, 'C_GetMechanismInfo');
      }
    }
    // Key sizes of AES mechanisms are in bytes (v2.40 Current Mechanisms section 2.10).
    if (!info || (info.flags & flags) !== flags || info.maxKeySize < AES256_KEY_LEN) {
      throw new ServerError('KMS_TOKEN_FAILED', `token ${label} does not support ${name} with 256-bit keys`);
    }
  }
}

function loginError(err: unknown, label: string): ServerError {
  switch (ckr(err)) {
    case 'CKR_PIN_INCORRECT':
    case 'CKR_PIN_INVALID':
    case 'CKR_PIN_LEN_RANGE':
      return new ServerError('KMS_PIN_INCORRECT', `the user PIN of token ${label} is incorrect`);
    case 'CKR_PIN_LOCKED':
      return new ServerError(
        'KMS_PIN_INCORRECT',
        `the user PIN of token ${label} is locked after too many wrong attempts; the security officer must reset it`,
      );
    case 'CKR_USER_ALREADY_LOGGED_IN':
      // Another part of this process logged in: the PIN we were given was never checked.
      return new ServerError(
        'KMS_TOKEN_IN_USE',
        `token ${label} is already logged in by another user of this module in this process`,
      );
    default:
      return tokenError('KMS_TOKEN_FAILED', `cannot log in to token ${label}`, err, 'C_Login');
  }
}
