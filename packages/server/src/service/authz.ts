/**
 * Authorisation: the one place the service decides whether a subject may do something.
 *
 * - `authorize(ctx, subject, permission, resource)` allows or throws FORBIDDEN (403), and a
 *   refusal is appended to the audit log (`access.denied`, outcome `denied`).
 * - `ROUTE_RULES` names, for every HTTP route (keyed `"METHOD /url"` exactly as fastify's
 *   `routeOptions.url`) and every WebSocket operation (`"WS send"` …), who may call it:
 *   `public` (no session), `device` (any signed-in device acting on its own account), or
 *   `permission` (a permission on a resource resolved from the request), optionally with
 *   `membership: 'channel'` (the caller must be in the channel's server-side member table).
 * - `installAuthorization` enforces the table centrally: an `onRoute` hook refuses at
 *   start-up any route without a rule, and a `preHandler` hook authenticates, authorises
 *   and keeps the identity for the handler (`requestIdentity`). The WebSocket plugin calls
 *   `authorizeFrame` for each frame. No plugin checks roles itself.
 *
 * Effective grants of a user: their global roles, unit-scoped grants (applying to any
 * resource in that unit or a descendant unit) and channel-scoped grants (that channel
 * only). Roles map to permissions through `storage.listRoles()`. The `Authorizer` caches
 * a user's grants, the roles and the org tree; every change made through this server
 * invalidates what it touched, and entries expire after AUTHZ_CACHE_TTL_MS so changes
 * made through another node are seen soon. Sending a message never reads the storage for
 * its authorisation while the cache is warm.
 */
import {
  type AuditActorJson,
  ChannelIdParam,
  GrantRequest,
  OrgUnitName,
  type Permission,
  UserNameParamForAdmin,
} from '@qalqon/wire';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Channel, Grant, OrgUnit, Storage } from '../storage/types.js';
import { ApiError } from './api-error.js';
import { anonymousActor, authenticate, parse, type ServiceContext } from './context.js';
import type { SessionIdentity } from './sessions.js';

/** How long a cached grant set, role table or org tree is trusted without re-reading it. */
export const AUTHZ_CACHE_TTL_MS = 5000;
/** Cached users at most (least recently loaded dropped first). */
const MAX_CACHED_USERS = 100_000;

/** Who is acting. */
export type Subject =
  /** A device signed in as a user. */
  | { readonly kind: 'device'; readonly userId: string; readonly deviceId: number }
  /** The operator on the local admin socket: holds every permission. */
  | { readonly kind: 'operator' }
  /** Not signed in: holds none. */
  | { readonly kind: 'anonymous'; readonly address: string };

export const OPERATOR: Subject = Object.freeze({ kind: 'operator' });

export function deviceSubject(me: SessionIdentity): Subject {
  return { kind: 'device', userId: me.userId, deviceId: me.deviceId };
}

/** What a permission is checked against. */
export interface Resource {
  /** Org unit ids the resource belongs to; unit grants on them or an ancestor apply. */
  readonly units?: readonly string[];
  /** A channel: channel grants on it apply. */
  readonly channelId?: string;
  /** How the audit log names it (`user:alice`, `unit:ops`, `channel:general`, `global`). */
  readonly target: string;
  /** The channel record, when the resource is an existing channel. */
  readonly channel?: Channel;
}

/** A resource only global grants cover. */
export const GLOBAL: Resource = Object.freeze({ target: 'global' });

/** A user's grants as the cache holds them. */
export interface UserGrants {
  /** Undefined when the user does not exist (any more). */
  readonly name: string | undefined;
  readonly globalRoles: readonly string[];
  /** unit id → role names granted there. */
  readonly unitRoles: ReadonlyMap<string, readonly string[]>;
  /** channel id → role names granted there. */
  readonly channelRoles: ReadonlyMap<string, readonly string[]>;
  /** The ids of the units the user belongs to directly. */
  readonly units: readonly string[];
  /** As stored (global ones included). */
  readonly grants: readonly Grant[];
}

export interface OrgTree {
  readonly byId: ReadonlyMap<string, OrgUnit>;
  readonly byName: ReadonlyMap<string, OrgUnit>;
}

interface Cached<T> {
  readonly expires: number;
  readonly value: Promise<T>;
}

