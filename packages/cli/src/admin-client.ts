/**
 * Talks to a running server's admin API over the Unix socket in its data directory. Never
 * over the network: only a process of the server's own OS user can open the socket.
 */
import { request } from 'node:http';
import { join, resolve } from 'node:path';
import { ADMIN_SOCKET_FILE } from '@qalqon/server';
import { type AdminRequestJson, ErrorResponse } from '@qalqon/wire';
import { RefusedError } from './io.js';

/** Largest admin response accepted (a user list of some thousands fits). */
const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

export function adminRequest(dataDir: string, body: AdminRequestJson): Promise<Record<string, unknown>> {
  const socketPath = join(resolve(dataDir), ADMIN_SOCKET_FILE);
  const payload = JSON.stringify(body);
  return new Promise((resolvePromise, reject) => {
    const req = request(
      {
        socketPath,
        // One connection per request: a pooled one could outlive the server it went to.
        agent: false,
        method: 'POST',
        path: '/admin',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy();
            reject(new RefusedError('INTERNAL', 'the server sent an oversized response'));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          let json: unknown;
          try {
            json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            reject(new RefusedError('INTERNAL', 'the server sent a response that is not JSON'));
            return;
          }
          if ((res.statusCode ?? 500) >= 400) {
            const e = ErrorResponse.safeParse(json);
            reject(
              e.success
                ? new RefusedError(e.data.error.code, e.data.error.message)
                : new RefusedError('INTERNAL', `the server answered with status ${res.statusCode}`),
            );
            return;
          }
          resolvePromise(json as Record<string, unknown>);
        });
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(
          new RefusedError(
            'NOT_RUNNING',
            `no server is running on ${resolve(dataDir)} (start it with: qalqon server start --data ${dataDir})`,
          ),
        );
      } else if (err.code === 'EACCES') {
        reject(
          new RefusedError('FORBIDDEN', `the admin socket in ${resolve(dataDir)} belongs to another user`),
        );
      } else {
        reject(
          new RefusedError('INTERNAL', `the admin socket could not be reached (${err.code ?? 'error'})`),
        );
      }
    });
    req.end(payload);
  });
}
