/**
 * The V8 flags every `qalqon` process is started with: in the executable's `#!` line, in
 * `npm start`, in the systemd unit of docs/DEPLOYMENT.md and in the benchmarks' `node`
 * commands (tests/node-flags.test.ts keeps them equal to this list).
 *
 * `--initial-old-space-size=128`: V8 does no full (mark-compact) collection while its old
 * generation is below 128 MB. File transfers churn memory outside the JavaScript heap
 * (every node:crypto call returns a fresh buffer, every TLS read a fresh 16 KiB one); V8
 * counts those bytes against the old generation's headroom until the next young
 * collection frees them, and with the small heap of a client or an idle server (15-25 MB)
 * that headroom is a few MB, so a transfer ran a full collection every 14-17 MiB: a third
 * of both processes' CPU time (bench/files.ts). The floor changes nothing once a heap is
 * larger than 128 MB (a busy relay's), and costs at most that much memory before the
 * first full collection. It is an isolate start-up setting: `v8.setFlagsFromString` at
 * run time has no effect on it, and Node does not accept it in NODE_OPTIONS.
 */
export const NODE_FLAGS: readonly string[] = Object.freeze(['--initial-old-space-size=128']);