/** The caches behind `authorize`. One per service. */
export class Authorizer {
  readonly #storage: Storage;
  readonly #clock: () => number;
  readonly #ttl: number;
  readonly #users = new Map<string, Cached<UserGrants>>();
  #roles: Cached<ReadonlyMap<string, ReadonlySet<string>>> | undefined;
  #tree: Cached<OrgTree> | undefined;

  constructor(storage: Storage, options: { clock?: () => number; ttlMs?: number } = {}) {
    this.#storage = storage;
    this.#clock = options.clock ?? Date.now;
    this.#ttl = Math.min(options.ttlMs ?? AUTHZ_CACHE_TTL_MS, AUTHZ_CACHE_TTL_MS);
  }

  #onChange: ((userId: string | undefined) => void) | undefined;

  /** Who hears of local invalidations (the cluster: it tells the other nodes, `authz-changed`). */
  setChangeListener(listener: ((userId: string | undefined) => void) | undefined): void {
    this.#onChange = listener;
  }

  /** After a change of one user's grants, roles, units or channel memberships. */
  invalidateUser(userId: string): void {
    this.#users.delete(userId);
    this.#onChange?.(userId);
  }

  /** After a role was created or deleted. */
  invalidateRoles(): void {
    this.#roles = undefined;
    this.#onChange?.(undefined);
  }

  /** After an org unit was created or removed. */
  invalidateOrg(): void {
    this.#tree = undefined;
    this.#users.clear();
    this.#onChange?.(undefined);
  }

  /** Another node changed something (`authz-changed`): drop the user's entry, or everything. Tells no one. */
  dropCached(userId: string | undefined): void {
    if (userId !== undefined) {
      this.#users.delete(userId);
      return;
    }
    this.#users.clear();
    this.#roles = undefined;
    this.#tree = undefined;
  }

