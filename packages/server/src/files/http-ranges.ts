/**
 * The HTTP byte-range headers the file routes speak (RFC 9110 §14).
 *
 * Downloads take one `Range: bytes=A-B`, `bytes=A-` or `bytes=-N`. A header that is not a
 * valid single byte range — another unit, a malformed spec, or several ranges — is ignored
 * and the whole file is sent with 200, as RFC 9110 §14.2 allows (multipart/byteranges
 * answers are not offered). A valid range that selects nothing (starts at or past the end,
 * or a zero-length suffix) is 416 with `Content-Range: bytes *\/SIZE`.
 *
 * Uploads carry `Content-Range: bytes START-END/SIZE` (inclusive END, exact SIZE).
 */

export type ByteRange =
  | { readonly kind: 'whole' }
  | { readonly kind: 'partial'; readonly start: number; readonly end: number }
  | { readonly kind: 'unsatisfiable' };

/** Up to 16 digits: every value fits a JS number exactly. */
const RANGE_SPEC = /^bytes=(\d{0,16})-(\d{0,16})$/;
const CONTENT_RANGE = /^bytes (\d{1,16})-(\d{1,16})\/(\d{1,16})$/;

/** Interprets a `Range` header for a file of `size` (≥ 1) bytes. */
export function parseRange(header: string | undefined, size: number): ByteRange {
  if (header === undefined) return { kind: 'whole' };
  const m = RANGE_SPEC.exec(header.trim());
  if (!m) return { kind: 'whole' };
  const [, a, b] = m as unknown as [string, string, string];
  if (a === '' && b === '') return { kind: 'whole' };
  if (a === '') {
    // A suffix: the last N bytes.
    const n = Number(b);
    if (n === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  if (b !== '' && Number(b) < start) return { kind: 'whole' };
  if (start >= size) return { kind: 'unsatisfiable' };
  const end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  return { kind: 'partial', start, end };
}

/** `Content-Range: bytes START-END/SIZE`, or undefined when the header is absent or malformed. */
export function parseContentRange(
  header: string | undefined,
): { start: number; end: number; size: number } | undefined {
  if (header === undefined) return undefined;
  const m = CONTENT_RANGE.exec(header.trim());
  if (!m) return undefined;
  const start = Number(m[1]);
  const end = Number(m[2]);
  const size = Number(m[3]);
  if (end < start || end >= size) return undefined;
  return { start, end, size };
}
