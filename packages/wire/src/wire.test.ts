/** The wire contract: strict base64, schema refusals, limits, and the auth message layout. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { base64Length, decodeBase64, encodeBase64 } from './base64.js';
import { WIRE_ERROR_CODES } from './errors.js';
import { FileStatus, MAX_FILE_BYTES, MAX_FILE_CHUNK_BYTES } from './files.js';
import { AckFrame, ClientFrame, ServerFrame } from './frames.js';
import { EnrolRequest, ErrorResponse, SendRequest } from './http.js';
import { AUTH_SIGNATURE_DOMAIN, authChallengeMessage, MAX_ENVELOPE_BYTES, MAX_SEND_BATCH } from './limits.js';

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

describe('base64', () => {
  it('round-trips and matches Node for any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const s = encodeBase64(bytes);
        expect(s).toBe(b64(bytes));
        expect(s.length).toBe(base64Length(bytes.length));
        expect(decodeBase64(s)).toEqual(bytes);
      }),
    );
  });

  it('refuses every non-canonical spelling', () => {
    for (const s of [
      'A',
      'AA',
      'AAA',
      'AA=',
      'A===',
      'AB==',
      'AAB=',
      'QQ=A',
      'QQ==QQ==',
      'Q Q=',
      'QQ\n==',
      '-_-_',
      'QUJD\u00e9',
    ]) {
      expect(decodeBase64(s), JSON.stringify(s)).toBeUndefined();
    }
    expect(decodeBase64('')).toEqual(new Uint8Array(0));
    expect(decodeBase64('QQ==')).toEqual(Uint8Array.of(0x41));
  });
});

describe('schemas', () => {
  const id = 'a'.repeat(32);
  it('decodes binary fields and checks their length and type byte', () => {
    const ok = SendRequest.parse({ messages: [{ recipientUserId: id, recipientDeviceId: 1, body: 'aGk=' }] });
    expect(ok.messages[0]!.body).toEqual(new TextEncoder().encode('hi'));
    const bad = [
      { messages: [] },
      {
        messages: Array(MAX_SEND_BATCH + 1).fill({ recipientUserId: id, recipientDeviceId: 1, body: 'aGk=' }),
      },
      { messages: [{ recipientUserId: id, recipientDeviceId: 0, body: 'aGk=' }] },
      { messages: [{ recipientUserId: id.toUpperCase(), recipientDeviceId: 1, body: 'aGk=' }] },
      { messages: [{ recipientUserId: id, recipientDeviceId: 1, body: '' }] },
      {
        messages: [
          { recipientUserId: id, recipientDeviceId: 1, body: b64(new Uint8Array(MAX_ENVELOPE_BYTES + 1)) },
        ],
      },
      { messages: [{ recipientUserId: id, recipientDeviceId: 1, body: 'aGk=', extra: 1 }] },
      { messages: [{ recipientUserId: id, recipientDeviceId: 1.5, body: 'aGk=' }] },
    ];
    for (const b of bad) expect(SendRequest.safeParse(b).success).toBe(false);
  });

  it('refuses keys of the wrong length or type byte', () => {
    const key = (type: number, len: number) => {
      const k = new Uint8Array(len);
      k[0] = type;
      return b64(k);
    };
    const device = (identityKey: string) => ({
      code: 'c'.repeat(20),
      device: {
        name: 'n',
        registrationId: 1,
        identityKey,
        authKey: key(5, 33),
        signedPrekey: { id: 1, publicKey: key(5, 33), signature: b64(new Uint8Array(64)) },
        kyberPrekey: { id: 1, publicKey: key(8, 1569), signature: b64(new Uint8Array(64)) },
        oneTimePrekeys: [],
      },
    });
    expect(EnrolRequest.safeParse(device(key(5, 33))).success).toBe(true);
    expect(EnrolRequest.safeParse(device(key(8, 33))).success).toBe(false);
    expect(EnrolRequest.safeParse(device(key(5, 32))).success).toBe(false);
    expect(EnrolRequest.safeParse(device(key(5, 34))).success).toBe(false);
  });

  it('frames are a closed set', () => {
    expect(ClientFrame.safeParse({ type: 'ping' }).success).toBe(true);
    expect(ClientFrame.safeParse({ type: 'pong' }).success).toBe(false);
    expect(ClientFrame.safeParse({ type: 'ack', ids: [] }).success).toBe(false);
    expect(AckFrame.safeParse({ type: 'ack', ids: ['0'.repeat(32)] }).success).toBe(true);
    expect(ServerFrame.safeParse({ type: 'error', code: 'NOPE', message: '' }).success).toBe(false);
    expect(ClientFrame.safeParse({ type: 'auth', token: 'x'.repeat(43), batch: true }).success).toBe(true);
    expect(ClientFrame.safeParse({ type: 'auth', token: 'x'.repeat(43), batch: 1 }).success).toBe(false);
    const pushed = {
      id: '0'.repeat(32),
      senderUserId: '1'.repeat(32),
      senderDeviceId: 1,
      createdAt: 1_750_000_000_000,
      body: 'AAEC',
    };
    const batch = ServerFrame.safeParse({
      type: 'envelopes',
      envelopes: [pushed, { ...pushed, id: '2'.repeat(32) }],
    });
    expect(batch.success && batch.data.type === 'envelopes' && batch.data.envelopes[1]?.body).toEqual(
      new Uint8Array([0, 1, 2]),
    );
    expect(ServerFrame.safeParse({ type: 'envelopes', envelopes: [] }).success).toBe(false);
    expect(
      ServerFrame.safeParse({ type: 'envelopes', envelopes: [{ ...pushed, type: 'envelope' }] }).success,
    ).toBe(false);
    expect(ServerFrame.safeParse({ type: 'envelope', ...pushed }).success).toBe(true);
    for (const code of WIRE_ERROR_CODES) {
      expect(ErrorResponse.safeParse({ error: { code, message: 'm' } }).success).toBe(true);
    }
  });
});

describe('FileStatus', () => {
  it('takes a status as a server sends it, and refuses a forged or malformed one', () => {
    const ok = {
      id: 'a'.repeat(32),
      uploaderId: 'b'.repeat(32),
      size: 5_000_000,
      received: 1_048_576,
      chunkSize: 1_048_547,
      complete: false,
      createdAt: 1_700_000_000_000,
    };
    expect(FileStatus.parse(ok)).toEqual(ok);
    const { chunkSize: _omitted, ...noChunkSize } = ok;
    const { uploaderId: _none, ...noUploader } = ok;
    for (const bad of [
      noChunkSize,
      noUploader,
      { ...ok, uploaderId: '' },
      { ...ok, uploaderId: 'B'.repeat(32) },
      { ...ok, uploaderId: 'b'.repeat(33) },
      { ...ok, uploaderId: 7 },
      { ...ok, chunkSize: 0 },
      { ...ok, chunkSize: 1.5 },
      { ...ok, chunkSize: '1048576' },
      { ...ok, chunkSize: MAX_FILE_CHUNK_BYTES + 1 },
      { ...ok, size: MAX_FILE_BYTES + 1 },
      { ...ok, received: -1 },
      { ...ok, received: MAX_FILE_BYTES + 1 },
      { ...ok, owner: 'x' },
    ]) {
      expect(FileStatus.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
    }
  });
});

describe('authChallengeMessage', () => {
  it('is domain ‖ 0 ‖ challenge ‖ userId ‖ deviceId (uint32 BE), with labelled argument checks', () => {
    const challenge = new Uint8Array(32).fill(9);
    const m = authChallengeMessage(challenge, 'f'.repeat(32), 0x01020304);
    const domain = new TextEncoder().encode(AUTH_SIGNATURE_DOMAIN);
    expect(m.subarray(0, domain.length)).toEqual(domain);
    expect(m[domain.length]).toBe(0);
    expect(m.subarray(domain.length + 1, domain.length + 33)).toEqual(challenge);
    expect(new TextDecoder().decode(m.subarray(domain.length + 33, domain.length + 65))).toBe('f'.repeat(32));
    expect([...m.subarray(-4)]).toEqual([1, 2, 3, 4]);
    expect(() => authChallengeMessage(new Uint8Array(31), 'f'.repeat(32), 1)).toThrow(/"challenge"/);
    expect(() => authChallengeMessage(challenge, 'F'.repeat(32), 1)).toThrow(/"userId"/);
    expect(() => authChallengeMessage(challenge, 'f'.repeat(32), 0)).toThrow(/"deviceId"/);
  });
});
