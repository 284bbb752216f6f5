/**
 * Every place that starts a qalqon process passes the same V8 flags
 * (@qalqon/cli/node-flags): the executable's `#!` line, `npm start`, `npm run bench`, the
 * systemd unit in docs/DEPLOYMENT.md and the README's alias; and the `#!` line's command
 * really runs the CLI.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NODE_FLAGS } from '@qalqon/cli/node-flags';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

describe('node flags', () => {
  it('are a non-empty list of V8 options', () => {
    expect(NODE_FLAGS.length).toBeGreaterThan(0);
    for (const f of NODE_FLAGS) expect(f).toMatch(/^--[a-z-]+=\d+$/);
  });

  const mainSource = read('packages/cli/src/main.ts');
  const shebang = mainSource.slice(0, mainSource.indexOf('\n'));

  it('are in the executable #! line, which runs the CLI', () => {
    expect(shebang).toBe(`#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
    // tsc keeps the line in the built file.
    const built = read('packages/cli/dist/main.js');
    expect(built.slice(0, built.indexOf('\n'))).toBe(shebang);
    const args = shebang.slice('#!/usr/bin/env -S node '.length).split(' ');
    const r = spawnSync(process.execPath, [...args, join(ROOT, 'packages/cli/dist/main.js'), '--help'], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/usage:\s+qalqon server init/);
  });

  it('are in npm start, npm run bench, the systemd unit and the README alias', () => {
    const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;
    const flags = NODE_FLAGS.join(' ');
    expect(scripts.start).toContain(`node ${flags} packages/cli/dist/main.js server start`);
    expect(scripts.bench).toContain(`node ${flags} bench/dist/bench/run.js`);
    expect(read('docs/DEPLOYMENT.md')).toContain(
      `ExecStart=/usr/bin/node ${flags} /opt/qalqon/packages/cli/dist/main.js server start`,
    );
    expect(read('README.md')).toContain(`alias qalqon="node ${flags} $PWD/packages/cli/dist/main.js"`);
  });
});
