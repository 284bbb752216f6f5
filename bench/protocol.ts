/**
 * `npm run bench -- protocol [--json] [--seconds S] [--rounds R]`
 *
 * Qalqon's 1:1 protocol against libsignal 0.90.0 driven the same way, in one process:
 * in-memory stores that keep each session record serialised (deserialised before every
 * operation, serialised after it, as a client with a database does), 200-byte messages.
 *
 * - oneWay:   messages/s, one direction only (each message: encrypt + decrypt);
 * - pingPong: messages/s with the direction alternating every message, so every message
 *             carries a new ratchet key and costs a DH ratchet step on both sides;
 * - setup:    session set-ups/s: the initiator processes a prekey bundle (two signature
 *             checks, PQXDH with Kyber encapsulation) and encrypts a first message; the
 *             responder decrypts that PreKeySignalMessage (PQXDH, Kyber decapsulation).
 *             Prekeys are generated once, outside the timed part, for both.
 */
import {
  type CiphertextMessageType,
  createPreKeyBundle,
  decryptMessage,
  deserializeSessionRecord,
  encryptMessage,
  generateIdentityKeyPair,
  generateKyberPreKey,
  generateSignedPreKey,
  type LocalIdentity,
  type PreKeyLookup,
  processPreKeyBundle,
} from '@qalqon/protocol';
import * as L from 'libsignal-090';
import { LibsignalParty } from '../tests/interop/libsignal-stores.js';
import { compare, formatRate, parseFlags } from './lib.js';

const MESSAGE = new Uint8Array(200).fill(0x61);

/** A Qalqon endpoint: identity, prekeys, and a map of serialised session records. */
class QalqonParty {
  readonly local: LocalIdentity;
  readonly lookup: PreKeyLookup;
  readonly sessions = new Map<string, Uint8Array>();
  readonly bundle;

  constructor(registrationId: number) {
    const identityKeyPair = generateIdentityKeyPair();
    this.local = { identityKeyPair, registrationId };
    const signedPreKey = generateSignedPreKey(identityKeyPair, 1);
    const kyberPreKey = generateKyberPreKey(identityKeyPair, 1);
    this.lookup = {
      getSignedPreKey: (id) => (id === 1 ? signedPreKey : undefined),
      getKyberPreKey: (id) => (id === 1 ? kyberPreKey : undefined),
      getPreKey: () => undefined,
    };
    this.bundle = createPreKeyBundle({
      registrationId,
      deviceId: 1,
      identity: identityKeyPair,
      signedPreKey,
      kyberPreKey,
    });
  }

  startSession(peer: string, other: QalqonParty): void {
    const { record } = processPreKeyBundle(undefined, other.bundle, this.local);
    this.sessions.set(peer, record.serialize());
  }

  encrypt(peer: string, plaintext: Uint8Array): { type: CiphertextMessageType; body: Uint8Array } {
    const bytes = this.sessions.get(peer);
    if (bytes === undefined) throw new Error(`no session with ${peer}`);
    const { record, message } = encryptMessage(deserializeSessionRecord(bytes), plaintext);
    this.sessions.set(peer, record.serialize());
    return message;
  }

  decrypt(peer: string, message: { type: CiphertextMessageType; body: Uint8Array }): Uint8Array {
    const bytes = this.sessions.get(peer);
    const { record, plaintext } = decryptMessage(
      bytes === undefined ? undefined : deserializeSessionRecord(bytes),
      message,
      this.local,
      this.lookup,
    );
    this.sessions.set(peer, record.serialize());
    return plaintext;
  }
}

function check(plaintext: Uint8Array): void {
  // A cheap end-to-end check so that nothing is optimised away and a broken run is loud.
  if (plaintext.length !== MESSAGE.length || plaintext[0] !== MESSAGE[0] || plaintext[199] !== MESSAGE[199]) {
    throw new Error('benchmark message did not round-trip');
  }
}

/** Two Qalqon parties with an answered session (so messages are SignalMessages). */
function qalqonPair(): { a: QalqonParty; b: QalqonParty } {
  const a = new QalqonParty(1);
  const b = new QalqonParty(2);
  a.startSession('b', b);
  check(b.decrypt('a', a.encrypt('b', MESSAGE)));
  check(a.decrypt('b', b.encrypt('a', MESSAGE)));
  return { a, b };
}

async function libsignalPair(): Promise<{ a: LibsignalParty; b: LibsignalParty }> {
  const a = new LibsignalParty('a', 1, 1);
  const b = new LibsignalParty('b', 1, 2);
  const bundle = await b.newBundle({ signed: 1, kyber: 1 });
  await L.processPreKeyBundle(bundle, b.address, a.sessions, a.identities);
  let m = await a.encrypt(b.address, MESSAGE);
  check(await b.decrypt(a.address, m.type, m.body));
  m = await b.encrypt(a.address, MESSAGE);
  check(await a.decrypt(b.address, m.type, m.body));
  return { a, b };
}

const BATCH = 50;

