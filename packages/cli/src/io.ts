/** Where the CLI writes, injectable so tests can run commands in-process. */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Whether stderr is a terminal, for an io that says so itself (as tests do). */
  readonly stderrIsTTY?: boolean;
}

export const processIo: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

/** Is `io`'s stderr a terminal? An io may say so itself (`stderrIsTTY`); else only this process's may be. */
export function stderrIsTTY(io: CliIo): boolean {
  if (io.stderrIsTTY !== undefined) return io.stderrIsTTY;
  return io === processIo && process.stderr.isTTY === true;
}

/** Bad usage: exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A refused operation: exit status 1. The message is one sentence for stderr. */
export class RefusedError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'RefusedError';
    this.code = code;
  }
}

export const EXIT_OK = 0;
export const EXIT_REFUSED = 1;
export const EXIT_USAGE = 2;
