/**
 * Prometheus metrics. Each server owns its own registry (not prom-client's global one), so
 * several servers in one process (tests) never collide. Labels are low-cardinality route
 * patterns, never user ids or anything a client chose.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly connections = new Gauge({
    name: 'qalqon_websocket_connections',
    help: 'Open WebSocket connections (authenticated or not)',
    registers: [this.registry],
  });
  readonly devicesOnline = new Gauge({
    name: 'qalqon_devices_online',
    help: 'Authenticated WebSocket connections (one per device)',
    registers: [this.registry],
  });
  readonly messagesQueued = new Counter({
    name: 'qalqon_messages_queued_total',
    help: 'Envelopes written to a mailbox and acknowledged to the sender',
    registers: [this.registry],
  });
  readonly messagesDelivered = new Counter({
    name: 'qalqon_messages_delivered_total',
    help: 'Envelopes acknowledged by their recipient device and deleted',
    registers: [this.registry],
  });
  readonly requestDuration = new Histogram({
    name: 'qalqon_http_request_duration_seconds',
    help: 'HTTP request latency',
    labelNames: ['method', 'route', 'status'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly frameErrors = new Counter({
    name: 'qalqon_websocket_frame_errors_total',
    help: 'WebSocket frames refused (malformed, oversized, unauthenticated)',
    labelNames: ['code'],
    registers: [this.registry],
  });

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
  }
}