  #fresh<T>(c: Cached<T> | undefined): c is Cached<T> {
    return c !== undefined && c.expires > this.#clock();
  }

  /** Role name → permissions (built-in and custom). */
  roles(): Promise<ReadonlyMap<string, ReadonlySet<string>>> {
    if (this.#fresh(this.#roles)) return this.#roles.value;
    const value = this.#storage.listRoles().then((roles) => {
      const m = new Map<string, ReadonlySet<string>>();
      for (const r of roles) m.set(r.name, new Set(r.permissions));
      return m;
    });
    const entry = { expires: this.#clock() + this.#ttl, value };
    this.#roles = entry;
    value.catch(() => {
      if (this.#roles === entry) this.#roles = undefined;
    });
    return value;
  }

  tree(): Promise<OrgTree> {
    if (this.#fresh(this.#tree)) return this.#tree.value;
    const value = this.#storage.listOrgUnits().then((units) => ({
      byId: new Map(units.map((u) => [u.id, u])),
      byName: new Map(units.map((u) => [u.name, u])),
    }));
    const entry = { expires: this.#clock() + this.#ttl, value };
    this.#tree = entry;
    value.catch(() => {
      if (this.#tree === entry) this.#tree = undefined;
    });
    return value;
  }

  grantsOf(userId: string): Promise<UserGrants> {
    const hit = this.#users.get(userId);
    if (this.#fresh(hit)) return hit.value;
    const value = this.#load(userId);
    const entry = { expires: this.#clock() + this.#ttl, value };
    this.#users.delete(userId);
    this.#users.set(userId, entry);
    if (this.#users.size > MAX_CACHED_USERS) {
      const oldest = this.#users.keys().next().value;
      if (oldest !== undefined) this.#users.delete(oldest);
    }
    value.catch(() => {
      if (this.#users.get(userId) === entry) this.#users.delete(userId);
    });
    return value;
  }

  async #load(userId: string): Promise<UserGrants> {
    const user = await this.#storage.getUser(userId);
    if (!user) {
      return {
        name: undefined,
        globalRoles: [],
        unitRoles: new Map(),
        channelRoles: new Map(),
        units: [],
        grants: [],
      };
    }
    const [grants, units] = await Promise.all([
      this.#storage.listGrants({ userId }),
      this.#storage.listUserOrgUnits(userId),
    ]);
    const globalRoles = new Set(user.roles);
    const unitRoles = new Map<string, string[]>();
    const channelRoles = new Map<string, string[]>();
    for (const g of grants) {
      if (g.scope.kind === 'global') globalRoles.add(g.role);
      else if (g.scope.kind === 'unit') push(unitRoles, g.scope.unitId, g.role);
      else push(channelRoles, g.scope.channelId, g.role);
    }
    return { name: user.name, globalRoles: [...globalRoles], unitRoles, channelRoles, units, grants };
  }

  /** The permissions a user holds globally. */
  async globalPermissions(userId: string): Promise<Set<string>> {
    const [g, roles] = await Promise.all([this.grantsOf(userId), this.roles()]);
    const out = new Set<string>();
    for (const r of g.globalRoles) for (const p of roles.get(r) ?? []) out.add(p);
    return out;
  }

  /** Does the subject hold `permission` on `resource`? Never throws for a refusal. */
  async holds(subject: Subject, permission: Permission, resource: Resource): Promise<boolean> {
    if (subject.kind === 'operator') return true;
    if (subject.kind !== 'device') return false;
    const [g, roles] = await Promise.all([this.grantsOf(subject.userId), this.roles()]);
    const any = (names: readonly string[] | undefined): boolean => {
      if (names) for (const n of names) if (roles.get(n)?.has(permission)) return true;
      return false;
    };
    if (any(g.globalRoles)) return true;
    if (resource.channelId !== undefined && any(g.channelRoles.get(resource.channelId))) return true;
    if (resource.units?.length && g.unitRoles.size) {
      const tree = await this.tree();
      for (const unit of resource.units) {
        // The unit itself and each ancestor (bounded, should the stored tree ever loop).
        let cur: string | undefined = unit;
        for (let depth = 0; cur !== undefined && depth < 256; depth++) {
          if (any(g.unitRoles.get(cur))) return true;
          cur = tree.byId.get(cur)?.parentId;
        }
      }
    }
    return false;
  }
}

function push(m: Map<string, string[]>, k: string, v: string): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/** The audit actor of a subject. */
export async function actorOf(ctx: ServiceContext, subject: Subject): Promise<AuditActorJson> {
  switch (subject.kind) {
    case 'operator':
      return { kind: 'operator' };
    case 'anonymous':
      return anonymousActor(subject.address);
    case 'device': {
      let name: string | undefined;
      try {
        name = (await ctx.authz.grantsOf(subject.userId)).name;
      } catch {
        name = undefined;
      }
      return {
        kind: 'device',
        userId: subject.userId,
        userName: name ?? 'unknown',
        deviceId: subject.deviceId,
      };
    }
  }
}

/** The non-throwing check; used only here (for the "member unless manager" case). */
function can(
  ctx: ServiceContext,
  subject: Subject,
  permission: Permission,
  resource: Resource,
): Promise<boolean> {
  return ctx.authz.holds(subject, permission, resource);
}

/**
 * THE authorisation decision: returns when `subject` holds `permission` on `resource`,
 * otherwise records `access.denied` and throws FORBIDDEN. `operation` names what was
 * attempted in the audit record (a route key such as `POST /v1/admin/users`).
 */
export async function authorize(
  ctx: ServiceContext,
  subject: Subject,
  permission: Permission,
  resource: Resource,
  operation?: string,
): Promise<void> {
  if (await can(ctx, subject, permission, resource)) return;
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'access.denied',
    target: resource.target,
    outcome: 'denied',
    detail: { permission, ...(operation === undefined ? {} : { operation }) },
  });
  throw new ApiError('FORBIDDEN', 403, `not allowed: this needs the ${permission} permission`);
}

// --- the route rules ------------------------------------------------------------------------

/** What a resource resolver may look at: the request's parsed params, query and body. */
export interface RuleInput {
  readonly params?: unknown;
  readonly query?: unknown;
  readonly body?: unknown;
}

/**
 * Resolves the resource a request acts on. Resolvers never refuse: input they cannot
 * read, or a record that does not exist, resolves to a resource only global grants cover
 * (the handler then answers 400 or 404 to a caller allowed that far).
 */
export type ResourceResolver = (
  ctx: ServiceContext,
  input: RuleInput,
  me: SessionIdentity,
) => Promise<Resource>;

