import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const root = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  resolve: {
    // Tests run against the TypeScript sources of every workspace package, so a
    // change is tested without a rebuild; `tsc -b` in `npm test` type-checks the same code.
    alias: [
      { find: /^@qalqon\/([a-z-]+)$/, replacement: `${root}packages/$1/src/index.ts` },
      { find: /^@qalqon\/([a-z-]+)\/([a-z-]+)$/, replacement: `${root}packages/$1/src/$2.ts` },
    ],
  },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'tests/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
