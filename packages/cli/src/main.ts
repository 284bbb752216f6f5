#!/usr/bin/env -S node --initial-old-space-size=128
/** The `qalqon` executable: runs the command and exits with its status. */
import { run } from './cli.js';
import { processIo } from './io.js';

const code = await run(process.argv.slice(2), processIo);
process.exitCode = code;
// After a server's graceful shutdown nothing should keep the process alive; if a stray
// handle does, leave anyway rather than hang under a supervisor's SIGTERM.
setTimeout(() => process.exit(code), 3000).unref();