export type RouteRule =
  | { readonly kind: 'public' }
  | {
      readonly kind: 'device';
      /** The caller must be a member of the channel `:channelId` names. */
      readonly membership?: 'channel';
      /** …unless they hold channel.manage on it (reading the log only). */
      readonly managerMayRead?: true;
    }
  | {
      readonly kind: 'permission';
      readonly permission: Permission;
      readonly resource: ResourceResolver;
      readonly membership?: 'channel';
    };

function field(v: unknown, name: string): unknown {
  return typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[name] : undefined;
}

/** The global resource. */
const globalOnly: ResourceResolver = async () => GLOBAL;

/** The caller's own units (1:1 sending: a unit-scoped grant lets the unit's users send). */
export async function ownUnitsResource(ctx: ServiceContext, me: SessionIdentity): Promise<Resource> {
  const g = await ctx.authz.grantsOf(me.userId);
  return { units: g.units, target: `user:${g.name ?? me.userId}` };
}
const ownUnits: ResourceResolver = (ctx, _input, me) => ownUnitsResource(ctx, me);

/** An org unit by name (as it is known to this node's cache). */
export async function unitResource(ctx: ServiceContext, name: unknown): Promise<Resource> {
  if (typeof name !== 'string' || !OrgUnitName.safeParse(name).success) return GLOBAL;
  const unit = (await ctx.authz.tree()).byName.get(name) ?? (await ctx.storage.findOrgUnitByName(name));
  return unit ? { units: [unit.id], target: `unit:${unit.name}` } : { target: `unit:${name}` };
}

/** A channel by id, with the unit it belongs to. */
export async function channelResource(ctx: ServiceContext, id: unknown): Promise<Resource> {
  if (typeof id !== 'string' || !/^[0-9a-f]{32}$/.test(id)) return GLOBAL;
  const ch = await ctx.storage.getChannel(id);
  return ch ? channelResourceOf(ch) : { channelId: id, target: `channel:${id}` };
}

/** An existing channel (already read), with the unit it belongs to. */
export function channelResourceOf(ch: Channel): Resource {
  return { channelId: ch.id, units: ch.unitId ? [ch.unitId] : [], target: `channel:${ch.name}`, channel: ch };
}

/** Records `access.denied` (not a member of the channel) and returns NOT_A_MEMBER to throw. */
export async function notAMember(
  ctx: ServiceContext,
  subject: Subject,
  resource: Resource,
  operation: string,
): Promise<ApiError> {
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'access.denied',
    target: resource.target,
    outcome: 'denied',
    detail: { reason: 'not-a-member', operation },
  });
  return new ApiError('NOT_A_MEMBER', 403, 'you are not a member of this channel');
}

/** A user by name: the units they belong to. */
export async function userResource(ctx: ServiceContext, name: unknown): Promise<Resource> {
  if (typeof name !== 'string') return GLOBAL;
  const user = await ctx.storage.findUserByName(name);
  if (!user) return { target: `user:${name}` };
  return { units: (await ctx.authz.grantsOf(user.id)).units, target: `user:${user.name}` };
}

const unitOfBody =
  (name: string): ResourceResolver =>
  (ctx, input) =>
    unitResource(ctx, field(input.body, name));
const unitOfParam: ResourceResolver = (ctx, input) => unitResource(ctx, field(input.params, 'unitName'));
const channelOfParam: ResourceResolver = (ctx, input) =>
  channelResource(ctx, field(input.params, 'channelId'));
const userOfParam: ResourceResolver = (ctx, input) => {
  const p = UserNameParamForAdmin.safeParse(input.params);
  return p.success ? userResource(ctx, p.data.userName) : Promise.resolve(GLOBAL);
};
/** A grant's scope: global, a unit, or a channel. */
const grantScopeOfBody: ResourceResolver = async (ctx, input) => {
  const g = GrantRequest.safeParse(input.body);
  if (!g.success) return GLOBAL;
  const scope = g.data.scope;
  if (scope.kind === 'unit') return unitResource(ctx, scope.unit);
  if (scope.kind === 'channel') return channelResource(ctx, scope.channel);
  return GLOBAL;
};

