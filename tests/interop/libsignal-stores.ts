/**
 * In-memory implementations of libsignal 0.90.0's store interfaces (SessionStore,
 * IdentityKeyStore, PreKeyStore, SignedPreKeyStore, KyberPreKeyStore), used by the interop
 * tests and by the protocol benchmark to drive libsignal the same way Qalqon is driven:
 * the session record is kept serialised and is deserialised on every load and serialised
 * on every save, as a real client with a database would.
 *
 * libsignal is AGPL and only ever a devDependency; nothing in `packages/` imports it.
 */
import * as L from 'libsignal-090';

/** libsignal's bindings want ArrayBuffer-backed arrays. */
export const ab = (b: Uint8Array): Uint8Array<ArrayBuffer> => Uint8Array.from(b);

const addressKey = (a: L.ProtocolAddress): string => `${a.name()}.${a.deviceId()}`;

export class InMemorySessionStore extends L.SessionStore {
  readonly #sessions = new Map<string, Uint8Array<ArrayBuffer>>();

  async saveSession(name: L.ProtocolAddress, record: L.SessionRecord): Promise<void> {
    this.#sessions.set(addressKey(name), record.serialize());
  }

  async getSession(name: L.ProtocolAddress): Promise<L.SessionRecord | null> {
    const bytes = this.#sessions.get(addressKey(name));
    return bytes === undefined ? null : L.SessionRecord.deserialize(bytes);
  }

  async getExistingSessions(addresses: L.ProtocolAddress[]): Promise<L.SessionRecord[]> {
    return addresses.map((a) => {
      const bytes = this.#sessions.get(addressKey(a));
      if (bytes === undefined) throw new Error(`no session for ${addressKey(a)}`);
      return L.SessionRecord.deserialize(bytes);
    });
  }

  /** The serialised record, for tests that compare bytes. */
  serialized(name: L.ProtocolAddress): Uint8Array | undefined {
    return this.#sessions.get(addressKey(name));
  }
}

/**
 * Trust on first use, as Signal's clients do by default: an identity is trusted if none is
 * known for the address yet or it equals the known one. `trustAll` turns the check off.
 */
export class InMemoryIdentityKeyStore extends L.IdentityKeyStore {
  readonly #identities = new Map<string, L.PublicKey>();
  readonly #identity: L.IdentityKeyPair;
  readonly #registrationId: number;
  trustAll = false;

  constructor(identity: L.IdentityKeyPair = L.IdentityKeyPair.generate(), registrationId = 1) {
    super();
    this.#identity = identity;
    this.#registrationId = registrationId;
  }

  get identityKeyPair(): L.IdentityKeyPair {
    return this.#identity;
  }

  async getIdentityKey(): Promise<L.PrivateKey> {
    return this.#identity.privateKey;
  }

  override async getIdentityKeyPair(): Promise<L.IdentityKeyPair> {
    return this.#identity;
  }

  async getLocalRegistrationId(): Promise<number> {
    return this.#registrationId;
  }

  async saveIdentity(name: L.ProtocolAddress, key: L.PublicKey): Promise<L.IdentityChange> {
    const k = addressKey(name);
    const old = this.#identities.get(k);
    this.#identities.set(k, key);
    return old !== undefined && !old.equals(key)
      ? L.IdentityChange.ReplacedExisting
      : L.IdentityChange.NewOrUnchanged;
  }

  async isTrustedIdentity(
    name: L.ProtocolAddress,
    key: L.PublicKey,
    _direction: L.Direction,
  ): Promise<boolean> {
    if (this.trustAll) return true;
    const known = this.#identities.get(addressKey(name));
    return known === undefined || known.equals(key);
  }

  async getIdentity(name: L.ProtocolAddress): Promise<L.PublicKey | null> {
    return this.#identities.get(addressKey(name)) ?? null;
  }
}

export class InMemoryPreKeyStore extends L.PreKeyStore {
  readonly #keys = new Map<number, Uint8Array<ArrayBuffer>>();

  async savePreKey(id: number, record: L.PreKeyRecord): Promise<void> {
    this.#keys.set(id, record.serialize());
  }

  async getPreKey(id: number): Promise<L.PreKeyRecord> {
    const bytes = this.#keys.get(id);
    if (bytes === undefined) throw new Error(`no prekey ${id}`);
    return L.PreKeyRecord.deserialize(bytes);
  }

  async removePreKey(id: number): Promise<void> {
    this.#keys.delete(id);
  }

  has(id: number): boolean {
    return this.#keys.has(id);
  }
}

export class InMemorySignedPreKeyStore extends L.SignedPreKeyStore {
  readonly #keys = new Map<number, Uint8Array<ArrayBuffer>>();

  async saveSignedPreKey(id: number, record: L.SignedPreKeyRecord): Promise<void> {
    this.#keys.set(id, record.serialize());
  }

