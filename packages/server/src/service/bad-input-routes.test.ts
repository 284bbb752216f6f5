/**
 * Untrusted input on the routes added for channels, remote administration, files and
 * presence, and on the admin socket's new operations: for a caller whom RBAC allows (an
 * admin), every malformed, oversized or mis-shaped body gets a coded 4xx and changes
 * nothing; a channel message whose header names another channel is refused.
 */
import { randomBytes } from 'node:crypto';
import { channelEnvelopeHeader, encodeBase64, MAX_HTTP_BODY_BYTES, MAX_SEND_BODY_BYTES } from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import type { Storage } from '../storage/types.js';
import { enrol, type Harness, http, signIn, startHarness } from './harness.test-util.js';

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) await h.close();
});

function code(r: { json: unknown }): string | undefined {
  return (r.json as { error?: { code?: string } } | undefined)?.error?.code;
}

/** Everything the new routes could change, as one comparable value. */
async function snapshot(s: Storage) {
  return JSON.stringify({
    users: (await s.listUsers()).map((u) => [u.name, u.roles]),
    roles: (await s.listRoles()).map((r) => [r.name, r.permissions]),
    grants: await s.listGrants(),
    units: await s.listOrgUnits(),
    channels: (await s.listChannels()).map((c) => [c.id, c.seq, c.memberCount]),
    audit: (await s.listAudit()).filter((r) => r.action !== 'access.denied').length,
  });
}

describe('bad input on the channel, admin, file and presence routes', () => {
  it('answers every malformed, oversized or mis-shaped body with a coded 4xx and changes nothing', async () => {
    const h = await startHarness({ adminSocket: true });
    harnesses.push(h);
    const admin = await enrol(h, (await h.addUser('root', { roles: ['admin'] })).code);
    const token = await signIn(h, admin);
    // A channel the admin is a member of, so its routes reach their handlers.
    const channelId = randomBytes(16).toString('hex');
    await h.storage.createChannel({
      id: channelId,
      name: 'ops',
      createdBy: admin.userId,
      genesis: { change: new Uint8Array(32), signature: new Uint8Array(64) },
    });
    const routes = [
      '/v1/channels',
      `/v1/channels/${channelId}/changes`,
      `/v1/channels/${channelId}/messages`,
      '/v1/admin/users',
      '/v1/admin/roles',
      '/v1/admin/grants',
      '/v1/admin/grants/revoke',
      '/v1/admin/org',
      '/v1/admin/org/ops/users',
      '/v1/admin/org/ops/users/remove',
      '/v1/files',
    ];
    const before = await snapshot(h.storage);
    for (const path of routes) {
      // The message route takes a whole envelope; every other route the general limit.
      const limit = path.endsWith('/messages') ? MAX_SEND_BODY_BYTES : MAX_HTTP_BODY_BYTES;
      const oversized = JSON.stringify({ pad: 'x'.repeat(limit) });
      const cases: [string, unknown, string | undefined, number, string][] = [
        ['not JSON', '{"name":', 'application/json', 400, 'BAD_REQUEST'],
        ['an array', [], undefined, 400, 'BAD_REQUEST'],
        ['an unknown field', { unexpected: true }, undefined, 400, 'BAD_REQUEST'],
        [
          'wrong types',
          { name: 5, entry: 'x', body: 7, size: 'big', user: [] },
          undefined,
          400,
          'BAD_REQUEST',
        ],
        ['oversized', oversized, 'application/json', 413, 'PAYLOAD_TOO_LARGE'],
        ['text/plain', 'name=x', 'text/plain', 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ];
      for (const [what, body, contentType, status, wireCode] of cases) {
        const r = await http(h, 'POST', path, body, { token, ...(contentType ? { contentType } : {}) });
        expect([path, what, r.status, code(r)]).toEqual([path, what, status, wireCode]);
      }
    }
    // Malformed path parameters and queries.
    for (const [path, status] of [
      ['/v1/channels/not-hex', 400],
      [`/v1/channels/${channelId}?after=-1`, 400],
      ['/v1/presence/Not_A_Name', 400],
      ['/v1/admin/audit?limit=0', 400],
      ['/v1/admin/grants?user=%00', 400],
      ['/v1/files/zz', 400],
    ] as const) {
      const r = await http(h, 'GET', path, undefined, { token });
      expect([path, r.status, code(r)]).toEqual([path, status, 'BAD_REQUEST']);
    }
    // Forged: a channel message whose header names another channel.
    const other = randomBytes(16).toString('hex');
    const forged = new Uint8Array([...channelEnvelopeHeader(other), 0xa1, 1, 2, 3]);
    const r = await http(
      h,
      'POST',
      `/v1/channels/${channelId}/messages`,
      { body: encodeBase64(forged) },
      { token },
    );
    expect([r.status, code(r)]).toEqual([400, 'BAD_REQUEST']);
    // The admin socket's new operations: unknown ops, wrong shapes, bad names.
    for (const body of [
      { op: 'role.create', name: 'x', permissions: ['not.a.permission'] },
      { op: 'role.grant', user: 'root', role: 'admin', scope: { kind: 'planet' } },
      { op: 'org.create', name: 'Bad Name' },
      { op: 'audit.list', limit: 0 },
      { op: 'audit.verify', extra: 1 },
      { op: 'role.nuke' },
    ]) {
      const a = await h.admin(body);
      expect([body.op, a.status, code(a)]).toEqual([body.op, 400, 'BAD_REQUEST']);
    }
    expect(await snapshot(h.storage)).toBe(before);
  });
});