const PUBLIC: RouteRule = { kind: 'public' };
const DEVICE: RouteRule = { kind: 'device' };
const perm = (permission: Permission, resource: ResourceResolver, membership?: 'channel'): RouteRule => ({
  kind: 'permission',
  permission,
  resource,
  ...(membership === undefined ? {} : { membership }),
});

/** Every route and WebSocket operation of the service, with who may use it. */
export const ROUTE_RULES: Readonly<Record<string, RouteRule>> = Object.freeze({
  // operations
  'GET /healthz': PUBLIC,
  'GET /metrics': PUBLIC,
  // enrolment, sign-in and the new device's side of linking
  'POST /v1/enrol': PUBLIC,
  'POST /v1/auth/challenge': PUBLIC,
  'POST /v1/auth/session': PUBLIC,
  'POST /v1/link': PUBLIC,
  'POST /v1/link/poll': PUBLIC,
  'POST /v1/link/complete': PUBLIC,
  // the caller's own account
  'GET /v1/me': DEVICE,
  'GET /v1/devices': DEVICE,
  'DELETE /v1/devices/:deviceId': DEVICE,
  'POST /v1/link/lookup': DEVICE,
  'POST /v1/link/approve': DEVICE,
  'GET /v1/keys': DEVICE,
  'GET /v1/keys/:userName': DEVICE,
  'GET /v1/keys/:userName/devices': DEVICE,
  'GET /v1/presence/:userName': DEVICE,
  'POST /v1/keys/one-time': DEVICE,
  'PUT /v1/keys/signed': DEVICE,
  'PUT /v1/keys/kyber': DEVICE,
  // messaging
  'POST /v1/messages': perm('message.send', ownUnits),
  'GET /v1/channels': DEVICE,
  'POST /v1/channels': perm('channel.create', unitOfBody('unit')),
  'GET /v1/channels/:channelId': { kind: 'device', membership: 'channel', managerMayRead: true },
  // Any member may propose a change; the handler also requires channel.manage unless it
  // is the caller leaving, and the signed log's own rules apply on top.
  'POST /v1/channels/:channelId/changes': { kind: 'device', membership: 'channel' },
  'POST /v1/channels/:channelId/messages': perm('channel.post', channelOfParam, 'channel'),
  // files: the handler checks message.send (for users) or channel.post and membership (for
  // a channel) on creation, and owner or recipient on every other route (plugins/files.ts)
  'GET /v1/files': DEVICE,
  'POST /v1/files': DEVICE,
  'GET /v1/files/:fileId': DEVICE,
  'DELETE /v1/files/:fileId': DEVICE,
  'PUT /v1/files/:fileId/content': DEVICE,
  'GET /v1/files/:fileId/content': DEVICE,
  // remote administration
  'GET /v1/admin/users': perm('user.manage', globalOnly),
  'POST /v1/admin/users': perm('user.manage', unitOfBody('unit')),
  'DELETE /v1/admin/users/:userName': perm('user.manage', userOfParam),
  'GET /v1/admin/roles': perm('role.manage', globalOnly),
  'POST /v1/admin/roles': perm('role.manage', globalOnly),
  'DELETE /v1/admin/roles/:roleName': perm('role.manage', globalOnly),
  'GET /v1/admin/grants': perm('role.manage', globalOnly),
  'POST /v1/admin/grants': perm('role.manage', grantScopeOfBody),
  'POST /v1/admin/grants/revoke': perm('role.manage', grantScopeOfBody),
  'GET /v1/admin/org': perm('org.manage', globalOnly),
  'POST /v1/admin/org': perm('org.manage', unitOfBody('parent')),
  'DELETE /v1/admin/org/:unitName': perm('org.manage', unitOfParam),
  'POST /v1/admin/org/:unitName/users': perm('user.manage', unitOfParam),
  'POST /v1/admin/org/:unitName/users/remove': perm('user.manage', unitOfParam),
  'GET /v1/admin/audit': perm('audit.read', globalOnly),
  'GET /v1/admin/audit/verify': perm('audit.read', globalOnly),
  // WebSocket frames (after `auth`, which is the socket's sign-in)
  'WS send': perm('message.send', ownUnits),
  'WS ack': DEVICE,
  'WS ping': DEVICE,
} satisfies Record<string, RouteRule>);