  async getSignedPreKey(id: number): Promise<L.SignedPreKeyRecord> {
    const bytes = this.#keys.get(id);
    if (bytes === undefined) throw new Error(`no signed prekey ${id}`);
    return L.SignedPreKeyRecord.deserialize(bytes);
  }
}

export class InMemoryKyberPreKeyStore extends L.KyberPreKeyStore {
  readonly #keys = new Map<number, Uint8Array<ArrayBuffer>>();
  /** `${kyberId}:${signedId}:${baseKeyHex}` for every use libsignal reported. */
  readonly used: string[] = [];

  async saveKyberPreKey(id: number, record: L.KyberPreKeyRecord): Promise<void> {
    this.#keys.set(id, record.serialize());
  }

  async getKyberPreKey(id: number): Promise<L.KyberPreKeyRecord> {
    const bytes = this.#keys.get(id);
    if (bytes === undefined) throw new Error(`no Kyber prekey ${id}`);
    return L.KyberPreKeyRecord.deserialize(bytes);
  }

  async markKyberPreKeyUsed(id: number, signedPreKeyId: number, baseKey: L.PublicKey): Promise<void> {
    this.used.push(`${id}:${signedPreKeyId}:${Buffer.from(baseKey.serialize()).toString('hex')}`);
  }
}

/** One libsignal endpoint: its stores, its identity, and a fresh set of prekeys. */
export class LibsignalParty {
  readonly sessions = new InMemorySessionStore();
  readonly identities: InMemoryIdentityKeyStore;
  readonly preKeys = new InMemoryPreKeyStore();
  readonly signedPreKeys = new InMemorySignedPreKeyStore();
  readonly kyberPreKeys = new InMemoryKyberPreKeyStore();
  readonly address: L.ProtocolAddress;

  constructor(name: string, deviceId = 1, registrationId = 1) {
    this.identities = new InMemoryIdentityKeyStore(L.IdentityKeyPair.generate(), registrationId);
    this.address = L.ProtocolAddress.new(name, deviceId);
  }

  get identityKeyPair(): L.IdentityKeyPair {
    return this.identities.identityKeyPair;
  }

  /**
   * Generates and stores a signed prekey, a Kyber prekey and (unless `oneTime` is false) a
   * one-time prekey with the given ids, and returns libsignal's bundle for them.
   */
  async newBundle(ids: {
    signed: number;
    kyber: number;
    oneTime?: number | undefined;
  }): Promise<L.PreKeyBundle> {
    const identity = this.identityKeyPair;
    const now = Date.now();
    const spk = L.PrivateKey.generate();
    const spkSig = identity.privateKey.sign(spk.getPublicKey().serialize());
    await this.signedPreKeys.saveSignedPreKey(
      ids.signed,
      L.SignedPreKeyRecord.new(ids.signed, now, spk.getPublicKey(), spk, spkSig),
    );
    const kyber = L.KEMKeyPair.generate();
    const kyberSig = identity.privateKey.sign(kyber.getPublicKey().serialize());
    await this.kyberPreKeys.saveKyberPreKey(
      ids.kyber,
      L.KyberPreKeyRecord.new(ids.kyber, now, kyber, kyberSig),
    );
    let opk: L.PrivateKey | null = null;
    if (ids.oneTime !== undefined) {
      opk = L.PrivateKey.generate();
      await this.preKeys.savePreKey(ids.oneTime, L.PreKeyRecord.new(ids.oneTime, opk.getPublicKey(), opk));
    }
    return L.PreKeyBundle.new(
      await this.identities.getLocalRegistrationId(),
      this.address.deviceId(),
      ids.oneTime ?? null,
      opk?.getPublicKey() ?? null,
      ids.signed,
      spk.getPublicKey(),
      spkSig,
      identity.publicKey,
      ids.kyber,
      kyber.getPublicKey(),
      kyberSig,
    );
  }

  /** libsignal's `signalEncrypt` towards `to`: the message type (2 or 3) and its bytes. */
  async encrypt(to: L.ProtocolAddress, plaintext: Uint8Array): Promise<{ type: number; body: Uint8Array }> {
    const m = await L.signalEncrypt(ab(plaintext), to, this.sessions, this.identities);
    return { type: m.type(), body: m.serialize() };
  }

  /** libsignal's `signalDecrypt` / `signalDecryptPreKey` for a message from `from`. */
  async decrypt(from: L.ProtocolAddress, type: number, body: Uint8Array): Promise<Uint8Array> {
    if (type === L.CiphertextMessageType.PreKey) {
      return L.signalDecryptPreKey(
        L.PreKeySignalMessage.deserialize(ab(body)),
        from,
        this.sessions,
        this.identities,
        this.preKeys,
        this.signedPreKeys,
        this.kyberPreKeys,
      );
    }
    return L.signalDecrypt(L.SignalMessage.deserialize(ab(body)), from, this.sessions, this.identities);
  }
}
