/**
 * A child process of the relay benchmark that enrols `count` devices and holds one idle,
 * authenticated WSS connection for each, so the benchmark can read the server's memory
 * with many connections open. Connections are spread over several such processes because
 * each process may hold only so many file descriptors. Started with an IPC channel; it
 * reports `{ ready: n }` and then waits to be killed.
 */
import { connect, enrolDevice, makeSharedKeys, pool, serverFromDataDir } from './relay-client.js';

const [dataDir, listening, countArg, prefix] = process.argv.slice(2);
if (!dataDir || !listening || !countArg || !prefix || !process.send) {
  process.stderr.write('usage: relay-idle-worker DATA_DIR LISTEN_URL COUNT PREFIX (with an IPC channel)\n');
  process.exit(2);
}
// A parent that goes away without killing this process (an interrupted benchmark) ends it too.
process.on('disconnect', () => process.exit(0));
const server = serverFromDataDir(dataDir, listening);
const keys = makeSharedKeys();
const held: unknown[] = [];
await pool(Number(countArg), 24, async (i) => {
  const device = await enrolDevice(server, `${prefix}${i}`, keys);
  held.push(await connect(server, device, () => {}));
});
process.send({ ready: held.length });
// Stay alive holding the connections until the parent kills this process.
setInterval(() => {}, 1 << 30);