/**
 * Applies a non-public rule for a signed-in device: the permission on the resolved
 * resource, then channel membership. Returns the resource (with the channel, if any).
 */
async function enforce(
  ctx: ServiceContext,
  key: string,
  rule: Exclude<RouteRule, { kind: 'public' }>,
  me: SessionIdentity,
  input: RuleInput,
): Promise<Resource | undefined> {
  const subject = deviceSubject(me);
  let resource: Resource | undefined;
  if (rule.kind === 'permission') {
    resource = await rule.resource(ctx, input, me);
    await authorize(ctx, subject, rule.permission, resource, key);
  }
  if (rule.membership === 'channel') {
    const { channelId } = parse(ChannelIdParam, input.params);
    if (resource?.channel?.id !== channelId) resource = await channelResource(ctx, channelId);
    const channel = resource.channel;
    if (!channel) throw new ApiError('CHANNEL_NOT_FOUND', 404, 'no such channel');
    const member = await ctx.storage.channelMembership(channel.id, me.userId);
    if (!member) {
      const managerReads =
        rule.kind === 'device' &&
        rule.managerMayRead === true &&
        (await can(ctx, subject, 'channel.manage', resource));
      if (!managerReads) throw await notAMember(ctx, subject, resource, key);
    }
  }
  return resource;
}

/** What the preHandler established for a request. */
interface RequestAuth {
  readonly identity: SessionIdentity;
  readonly resource: Resource | undefined;
}

const requestAuth = new WeakMap<FastifyRequest, RequestAuth>();

function authOf(req: FastifyRequest): RequestAuth {
  const a = requestAuth.get(req);
  // Only reachable if a handler of a public route asked for an identity: a programming error.
  if (!a) throw new Error('the request was not authenticated by the route rules');
  return a;
}

/** The signed-in device of a request whose rule is not `public`. */
export function requestIdentity(req: FastifyRequest): SessionIdentity {
  return authOf(req).identity;
}

/** The channel a `membership: 'channel'` route resolved. */
export function requestChannel(req: FastifyRequest): Channel {
  const ch = authOf(req).resource?.channel;
  if (!ch) throw new Error('the route resolved no channel');
  return ch;
}

/** The key of a route in ROUTE_RULES. */
export function routeKey(method: string, url: string): string {
  return `${method} ${url}`;
}

/**
 * Enforces `rules` on `app`: routes without a rule are refused when they are registered
 * (so the server does not start), and every request passes through one preHandler.
 * Call before any route is registered. Returns the keys of the routes registered (filled
 * as they are).
 */
export function installAuthorization(
  app: FastifyInstance,
  ctx: ServiceContext,
  rules: Readonly<Record<string, RouteRule>> = ROUTE_RULES,
): readonly string[] {
  const registered: string[] = [];
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const m of methods) {
      const key = routeKey(m, route.url);
      if (!Object.hasOwn(rules, key)) throw new Error(`route ${key} has no rule in ROUTE_RULES`);
      registered.push(key);
    }
  });
  app.addHook('preHandler', async (req) => {
    const url = req.routeOptions.url;
    // The not-found handler: no route, nothing to authorise.
    if (url === undefined) return;
    const key = routeKey(req.method, url);
    const rule = Object.hasOwn(rules, key) ? rules[key] : undefined;
    // Unreachable (onRoute refused such a route), and closed should it ever happen.
    if (!rule) throw new ApiError('FORBIDDEN', 403, 'not allowed');
    if (rule.kind === 'public') return;
    const identity = await authenticate(ctx, req);
    const resource = await enforce(ctx, key, rule, identity, {
      params: req.params,
      query: req.query,
      body: req.body,
    });
    requestAuth.set(req, { identity, resource });
  });
  return registered;
}

/** The rule of a WebSocket frame, applied for the connection's device (throws FORBIDDEN). */
export async function authorizeFrame(
  ctx: ServiceContext,
  op: 'send' | 'ack' | 'ping',
  me: SessionIdentity,
): Promise<void> {
  const key = `WS ${op}`;
  const rule = ROUTE_RULES[key];
  if (!rule) throw new ApiError('FORBIDDEN', 403, 'not allowed');
  if (rule.kind === 'public') return;
  await enforce(ctx, key, rule, me, {});
}
