/**
 * `npm run bench -- NAME [--json] [flags]`: runs one benchmark. Each benchmark prints a
 * human-readable table, or with `--json` exactly one JSON object on stdout.
 */
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
const mod = await load();
await mod.run(rest);
