/**
 * Wrongly typed and wrongly sized arguments thrown at every function of both backends
 * (noble's "throw tables of bad inputs at every API" practice). Each must be refused on
 * entry with CryptoError INVALID_ARGUMENT, and the message must name the argument but
 * never contain the bytes of any argument (keys must not end up in logs).
 */
import { describe, expect, it } from 'vitest';
import { CryptoError } from './errors.js';
import { nobleBackend } from './noble.js';
import { nodeBackend } from './node.js';
import type { CryptoBackend } from './types.js';

type Fn = Exclude<keyof CryptoBackend, 'name'>;

type ArgSpec =
  | { readonly kind: 'bytes'; readonly name: string; readonly len?: number; readonly optional?: boolean }
  | { readonly kind: 'parts'; readonly name: string }
  | { readonly kind: 'int'; readonly name: string; readonly min: number; readonly max: number };

/** Distinctive bytes, so finding their hex in a message cannot be a coincidence. */
function marked(len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (0xa7 + 31 * i) & 0xff;
  return out;
}

const kyber = nodeBackend.kyber1024GenerateKeyPair(new Uint8Array(64).fill(1));
const kyberCt = nodeBackend.kyber1024Encapsulate(kyber.publicKey, new Uint8Array(32).fill(2)).ciphertext;
const x = nodeBackend.x25519GenerateKeyPair();
const peer = nodeBackend.x25519GenerateKeyPair();
const xSig = nodeBackend.xeddsaSign(x.privateKey, marked(10));
const edSeed = marked(32);
const edSig = nodeBackend.ed25519Sign(edSeed, marked(10));
const edPub = nodeBackend.ed25519PublicKey(edSeed);
const cbcCt = nodeBackend.aes256CbcEncrypt(marked(32), marked(16), marked(20));
const gcmSealed = nodeBackend.aes256GcmEncrypt(marked(32), marked(12), marked(20), marked(5));

const b = (name: string, len?: number, optional?: boolean): ArgSpec => ({
  kind: 'bytes',
  name,
  len,
  optional,
});
const int = (name: string, min: number, max: number): ArgSpec => ({ kind: 'int', name, min, max });

/**
 * Every function, its arguments, and a valid call. A `Record` over the backend's keys, so
 * a function added to `CryptoBackend` without a row here fails to compile.
 */
const table: Record<Fn, { readonly args: readonly ArgSpec[]; readonly valid: readonly unknown[] }> = {
  randomBytes: { args: [int('length', 0, 2 ** 30)], valid: [16] },
  sha256: { args: [b('data')], valid: [marked(10)] },
  sha512: { args: [b('data')], valid: [marked(10)] },
  sha512Parts: { args: [{ kind: 'parts', name: 'parts' }], valid: [[marked(3), marked(4)]] },
  sha3_256: { args: [b('data')], valid: [marked(10)] },
  shake256: { args: [b('data'), int('outputLength', 0, 2 ** 30)], valid: [marked(10), 64] },
  hmacSha256: { args: [b('key'), b('data')], valid: [marked(32), marked(10)] },
  hmacSha256Parts: { args: [b('key'), { kind: 'parts', name: 'parts' }], valid: [marked(32), [marked(3)]] },
  hmacSha512: { args: [b('key'), b('data')], valid: [marked(32), marked(10)] },
  hkdfSha256: {
    args: [b('ikm'), b('salt'), b('info'), int('length', 0, 255 * 32)],
    valid: [marked(32), marked(32), marked(8), 80],
  },
  aes256CbcEncrypt: {
    args: [b('key', 32), b('iv', 16), b('plaintext')],
    valid: [marked(32), marked(16), marked(20)],
  },
  aes256CbcDecrypt: {
    args: [b('key', 32), b('iv', 16), b('ciphertext')],
    valid: [marked(32), marked(16), cbcCt],
  },
  aes256GcmEncrypt: {
    args: [b('key', 32), b('nonce', 12), b('plaintext'), b('aad', undefined, true)],
    valid: [marked(32), marked(12), marked(20), marked(5)],
  },
  aes256GcmEncryptInto: {
    args: [b('key', 32), b('nonce', 12), b('plaintext'), b('aad', undefined, true), b('out', 36)],
    valid: [marked(32), marked(12), marked(20), marked(5), new Uint8Array(36)],
  },
  aes256GcmDecrypt: {
    args: [b('key', 32), b('nonce', 12), b('sealed'), b('aad', undefined, true)],
    valid: [marked(32), marked(12), gcmSealed, marked(5)],
  },
  x25519GenerateKeyPair: { args: [], valid: [] },
  x25519PublicKey: { args: [b('privateKey', 32)], valid: [x.privateKey] },
  x25519: { args: [b('privateKey', 32), b('publicKey', 32)], valid: [x.privateKey, peer.publicKey] },
  xeddsaSign: {
    args: [b('privateKey', 32), b('message'), b('random', 64, true)],
    valid: [x.privateKey, marked(10), marked(64)],
  },
  xeddsaVerify: {
    args: [b('publicKey', 32), b('message'), b('signature', 64)],
    valid: [x.publicKey, marked(10), xSig],
  },
  ed25519PublicKey: { args: [b('seed', 32)], valid: [edSeed] },
  ed25519Sign: { args: [b('seed', 32), b('message')], valid: [edSeed, marked(10)] },
  ed25519Verify: {
    args: [b('publicKey', 32), b('message'), b('signature', 64)],
    valid: [edPub, marked(10), edSig],
  },
  kyber1024GenerateKeyPair: { args: [b('seed', 64, true)], valid: [marked(64)] },
  kyber1024Encapsulate: {
    args: [b('publicKey', 1568), b('random', 32, true)],
    valid: [kyber.publicKey, marked(32)],
  },
  kyber1024Decapsulate: {
    args: [b('secretKey', 3168), b('ciphertext', 1568)],
    valid: [kyber.privateKey, kyberCt],
  },
  constantTimeEqual: { args: [b('a'), b('b')], valid: [marked(8), marked(8)] },
};

