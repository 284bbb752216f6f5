/**
 * A backup's payload (inside the encrypted segments): named entries, each
 * `name_len (u16 BE) ‖ name (UTF-8) ‖ size (u64 BE) ‖ bytes`, one after another. The sizes
 * are known before anything is sent, so the archive's length is too.
 */
import { ServerError } from '../errors.js';

export interface PayloadEntry {
  readonly name: string;
  readonly size: number;
  /** The entry's bytes, in chunks of any size; exactly `size` in all. */
  chunks(): AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
}

const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;

function entryPrefix(name: string, size: number): Uint8Array {
  const n = new TextEncoder().encode(name);
  const out = new Uint8Array(2 + n.length + 8);
  const v = new DataView(out.buffer);
  v.setUint16(0, n.length);
  out.set(n, 2);
  v.setBigUint64(2 + n.length, BigInt(size));
  return out;
}

/** The payload's exact length. */
export function payloadLength(entries: readonly PayloadEntry[]): number {
  let total = 0;
  for (const e of entries) {
    if (!NAME_PATTERN.test(e.name)) throw new ServerError('INVALID_ARGUMENT', 'bad payload entry name');
    total += 2 + new TextEncoder().encode(e.name).length + 8 + e.size;
  }
  return total;
}

/** The payload's bytes; refuses an entry whose chunks do not add up to its size. */
export async function* payloadBytes(entries: readonly PayloadEntry[]): AsyncGenerator<Uint8Array> {
  for (const e of entries) {
    yield entryPrefix(e.name, e.size);
    let seen = 0;
    for await (const c of e.chunks()) {
      seen += c.length;
      if (seen > e.size) break;
      yield c;
    }
    if (seen !== e.size) {
      throw new ServerError('INVALID_ARGUMENT', `payload entry ${e.name} changed size while it was read`);
    }
  }
}

/** What a payload reader is told, entry by entry. */
export interface PayloadSink {
  start(name: string, size: number): void;
  data(chunk: Uint8Array): void;
  end(name: string): void;
}

/**
 * Parses a payload pushed in chunks of any size. Entry names and sizes come from an
 * authenticated payload, but are still checked: a malformed one is ARCHIVE_INVALID.
 */
export class PayloadReader {
  readonly #sink: PayloadSink;
  /** Bytes of a partial entry prefix. */
  #head = new Uint8Array(0);
  #name: string | undefined;
  #left = 0;

  constructor(sink: PayloadSink) {
    this.#sink = sink;
  }

  push(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.#name !== undefined) {
        const n = Math.min(this.#left, chunk.length - off);
        if (n > 0) this.#sink.data(chunk.subarray(off, off + n));
        off += n;
        this.#left -= n;
        if (this.#left === 0) this.#finish();
        continue;
      }
      // Collect the prefix: 2 bytes, then the name, then 8 bytes.
      const needFixed = 2;
      const take = (want: number) => {
        const n = Math.min(want - this.#head.length, chunk.length - off);
        const next = new Uint8Array(this.#head.length + n);
        next.set(this.#head);
        next.set(chunk.subarray(off, off + n), this.#head.length);
        this.#head = next;
        off += n;
        return this.#head.length === want;
      };
      if (this.#head.length < needFixed && !take(needFixed)) return;
      const nameLen = new DataView(this.#head.buffer).getUint16(0);
      if (nameLen === 0 || nameLen > 64) throw invalidPayload('an entry name has a bad length');
      const prefixLen = 2 + nameLen + 8;
      if (!take(prefixLen)) return;
      const name = new TextDecoder().decode(this.#head.subarray(2, 2 + nameLen));
      if (!NAME_PATTERN.test(name)) throw invalidPayload('an entry has a bad name');
      const size = new DataView(this.#head.buffer).getBigUint64(2 + nameLen);
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidPayload(`entry ${name} has a bad size`);
      this.#head = new Uint8Array(0);
      this.#name = name;
      this.#left = Number(size);
      this.#sink.start(name, this.#left);
      if (this.#left === 0) this.#finish();
    }
  }

  #finish(): void {
    const name = this.#name!;
    this.#name = undefined;
    this.#sink.end(name);
  }

  /** Call after the last chunk: refuses a payload that stops inside an entry. */
  close(): void {
    if (this.#name !== undefined || this.#head.length > 0) throw invalidPayload('it ends inside an entry');
  }
}

function invalidPayload(why: string): ServerError {
  return new ServerError('ARCHIVE_INVALID', `the archive's payload is malformed: ${why}`);
}
