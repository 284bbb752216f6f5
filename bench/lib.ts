/**
 * Small measurement helpers shared by the benchmarks. A benchmark measures Qalqon and a
 * reference implementation in the same process, alternating rounds so that CPU frequency
 * changes and other load hit both alike, and reports the median rate of each and their ratio.
 */
import { performance } from 'node:perf_hooks';
import { NODE_FLAGS } from '@qalqon/cli/node-flags';

export interface Rate {
  /** Operations per second (median over rounds). */
  readonly perSecond: number;
  /** Every round's rate, for the curious. */
  readonly rounds: readonly number[];
}

/**
 * Runs `op` (which performs `opsPerCall` operations and may be async) repeatedly for about
 * `seconds` per round and returns operations per second.
 */
export async function measure(
  op: () => unknown | Promise<unknown>,
  opsPerCall: number,
  seconds: number,
): Promise<number> {
  const deadline = performance.now() + seconds * 1000;
  let ops = 0;
  const start = performance.now();
  do {
    await op();
    ops += opsPerCall;
  } while (performance.now() < deadline);
  return (ops * 1000) / (performance.now() - start);
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * Measures each named contender `rounds` times, alternating between them, after one
 * warm-up round each. `make` builds a fresh operation for a contender (so state such as a
 * session does not grow across rounds without bound).
 */
export async function compare<K extends string>(
  contenders: Record<K, () => Promise<{ op: () => unknown | Promise<unknown>; opsPerCall: number }>>,
  opts: { rounds: number; seconds: number },
): Promise<Record<K, Rate>> {
  const names = Object.keys(contenders) as K[];
  const results = Object.fromEntries(names.map((n) => [n, [] as number[]])) as unknown as Record<K, number[]>;
  for (let round = -1; round < opts.rounds; round++) {
    for (const name of names) {
      const { op, opsPerCall } = await contenders[name]();
      const rate = await measure(op, opsPerCall, round < 0 ? Math.min(0.5, opts.seconds) : opts.seconds);
      if (round >= 0) results[name].push(rate);
    }
  }
  return Object.fromEntries(
    names.map((n) => [n, { perSecond: median(results[n]), rounds: results[n] }]),
  ) as unknown as Record<K, Rate>;
}

export function formatRate(x: number): string {
  return x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(1);
}

/**
 * Parses `--json` and `--name value` / `--name=value` flags after the benchmark name. Flags
 * named in `booleans` take no value: `--name` alone sets them to `'true'`.
 */
export function parseFlags(
  argv: readonly string[],
  booleans: readonly string[] = [],
): { json: boolean; values: Map<string, string> } {
  const values = new Map<string, string>();
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a.startsWith('--') && booleans.includes(a.slice(2))) values.set(a.slice(2), 'true');
    else if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) values.set(a.slice(2, eq), a.slice(eq + 1));
      else values.set(a.slice(2), argv[++i] ?? '');
    } else throw new Error(`unexpected argument ${a}`);
  }
  return { json, values };
}

/**
 * The Node arguments a benchmark starts a `qalqon server start` child with: the flags every
 * qalqon process runs with (@qalqon/cli/node-flags), then any given in
 * QALQON_BENCH_SERVER_NODE_OPTIONS for the server only (e.g. "--cpu-prof --cpu-prof-dir=/tmp/p").
 */
export function serverNodeArgs(): string[] {
  const extra = (process.env.QALQON_BENCH_SERVER_NODE_OPTIONS ?? '').split(/\s+/).filter((f) => f !== '');
  return [...NODE_FLAGS, ...extra];
}
