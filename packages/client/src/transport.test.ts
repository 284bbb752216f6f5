/** The arguments the transport takes from the user: the server URL and the pin. */
import { describe, expect, it } from 'vitest';
import { isClientError } from './errors.js';
import { checkPin, parseServerUrl } from './transport.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isClientError(err) ? err.code : `not a ClientError: ${String(err)}`;
  }
  return undefined;
}

describe('parseServerUrl', () => {
  it('accepts https://HOST[:PORT] only', () => {
    expect(parseServerUrl('https://chat.example.org:8443')).toEqual({
      url: 'https://chat.example.org:8443',
      host: 'chat.example.org',
      port: 8443,
    });
    expect(parseServerUrl('https://chat.example.org')).toMatchObject({ port: 443 });
    expect(parseServerUrl('https://[::1]:8443')).toEqual({
      url: 'https://[::1]:8443',
      host: '::1',
      port: 8443,
    });
    for (const bad of [
      'http://chat.example.org:8443',
      'wss://chat.example.org',
      'chat.example.org:8443',
      'https://user:pw@chat.example.org',
      'https://chat.example.org/v1',
      'https://chat.example.org/?x=1',
      '',
    ]) {
      expect(
        codeOf(() => parseServerUrl(bad)),
        bad,
      ).toBe('INVALID_ARGUMENT');
    }
  });
});

describe('checkPin', () => {
  it('accepts sha256/ and 32 bytes of padded base64, nothing else', () => {
    const pin = `sha256/${Buffer.alloc(32, 1).toString('base64')}`;
    expect(checkPin(pin)).toBe(pin);
    for (const bad of [
      pin.replace('sha256/', 'sha1/'),
      pin.slice(0, -1),
      `sha256/${Buffer.alloc(31).toString('base64')}`,
      `${pin} `,
      42 as unknown as string,
    ]) {
      expect(
        codeOf(() => checkPin(bad)),
        String(bad),
      ).toBe('INVALID_ARGUMENT');
    }
  });
});
