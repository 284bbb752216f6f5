/**
 * The benchmarks are not tests — they print figures and assert nothing about speed — but
 * they must keep running. This runs each once with tiny parameters and checks that it
 * prints the one JSON object with every documented field as a number.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));

async function bench(args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await run(process.execPath, ['bench/dist/bench/run.js', ...args, '--json'], {
    cwd: root,
    timeout: 120_000,
  });
  const lines = stdout.trim().split('\n');
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]!) as Record<string, unknown>;
}

describe('benchmarks run and print their JSON fields', () => {
  beforeAll(async () => {
    // `npm test` builds first; this keeps a lone `vitest run` honest too (incremental, fast).
    await run(process.execPath, ['node_modules/typescript/bin/tsc', '-b', 'bench', 'packages/cli'], {
      cwd: root,
    });
  }, 300_000);

  it('protocol', async () => {
    const r = (await bench(['protocol', '--seconds', '0.05', '--rounds', '1'])) as Record<
      string,
      Record<string, number>
    >;
    for (const side of ['qalqon', 'libsignal', 'ratio'] as const) {
      for (const f of ['oneWay', 'pingPong', 'setup'] as const) {
        expect(Number.isFinite(r[side]?.[f]) && r[side]![f]! > 0, `${side}.${f}`).toBe(true);
      }
    }
  }, 120_000);

  it('files', async () => {
    const r = await bench(['files', '--mib', '4']);
    for (const f of [
      'uploadMBps',
      'downloadMBps',
      'rangeReadMs',
      'aesGcmMBps',
      'uploadRatio',
      'downloadRatio',
    ]) {
      expect(typeof r[f] === 'number' && Number.isFinite(r[f]) && (r[f] as number) > 0, f).toBe(true);
    }
    expect(r.fileMiB).toBe(4);
  }, 120_000);

  it('relay', async () => {
    const r = await bench(['relay', '--devices', '4', '--seconds', '0.5', '--rate', '200', '--idle', '10']);
    for (const f of ['throughput', 'p50Ms', 'p99Ms', 'offeredRate', 'idleConnections', 'idleRssMiB']) {
      expect(typeof r[f] === 'number' && Number.isFinite(r[f]), f).toBe(true);
    }
    expect(r.idleConnections).toBe(10);
    expect(r.throughput as number).toBeGreaterThan(0);
  }, 120_000);

  // Two real server processes on a fresh PostgreSQL database and NATS (both must run), then
  // the one-node PostgreSQL and embedded references: every delivered message crossed nodes.
  it('relay --nodes 2', async () => {
    const r = await bench(['relay', '--nodes', '2', '--quick']);
    const reference = r.reference as Record<string, Record<string, unknown>>;
    const fields = ['throughput', 'p50Ms', 'p99Ms', 'offeredRate', 'idleConnections', 'idleRssMiB'];
    for (const [name, figures] of [
      ['2 nodes', r],
      ['single', reference.single!],
      ['embedded', reference.embedded!],
      ['ratio', reference.ratio!],
    ] as const) {
      for (const f of name === 'ratio' ? ['throughput', 'p50Ms', 'p99Ms', 'idleRssMiB'] : fields) {
        const v = figures[f];
        expect(typeof v === 'number' && Number.isFinite(v) && v > 0, `${name}.${f}`).toBe(true);
      }
    }
    expect([r.nodes, r.database, r.routing]).toEqual([2, 'postgres', 'cross-node']);
    expect([reference.single!.nodes, reference.single!.database]).toEqual([1, 'postgres']);
    expect([reference.embedded!.nodes, reference.embedded!.database]).toEqual([1, 'embedded']);
    // The idle connections were spread over both nodes, whose memory both counts.
    expect(r.idleConnections).toBe(10);
    expect((r.idleRssMiBPerNode as number[]).filter((x) => x > 0)).toHaveLength(2);
    expect(reference.ratio!.throughput).toBeCloseTo(
      (r.throughput as number) / (reference.single!.throughput as number),
      6,
    );
  }, 120_000);
});
