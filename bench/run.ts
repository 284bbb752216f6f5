/**
 * `npm run bench -- NAME [--json] [flags]`: runs one benchmark. Each benchmark prints a
 * human-readable table, or with `--json` exactly one JSON object on stdout.
 */
import { NODE_FLAGS } from '@qalqon/cli/node-flags';

const BENCHMARKS: Record<string, () => Promise<{ run(argv: readonly string[]): Promise<void> }>> = {
  files: () => import('./files.js'),
  protocol: () => import('./protocol.js'),
  relay: () => import('./relay.js'),
};

const [name, ...rest] = process.argv.slice(2);
const load = name ? BENCHMARKS[name] : undefined;
if (!load) {
  process.stderr.write(`usage: npm run bench -- (${Object.keys(BENCHMARKS).join('|')}) [--json]\n`);
  process.exit(2);
}
// The clients measured here run in this process, so it needs the flags the `qalqon`
// executable runs with (package.json's "bench" script passes them).
const missing = NODE_FLAGS.filter((f) => !process.execArgv.includes(f));
if (missing.length > 0) {
  process.stderr.write(`note: this process lacks ${missing.join(' ')}; use npm run bench\n`);
}
const mod = await load();
await mod.run(rest);