export async function run(argv: readonly string[]): Promise<void> {
  const { json, values } = parseFlags(argv);
  const seconds = Number(values.get('seconds') ?? 2);
  const rounds = Number(values.get('rounds') ?? 3);
  if (!(seconds > 0) || !Number.isInteger(rounds) || rounds < 1) throw new Error('bad --seconds or --rounds');
  const opts = { seconds, rounds };
  const log = (s: string) => {
    if (!json) process.stdout.write(`${s}\n`);
  };

  log(`protocol benchmark: Qalqon vs libsignal 0.90.0, 200-byte messages, ${rounds} rounds x ${seconds}s`);

  const oneWay = await compare(
    {
      qalqon: async () => {
        const { a, b } = qalqonPair();
        return {
          opsPerCall: BATCH,
          op: () => {
            for (let i = 0; i < BATCH; i++) check(b.decrypt('a', a.encrypt('b', MESSAGE)));
          },
        };
      },
      libsignal: async () => {
        const { a, b } = await libsignalPair();
        return {
          opsPerCall: BATCH,
          op: async () => {
            for (let i = 0; i < BATCH; i++) {
              const m = await a.encrypt(b.address, MESSAGE);
              check(await b.decrypt(a.address, m.type, m.body));
            }
          },
        };
      },
    },
    opts,
  );
  log(`  one-way    ${row(oneWay.qalqon.perSecond, oneWay.libsignal.perSecond, 'msgs/s')}`);

  const pingPong = await compare(
    {
      qalqon: async () => {
        const { a, b } = qalqonPair();
        return {
          opsPerCall: 2 * BATCH,
          op: () => {
            for (let i = 0; i < BATCH; i++) {
              check(b.decrypt('a', a.encrypt('b', MESSAGE)));
              check(a.decrypt('b', b.encrypt('a', MESSAGE)));
            }
          },
        };
      },
      libsignal: async () => {
        const { a, b } = await libsignalPair();
        return {
          opsPerCall: 2 * BATCH,
          op: async () => {
            for (let i = 0; i < BATCH; i++) {
              let m = await a.encrypt(b.address, MESSAGE);
              check(await b.decrypt(a.address, m.type, m.body));
              m = await b.encrypt(a.address, MESSAGE);
              check(await a.decrypt(b.address, m.type, m.body));
            }
          },
        };
      },
    },
    opts,
  );
  log(`  ping-pong  ${row(pingPong.qalqon.perSecond, pingPong.libsignal.perSecond, 'msgs/s')}`);

  const setup = await compare(
    {
      qalqon: async () => {
        const b = new QalqonParty(2);
        let n = 0;
        return {
          opsPerCall: 1,
          op: () => {
            // A fresh initiator identity each time, as a new contact would be.
            const a = new QalqonInitiator();
            const peer = `a${n++}`;
            const first = a.start(b);
            check(b.decrypt(peer, first));
            b.sessions.delete(peer);
          },
        };
      },
      libsignal: async () => {
        const b = new LibsignalParty('b', 1, 2);
        const bundle = await b.newBundle({ signed: 1, kyber: 1 });
        let n = 0;
        return {
          opsPerCall: 1,
          op: async () => {
            const a = new LibsignalInitiator(`a${n++}`);
            const first = await a.start(bundle, b.address);
            check(await b.decrypt(a.address, first.type, first.body));
          },
        };
      },
    },
    opts,
  );
  log(`  set-up     ${row(setup.qalqon.perSecond, setup.libsignal.perSecond, 'set-ups/s')}`);

  const result = {
    qalqon: {
      oneWay: oneWay.qalqon.perSecond,
      pingPong: pingPong.qalqon.perSecond,
      setup: setup.qalqon.perSecond,
    },
    libsignal: {
      oneWay: oneWay.libsignal.perSecond,
      pingPong: pingPong.libsignal.perSecond,
      setup: setup.libsignal.perSecond,
    },
    ratio: {
      oneWay: oneWay.qalqon.perSecond / oneWay.libsignal.perSecond,
      pingPong: pingPong.qalqon.perSecond / pingPong.libsignal.perSecond,
      setup: setup.qalqon.perSecond / setup.libsignal.perSecond,
    },
    targets: { oneWay: 2, pingPong: 2, setup: 1 },
    messageBytes: MESSAGE.length,
    seconds,
    rounds,
    node: process.version,
  };
  if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else {
    log(
      `  targets: ratio >= 2 for messages, >= 1 for set-up: ${
        result.ratio.oneWay >= 2 && result.ratio.pingPong >= 2 && result.ratio.setup >= 1 ? 'met' : 'NOT met'
      }`,
    );
  }
}

function row(ours: number, theirs: number, unit: string): string {
  return `qalqon ${formatRate(ours).padStart(9)}  libsignal ${formatRate(theirs).padStart(9)} ${unit}  ratio ${(ours / theirs).toFixed(2)}`;
}

/** A fresh initiator with nothing but an identity: processes a bundle, encrypts a first message. */
class QalqonInitiator {
  readonly local: LocalIdentity = { identityKeyPair: generateIdentityKeyPair(), registrationId: 7 };
  start(b: QalqonParty): { type: CiphertextMessageType; body: Uint8Array } {
    const { record } = processPreKeyBundle(undefined, b.bundle, this.local);
    const bytes = record.serialize();
    const out = encryptMessage(deserializeSessionRecord(bytes), MESSAGE);
    out.record.serialize();
    return out.message;
  }
}

class LibsignalInitiator {
  readonly party: LibsignalParty;
  constructor(name: string) {
    this.party = new LibsignalParty(name, 1, 7);
  }
  get address(): L.ProtocolAddress {
    return this.party.address;
  }
  async start(bundle: L.PreKeyBundle, to: L.ProtocolAddress): Promise<{ type: number; body: Uint8Array }> {
    await L.processPreKeyBundle(bundle, to, this.party.sessions, this.party.identities);
    return this.party.encrypt(to, MESSAGE);
  }
}
