/**
 * Keeps the package boundaries of docs/ARCHITECTURE.md true: every `@qalqon/*` import in a
 * package's sources, and every `@qalqon/*` dependency in its package.json, must be one the
 * table below allows, and the table must match the one in the document. Above all the
 * server may never import the protocol package: it must be unable to decrypt.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

/** package → the workspace packages it may import. */
const ALLOWED: Record<string, readonly string[]> = {
  crypto: [],
  fsio: [],
  protocol: ['crypto'],
  wire: [],
  server: ['wire', 'crypto', 'fsio'],
  client: ['protocol', 'crypto', 'wire', 'fsio'],
  cli: ['server', 'client', 'wire'],
};

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (/\.(ts|tsx|js|mjs)$/.test(name)) out.push(p);
  }
  return out;
}

const packages = readdirSync(join(root, 'packages')).filter((n) =>
  statSync(join(root, 'packages', n)).isDirectory(),
);

describe('package boundaries (docs/ARCHITECTURE.md)', () => {
  it('every package is in the table', () => {
    for (const p of packages) expect(Object.keys(ALLOWED), `package ${p} has no row`).toContain(p);
  });

  for (const pkg of packages) {
    it(`${pkg} imports only what it may`, () => {
      const allowed = new Set(ALLOWED[pkg] ?? []);
      const manifest = JSON.parse(readFileSync(join(root, 'packages', pkg, 'package.json'), 'utf8')) as {
        dependencies?: Record<string, string>;
      };
      for (const dep of Object.keys(manifest.dependencies ?? {})) {
        const m = /^@qalqon\/(.+)$/.exec(dep);
        if (m) expect(allowed.has(m[1]!), `${pkg}/package.json depends on ${dep}`).toBe(true);
      }
      for (const file of sourceFiles(join(root, 'packages', pkg, 'src'))) {
        const text = readFileSync(file, 'utf8');
        for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]@qalqon\/([a-z-]+)/g)) {
          expect(allowed.has(m[1]!), `${file} imports @qalqon/${m[1]}`).toBe(true);
        }
        // No reaching into another package's files by relative path either.
        expect(/['"](\.\.\/){2,}[a-z-]+\/src\//.test(text), `${file} imports another package by path`).toBe(
          false,
        );
      }
    });
  }

  it('the table matches docs/ARCHITECTURE.md', () => {
    const doc = readFileSync(join(root, 'docs', 'ARCHITECTURE.md'), 'utf8');
    for (const [pkg, deps] of Object.entries(ALLOWED)) {
      const row = new RegExp(`^\\| \`${pkg}\` \\|[^|]*\\| ([^|]*) \\|`, 'm').exec(doc);
      expect(row, `docs/ARCHITECTURE.md has no row for ${pkg}`).not.toBeNull();
      const documented =
        row![1]!.trim() === '—' ? [] : [...row![1]!.matchAll(/`([a-z-]+)`/g)].map((m) => m[1]);
      expect(documented.sort(), `docs row for ${pkg}`).toEqual([...deps].sort());
    }
  });

  it('the protocol package does no I/O', () => {
    for (const file of sourceFiles(join(root, 'packages', 'protocol', 'src'))) {
      if (file.endsWith('.test.ts')) continue;
      const text = readFileSync(file, 'utf8');
      expect(
        /from ['"]node:(fs|net|http|https|tls|dgram|child_process|worker_threads)/.test(text),
        file,
      ).toBe(false);
    }
  });
});
