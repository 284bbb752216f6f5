import { describe, expect, it } from 'vitest';
import { newEnrolmentCode } from './data-dir.js';
import { newOneTimeCode } from './links.js';

describe('one-time codes (enrolment, device link)', () => {
  it('are 20 base64url characters that never start with "-", which a command line takes for an option', () => {
    // With a plain base64url draw, about 156 of these 10,000 would start with "-".
    const codes = Array.from({ length: 5_000 }, () => [newOneTimeCode(), newEnrolmentCode()]).flat();
    for (const c of codes) expect(c).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_-]{19}$/);
    expect(new Set(codes).size).toBe(codes.length);
    // Every other character still appears first (the redraw removes "-" only).
    expect(new Set(codes.map((c) => c[0])).size).toBe(63);
  });
});
