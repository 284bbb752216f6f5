/**
 * In-memory SenderKeyStore implementations for the libsignal versions used as oracles, and
 * the small conversions between libsignal's JS API (string UUIDs, ArrayBuffer-backed byte
 * arrays) and Qalqon's (16-byte distribution ids, any Uint8Array).
 *
 * Records are kept serialised, as a real store would keep them, so every load goes through
 * libsignal's own deserialisation.
 */
import * as L090 from 'libsignal-090';
import * as L103 from 'libsignal-103';

/** libsignal's bindings want ArrayBuffer-backed arrays; this copies into one. */
export function ab(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(bytes);
}

/** "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" → 16 bytes. */
export function uuidToBytes(uuid: string): Uint8Array {
  const hex = uuid.replaceAll('-', '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`not a UUID: ${uuid}`);
  return Uint8Array.from(Buffer.from(hex, 'hex'));
}

/** 16 bytes → "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
export function bytesToUuid(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new Error(`a UUID is 16 bytes, got ${bytes.length}`);
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function storeKey(name: string, deviceId: number, distributionId: string): string {
  return `${name}.${deviceId}/${distributionId.toLowerCase()}`;
}

export class InMemorySenderKeyStore090 extends L090.SenderKeyStore {
  readonly records = new Map<string, Uint8Array<ArrayBuffer>>();

  override async saveSenderKey(
    sender: L090.ProtocolAddress,
    distributionId: string,
    record: L090.SenderKeyRecord,
  ): Promise<void> {
    this.records.set(storeKey(sender.name(), sender.deviceId(), distributionId), record.serialize());
  }

  override async getSenderKey(
    sender: L090.ProtocolAddress,
    distributionId: string,
  ): Promise<L090.SenderKeyRecord | null> {
    const bytes = this.records.get(storeKey(sender.name(), sender.deviceId(), distributionId));
    return bytes ? L090.SenderKeyRecord.deserialize(bytes) : null;
  }

  /** Forgets a record, as a sender does to rotate its sender key. */
  forget(sender: L090.ProtocolAddress, distributionId: string): void {
    this.records.delete(storeKey(sender.name(), sender.deviceId(), distributionId));
  }
}

export class InMemorySenderKeyStore103 extends L103.SenderKeyStore {
  readonly records = new Map<string, Uint8Array<ArrayBuffer>>();

  override async saveSenderKey(
    sender: L103.ProtocolAddress,
    distributionId: string,
    record: L103.SenderKeyRecord,
  ): Promise<void> {
    this.records.set(storeKey(sender.name(), sender.deviceId(), distributionId), record.serialize());
  }

  override async getSenderKey(
    sender: L103.ProtocolAddress,
    distributionId: string,
  ): Promise<L103.SenderKeyRecord | null> {
    const bytes = this.records.get(storeKey(sender.name(), sender.deviceId(), distributionId));
    return bytes ? L103.SenderKeyRecord.deserialize(bytes) : null;
  }

  /** Forgets a record, as a sender does to rotate its sender key. */
  forget(sender: L103.ProtocolAddress, distributionId: string): void {
    this.records.delete(storeKey(sender.name(), sender.deviceId(), distributionId));
  }
}
