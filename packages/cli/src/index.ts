/** @qalqon/cli: the `qalqon` command as a library (`run`), for tests and embedding. */
export { adminRequest } from './admin-client.js';
export { run, USAGE } from './cli.js';
export { type CliIo, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, processIo, RefusedError, UsageError } from './io.js';
