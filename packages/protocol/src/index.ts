export * from './errors.js';
export * from './curve.js';
export * from './protobuf.js';
