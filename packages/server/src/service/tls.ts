/**
 * The server's TLS identity: an ECDSA P-256 key and a self-signed X.509 v3 certificate for
 * one hostname (or an operator's own certificate and key), and the SPKI pin clients check.
 *
 * The pin is `sha256/<base64 of SHA-256 of the DER SubjectPublicKeyInfo>` (the HPKP form,
 * RFC 7469 §2.4): it names the key, not the certificate, so renewing the certificate for the
 * same key keeps every client's pin valid.
 */
import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from 'node:crypto';
import { isIP } from 'node:net';
import { ServerError } from '../errors.js';
import { astring } from '../validate.js';
import {
  bitString,
  boolean,
  explicit,
  implicitPrimitive,
  octetString,
  oid,
  sequence,
  set,
  smallInteger,
  time,
  unsignedInteger,
  utf8String,
} from './der.js';

/** Hostnames: DNS labels, or an IPv4/IPv6 literal. */
export const HOSTNAME_PATTERN =
  /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
/** How long a generated certificate is valid. Clients pin the key, so expiry is mostly for other tools. */
export const CERT_VALIDITY_DAYS = 825;

const OID_ECDSA_SHA256 = '1.2.840.10045.4.3.2';
const OID_COMMON_NAME = '2.5.4.3';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_EXT_KEY_USAGE = '2.5.29.37';
const OID_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

export interface TlsIdentity {
  /** PEM. */
  readonly certPem: string;
  /** PEM (PKCS#8). Secret: written 0600, never printed. */
  readonly keyPem: string;
}

function ipBytes(host: string): Uint8Array {
  if (isIP(host) === 4) return Uint8Array.from(host.split('.').map(Number));
  // IPv6: expand "::" and write eight 16-bit groups.
  const [head, tail] = host.includes('::') ? host.split('::') : [host, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = Number.parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  return out;
}

/** Checks a hostname for a certificate: a DNS name or an IP literal. */
export function checkHostname(label: string, host: unknown): string {
  const h = astring(label, host, 1, 253);
  if (isIP(h) === 0 && !HOSTNAME_PATTERN.test(h)) {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" is not a DNS name or IP address`);
  }
  return h;
}

/** Generates an ECDSA P-256 key and a self-signed certificate for `hostname`. */
export function generateSelfSignedIdentity(hostname: string, now: Date = new Date()): TlsIdentity {
  const host = checkHostname('hostname', hostname);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
  const name = sequence(set(sequence(oid(OID_COMMON_NAME), utf8String(host))));
  const altName = isIP(host)
    ? implicitPrimitive(7, ipBytes(host))
    : implicitPrimitive(2, new TextEncoder().encode(host));
  // Backdated an hour so a client whose clock runs slightly behind still accepts it.
  const notBefore = new Date(Math.floor(now.getTime() / 1000) * 1000 - 3600_000);
  const notAfter = new Date(notBefore.getTime() + CERT_VALIDITY_DAYS * 24 * 3600_000);
  // 16 random bytes with the top bit cleared: positive, unique (RFC 5280 §4.1.2.2 allows 20 octets).
  const serial = new Uint8Array(randomBytes(16));
  serial[0]! &= 0x7f;
  serial[0]! |= 0x01;
  const sigAlg = sequence(oid(OID_ECDSA_SHA256));
  const extensions = explicit(
    3,
    sequence(
      sequence(oid(OID_SUBJECT_ALT_NAME), octetString(sequence(altName))),
      sequence(oid(OID_BASIC_CONSTRAINTS), boolean(true), octetString(sequence())),
      // digitalSignature only (bit 0): an ECDHE-ECDSA server key signs handshakes, nothing else.
      sequence(oid(OID_KEY_USAGE), boolean(true), octetString(bitString(Uint8Array.of(0x80), 7))),
      sequence(oid(OID_EXT_KEY_USAGE), octetString(sequence(oid(OID_SERVER_AUTH)))),
    ),
  );
  const tbs = sequence(
    explicit(0, smallInteger(2)),
    unsignedInteger(serial),
    sigAlg,
    name,
    sequence(time(notBefore), time(notAfter)),
    name,
    spki,
    extensions,
  );
  // node:crypto's ECDSA signature is DER (Ecdsa-Sig-Value) by default, as X.509 wants.
  const signature = new Uint8Array(sign('sha256', tbs, privateKey));
  const cert = sequence(tbs, sigAlg, bitString(signature));
  const certPem = `-----BEGIN CERTIFICATE-----\n${Buffer.from(cert)
    .toString('base64')
    .replace(/.{64}/g, '$&\n')
    .replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  // Parse what we built, and check it verifies with its own key: a broken encoder fails here, not in a client.
  const parsed = new X509Certificate(certPem);
  if (!parsed.verify(publicKey))
    throw new ServerError('TLS_INVALID', 'the generated certificate does not verify');
  return { certPem, keyPem };
}

/** The SPKI pin of a PEM certificate: `sha256/<base64>`. */
export function spkiPin(certPem: string | Uint8Array): string {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(typeof certPem === 'string' ? certPem : Buffer.from(certPem));
  } catch {
    throw new ServerError('TLS_INVALID', 'the TLS certificate is not a valid X.509 certificate');
  }
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return `sha256/${createHash('sha256').update(spki).digest('base64')}`;
}

/** Refuses a certificate and key that do not belong together (TLS_INVALID), before the server starts on them. */
export function checkTlsPair(certPem: string, keyPem: string): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    throw new ServerError('TLS_INVALID', 'the TLS certificate is not a valid X.509 certificate');
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keyPem);
  } catch {
    // The parser's message could quote key material; say only that it failed.
    throw new ServerError('TLS_INVALID', 'the TLS private key is not a valid PEM private key');
  }
  if (!cert.checkPrivateKey(key)) {
    throw new ServerError('TLS_INVALID', 'the TLS private key does not match the certificate');
  }
}
