/**
 * @qalqon/wire: the client↔server contract. Zod schemas for every HTTP body and WebSocket
 * frame, the size limits both sides enforce, and the wire error codes. Imports nothing of
 * Qalqon's, so the server and the client SDK depend on it and not on each other.
 */

export { z } from 'zod';
export * from './admin.js';
export * from './base64.js';
export * from './channels.js';
export * from './errors.js';
export * from './files.js';
export * from './frames.js';
export * from './http.js';
export * from './limits.js';
export * from './presence.js';
export * from './primitives.js';
export * from './rbac.js';
