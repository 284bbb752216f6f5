/**
 * `qalqon file send|get`: end-to-end encrypted files over @qalqon/client. While a transfer
 * runs and stderr is a terminal, one line on stderr is rewritten in place with the
 * percentage, the bytes and the rate; otherwise (a pipe, a log file) nothing is printed
 * until the result. stdout carries only the result (one JSON object with --json).
 */
import type { FileProgress } from '@qalqon/client';
import { type ClientValues, formatBytes, terminalSafe, withClient } from './client-commands.js';
import { type CliIo, EXIT_OK, stderrIsTTY, UsageError } from './io.js';

export const FILE_USAGE = `  qalqon file send --profile DIR (--to USER | --channel NAME) PATH [--json]
  qalqon file get --profile DIR FILE_ID --out PATH [--json]
      (progress on stderr when it is a terminal; recv shows files as "from: [file NAME, SIZE, id FILE_ID]")
`;

export interface FileValues extends ClientValues {
  out?: string;
}

/** How often the progress line is redrawn at most. */
const PROGRESS_INTERVAL_MS = 100;

/** The progress line: redrawn in place on a terminal, silent otherwise. */
export function progressLine(io: CliIo): { onProgress: (p: FileProgress) => void; clear: () => void } {
  if (!stderrIsTTY(io)) return { onProgress: () => undefined, clear: () => undefined };
  let phase = '';
  let started = 0;
  let startBytes = 0;
  let lastDraw = 0;
  let drawn = false;
  return {
    onProgress(p) {
      const now = Date.now();
      if (p.phase !== phase) {
        phase = p.phase;
        started = now;
        startBytes = p.done;
        lastDraw = 0;
      }
      if (now - lastDraw < PROGRESS_INTERVAL_MS && p.done < p.total) return;
      lastDraw = now;
      const pct = p.total > 0 ? Math.floor((100 * p.done) / p.total) : 100;
      const secs = (now - started) / 1000;
      const rate = secs > 0 ? (p.done - startBytes) / secs : 0;
      const label =
        p.phase === 'thumbnail' ? 'thumbnail' : p.phase === 'upload' ? 'uploading' : 'downloading';
      io.stderr(
        `\r\x1b[K${label} ${String(pct).padStart(3)}%  ${formatBytes(p.done)} / ${formatBytes(p.total)}  ${formatBytes(Math.round(rate))}/s`,
      );
      drawn = true;
    },
    clear() {
      if (drawn) io.stderr('\r\x1b[K');
      drawn = false;
    },
  };
}

export async function fileCommand(io: CliIo, values: FileValues, args: string[]): Promise<number> {
  const json = values.json === true;
  const [verb, ...rest] = args;
  const print = (value: Record<string, unknown>, human: string) =>
    io.stdout(json ? `${JSON.stringify(value)}\n` : human);
  if (verb === 'send') {
    if (values.out !== undefined) throw new UsageError('--out applies to "file get" only');
    if (rest.length !== 1)
      throw new UsageError('expected one file: file send (--to USER | --channel NAME) PATH');
    if ((values.to === undefined) === (values.channel === undefined)) {
      throw new UsageError('file send needs exactly one of --to USER and --channel NAME');
    }
    const path = rest[0]!;
    const target = values.to !== undefined ? { to: values.to } : { channel: values.channel! };
    const progress = progressLine(io);
    const r = await withClient(io, values, async (c) => {
      try {
        return await c.sendFile(target, path, { onProgress: progress.onProgress });
      } finally {
        progress.clear();
      }
    });
    const where = 'to' in target ? target.to : `#${target.channel}`;
    print(
      {
        ...target,
        id: r.id,
        sentAt: r.sentAt,
        fileId: r.fileId,
        name: r.name,
        size: r.size,
        mime: r.mime,
        ...(r.thumbnail ? { thumbnail: r.thumbnail } : {}),
      },
      `Sent ${terminalSafe(r.name)} (${formatBytes(r.size)}) to ${where}; file id ${r.fileId}.\n`,
    );
    return EXIT_OK;
  }
  if (verb === 'get') {
    if (values.to !== undefined || values.channel !== undefined) {
      throw new UsageError('--to and --channel apply to "file send" only');
    }
    if (rest.length !== 1) throw new UsageError('expected one file id: file get FILE_ID --out PATH');
    const out = values.out;
    if (out === undefined || out === '') throw new UsageError('--out is required');
    const id = rest[0]!;
    const progress = progressLine(io);
    const r = await withClient(io, values, async (c) => {
      try {
        return await c.getFile(id, out, { onProgress: progress.onProgress });
      } finally {
        progress.clear();
      }
    });
    print(
      { fileId: r.id, name: r.name, size: r.size, mime: r.mime, sha256: r.sha256, path: r.path },
      `Saved ${terminalSafe(r.name)} (${formatBytes(r.size)}, verified) to ${terminalSafe(r.path)}.\n`,
    );
    return EXIT_OK;
  }
  throw new UsageError(`unknown command "file ${verb ?? ''}"`.trimEnd());
}
