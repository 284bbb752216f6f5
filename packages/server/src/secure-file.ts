/**
 * Files that hold key material (the KMS master key, the wrapped data keys) are written
 * atomically with mode 0600 and checked before they are trusted. Atomic: a crash leaves
 * either the old file or the new one, never a torn mix that would lose every key at once.
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ServerError, type ServerErrorCode } from './errors.js';

/** Owner read/write only. */
export const PRIVATE_FILE_MODE = 0o600;
/** Owner only. */
export const PRIVATE_DIR_MODE = 0o700;

/** POSIX permission checks do not mean the same on Windows; the server targets POSIX hosts. */
const POSIX = process.platform !== 'win32';

/** fsync a directory so a rename or create inside it survives a crash (POSIX only). */
export function fsyncDir(dir: string): void {
  if (!POSIX) return;
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Creates `dir` (and parents) with mode 0700 if it does not exist. */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
}

/**
 * Writes `data` to `path` atomically with mode 0600: a temporary file beside it is written
 * and fsynced, renamed over `path`, and the directory fsynced. With `exclusive`, refuses
 * (code `existsCode`) when `path` already exists, so initialisation never overwrites a key.
 */
export function writePrivateFileAtomic(
  path: string,
  data: Uint8Array,
  options: { exclusive?: boolean; existsCode?: ServerErrorCode } = {},
): void {
  const dir = dirname(path);
  if (options.exclusive && lstatSync(path, { throwIfNoEntry: false })) {
    throw new ServerError(options.existsCode ?? 'INVALID_ARGUMENT', `${basename(path)} already exists`);
  }
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  // 'wx' refuses to follow a planted symlink or reuse an existing file; the mode applies on creation.
  const fd = openSync(tmp, 'wx', PRIVATE_FILE_MODE);
  try {
    try {
      let off = 0;
      while (off < data.length) off += writeSync(fd, data, off, data.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (options.exclusive) {
      // link() fails atomically with EEXIST when `path` exists, where rename() would replace it.
      try {
        linkSync(tmp, path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
          throw new ServerError(options.existsCode ?? 'INVALID_ARGUMENT', `${basename(path)} already exists`);
        }
        throw err;
      }
      rmSync(tmp);
    } else {
      renameSync(tmp, path);
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  fsyncDir(dir);
}

/**
 * Refuses (code `code`) a file that others could read or replace: it must be a regular file
 * (not a symlink), owned by this process's user, with no group or other permission bits.
 * Returns false when the file does not exist.
 */
export function checkPrivateFile(path: string, label: string, code: ServerErrorCode): boolean {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st) return false;
  if (!st.isFile()) throw new ServerError(code, `${label} is not a regular file`);
  if (!POSIX) return true;
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new ServerError(
      code,
      `${label} has mode ${mode}; it must not be accessible to group or others (chmod 600)`,
    );
  }
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new ServerError(code, `${label} is owned by uid ${st.uid}, not by this process (uid ${uid})`);
  }
  return true;
}
