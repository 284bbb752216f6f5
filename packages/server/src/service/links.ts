/**
 * Link slots: the server's part of adding a further device to a user. The server cannot
 * add a device on its own authority (it would then control whom others encrypt to); an
 * existing device of the user must approve, and hands the identity over end to end:
 *
 * 1. the new device opens a slot (`create`) with an opaque request (e.g. its ephemeral
 *    public key) and shows the returned link code to the user;
 * 2. on an existing, authenticated device the user enters the code: `lookup` returns the
 *    request, `approve` binds the slot to that user and stores the opaque, end-to-end
 *    encrypted handover;
 * 3. the new device polls (`poll`), decrypts the handover (gaining the identity key), and
 *    registers with `complete`: the storage refuses it unless its identity key is the user's.
 *
 * Slots are short-lived and in memory; the link code is stored only as a hash, is single
 * use, and guesses are rate-limited per address by the caller.
 */
import { randomBytes, sha256 } from '@qalqon/crypto';
import { ApiError } from './api-error.js';

/**
 * A fresh one-time code (enrolment, device link): 120 random bits as 20 base64url
 * characters, never starting with "-", which a command line takes for an option
 * (`--code -x…`, `device approve -x…`: one code in 64 was refused as bad usage). Drawing
 * again when it does costs under 0.03 of the 120 bits.
 */
export function newOneTimeCode(): string {
  for (;;) {
    const code = Buffer.from(randomBytes(15)).toString('base64url');
    if (code[0] !== '-') return code;
  }
}

export const LINK_TTL_MS = 10 * 60_000;
export const MAX_LINK_SLOTS = 10_000;

interface Slot {
  readonly request: Uint8Array;
  readonly expiresAt: number;
  approved?: { readonly userId: string; readonly userName: string; readonly handover: Uint8Array };
  /** Set while a registration runs, so two concurrent completions cannot both add a device. */
  completing?: boolean;
}

function invalid(): ApiError {
  return new ApiError('LINK_CODE_INVALID', 403, 'the link code is not valid');
}

export class LinkSlots {
  readonly #slots = new Map<string, Slot>();
  readonly #clock: () => number;

  constructor(clock: () => number = Date.now) {
    this.#clock = clock;
  }

  #key(code: string): string {
    return Buffer.from(sha256(new TextEncoder().encode(`qalqon/link-code/v1\0${code}`))).toString('hex');
  }

  #get(code: string): Slot {
    const key = this.#key(code);
    const slot = this.#slots.get(key);
    if (!slot) throw invalid();
    if (slot.expiresAt <= this.#clock()) {
      this.#slots.delete(key);
      throw invalid();
    }
    return slot;
  }

  create(request: Uint8Array): { linkCode: string; expiresAt: number } {
    this.sweep();
    if (this.#slots.size >= MAX_LINK_SLOTS) {
      throw new ApiError('RATE_LIMITED', 429, 'too many devices are linking right now', 60_000);
    }
    // 120 random bits: typeable, and far beyond guessing within the TTL and rate limit.
    const linkCode = newOneTimeCode();
    const expiresAt = this.#clock() + LINK_TTL_MS;
    this.#slots.set(this.#key(linkCode), { request: Uint8Array.from(request), expiresAt });
    return { linkCode, expiresAt };
  }

  lookup(code: string): Uint8Array {
    const slot = this.#get(code);
    if (slot.approved) throw invalid();
    return slot.request;
  }

  approve(code: string, approver: { userId: string; userName: string }, handover: Uint8Array): void {
    const slot = this.#get(code);
    if (slot.approved) throw invalid();
    slot.approved = { ...approver, handover: Uint8Array.from(handover) };
  }

  poll(code: string): Slot['approved'] {
    return this.#get(code).approved;
  }

  /** Runs `register` for an approved slot and removes the slot only if it succeeds. */
  async complete<T>(code: string, register: (userId: string, userName: string) => Promise<T>): Promise<T> {
    const slot = this.#get(code);
    if (!slot.approved || slot.completing) throw invalid();
    slot.completing = true;
    try {
      const result = await register(slot.approved.userId, slot.approved.userName);
      this.#slots.delete(this.#key(code));
      return result;
    } finally {
      slot.completing = false;
    }
  }

  sweep(): void {
    const now = this.#clock();
    for (const [k, s] of this.#slots) if (s.expiresAt <= now) this.#slots.delete(k);
  }
}