interface BadValue {
  readonly label: string;
  readonly value: unknown;
  /** Hex strings that must not appear in the error message. */
  readonly secrets: readonly string[];
}

const hexOf = (u: Uint8Array) => Buffer.from(u).toString('hex');

function badValues(spec: ArgSpec, valid: unknown): BadValue[] {
  const out: BadValue[] = [];
  if (spec.kind === 'int') {
    for (const v of [
      -1,
      spec.min - 1,
      spec.max + 1,
      1.5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      2 ** 53,
      '16',
      16n,
      null,
    ]) {
      if (typeof v === 'number' && v >= spec.min && v <= spec.max && Number.isInteger(v)) continue;
      out.push({ label: `${typeof v} ${String(v)}`, value: v, secrets: [] });
    }
    out.push({ label: 'undefined', value: undefined, secrets: [] });
    return out;
  }
  if (spec.kind === 'parts') {
    const m = marked(12);
    out.push({ label: 'a Uint8Array instead of an array', value: m, secrets: [hexOf(m)] });
    out.push({ label: 'an array holding a hex string', value: [marked(3), hexOf(m)], secrets: [hexOf(m)] });
    out.push({ label: 'an array holding numbers', value: [1, 2, 3], secrets: [] });
    out.push({ label: 'undefined', value: undefined, secrets: [] });
    out.push({ label: 'null', value: null, secrets: [] });
    return out;
  }
  const sample = valid instanceof Uint8Array ? valid : marked(spec.len ?? 16);
  const h = hexOf(sample);
  out.push({ label: 'hex string of the bytes', value: h, secrets: [h] });
  out.push({ label: 'number', value: 42, secrets: [] });
  out.push({ label: 'null', value: null, secrets: [] });
  out.push({ label: 'plain array of the bytes', value: Array.from(sample), secrets: [h] });
  out.push({ label: 'Uint16Array', value: new Uint16Array(sample.length), secrets: [] });
  out.push({ label: 'Int8Array of the bytes', value: new Int8Array(sample), secrets: [h] });
  out.push({ label: 'ArrayBuffer', value: sample.slice().buffer, secrets: [h] });
  out.push({ label: 'DataView', value: new DataView(sample.slice().buffer), secrets: [h] });
  if (!spec.optional) out.push({ label: 'undefined', value: undefined, secrets: [] });
  if (spec.len !== undefined) {
    const short = marked(spec.len - 1);
    const long = marked(spec.len + 1);
    out.push({ label: `length ${spec.len - 1}`, value: short, secrets: [hexOf(short)] });
    out.push({ label: `length ${spec.len + 1}`, value: long, secrets: [hexOf(long)] });
    out.push({ label: 'length 0', value: new Uint8Array(0), secrets: [] });
  }
  return out;
}

const backends: readonly CryptoBackend[] = [nodeBackend, nobleBackend];

describe.each(backends)('argument checks on the $name backend', (backend) => {
  const fns = Object.keys(table) as Fn[];

  it('covers every function of the backend', () => {
    const backendFns = Object.keys(backend).filter((k) => k !== 'name');
    expect(new Set(fns)).toEqual(new Set(backendFns));
  });

  it.each(fns)('%s: accepts its valid call (the baseline the bad calls differ from)', (fn) => {
    const call = backend[fn] as (...a: unknown[]) => unknown;
    expect(() => call(...table[fn].valid)).not.toThrow();
  });

  it.each(fns)('%s: refuses every bad argument with INVALID_ARGUMENT and a clean message', (fn) => {
    const { args, valid } = table[fn];
    const call = backend[fn] as (...a: unknown[]) => unknown;
    // Hex of every argument of the valid call: none of it may appear in any message.
    const argHex = valid.filter((v): v is Uint8Array => v instanceof Uint8Array && v.length >= 4).map(hexOf);
    let cases = 0;
    args.forEach((spec, i) => {
      for (const bad of badValues(spec, valid[i])) {
        const argv = [...valid];
        argv[i] = bad.value;
        let thrown: unknown;
        try {
          call(...argv);
        } catch (e) {
          thrown = e;
        }
        const where = `${fn} argument "${spec.name}" as ${bad.label}`;
        expect(thrown, where).toBeInstanceOf(CryptoError);
        const err = thrown as CryptoError;
        expect(err.code, `${where}: ${err.message}`).toBe('INVALID_ARGUMENT');
        expect(err.message, where).toContain(`"${spec.name}`);
        for (const secret of [...bad.secrets, ...argHex]) {
          expect(err.message.toLowerCase(), where).not.toContain(secret.slice(0, 16));
        }
        cases++;
      }
    });
    expect(cases).toBe(args.reduce((n, spec, i) => n + badValues(spec, valid[i]).length, 0));
  });
});
