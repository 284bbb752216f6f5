/**
 * The error-code registry in docs/errors.md and the code unions in each package's
 * errors.ts must list the same codes, so an application developer can trust the document.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const doc = readFileSync(join(root, 'docs', 'errors.md'), 'utf8');

/** The codes of the `type XErrorCode = | 'A' | 'B'` union in a package's errors.ts. */
function codesInSource(pkg: string): string[] {
  // Comments go first: a ';' or a quoted word inside a code's doc comment must neither end
  // the union early nor count as a code.
  const text = readFileSync(join(root, 'packages', pkg, 'src', 'errors.ts'), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\/\/[^\n]*/g, '');
  const union = /export type \w+ErrorCode =([\s\S]*?);/.exec(text);
  if (!union) throw new Error(`no ErrorCode union in ${pkg}/src/errors.ts`);
  return [...union[1]!.matchAll(/\|\s*'([A-Z_]+)'/g)].map((m) => m[1]!);
}

/** The codes in the `## pkg` section of docs/errors.md (rows starting with | `CODE` |). */
function codesInDoc(pkg: string): string[] {
  const section = new RegExp(`^## \`${pkg}\`[^\\n]*\\n([\\s\\S]*?)(?=^## |$(?![\\s\\S]))`, 'm').exec(doc);
  if (!section) throw new Error(`docs/errors.md has no section for ${pkg}`);
  return [...section[1]!.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]!);
}

const packages = readdirSync(join(root, 'packages')).filter((p) =>
  existsSync(join(root, 'packages', p, 'src', 'errors.ts')),
);

describe('docs/errors.md', () => {
  it('covers at least the crypto and protocol packages', () => {
    expect(packages).toEqual(expect.arrayContaining(['crypto', 'protocol']));
  });
  for (const pkg of packages) {
    it(`lists exactly the codes of ${pkg}`, () => {
      const src = codesInSource(pkg);
      expect(src.length).toBeGreaterThan(0);
      expect(codesInDoc(pkg).sort()).toEqual([...src].sort());
    });
  }
});
