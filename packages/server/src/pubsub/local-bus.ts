/**
 * The in-process event bus: the embedded default (one node), and a way to run several
 * "nodes" in one process.
 *
 * Semantics (the same as the NATS bus): an event goes to every OTHER member of the bus's
 * network, never to the publishing bus itself — the service acts on its own events directly
 * and uses the bus only to tell other nodes. So a lone bus (`createLocalBus()`, the
 * single-node default) delivers nothing at all: publish() checks the event and returns.
 *
 * Delivery to the other members happens after a microtask (never inside publish(), so a
 * handler cannot re-enter the publisher), in publish order, through the same encoding and
 * checks as the NATS bus. A local bus is always `connected` and never sends `resync`: it
 * cannot lose an event.
 */
import { BusCore, type BusCoreOptions, type BusEvent, type EventBus, encodeBusMessage } from './bus.js';

export class LocalBusNetwork {
  readonly #members = new Set<LocalBus>();

  /** A new bus (node) on this network. */
  join(options: BusCoreOptions = {}): LocalBus {
    const bus = new LocalBus(this, options);
    this.#members.add(bus);
    return bus;
  }

  /** @internal */
  leave(bus: LocalBus): void {
    this.#members.delete(bus);
  }

  /** @internal */
  others(bus: LocalBus): LocalBus[] {
    return [...this.#members].filter((b) => b !== bus);
  }
}

export class LocalBus extends BusCore implements EventBus {
  readonly kind = 'local' as const;
  readonly #network: LocalBusNetwork;

  /** Use LocalBusNetwork.join() or createLocalBus(). */
  constructor(network: LocalBusNetwork, options: BusCoreOptions) {
    super(options);
    this.#network = network;
  }

  get status(): 'connected' | 'closed' {
    return this.closed ? 'closed' : 'connected';
  }

  publish(event: BusEvent): void {
    this.assertOpen('publish');
    const data = encodeBusMessage(this.nodeId, event);
    this.count.published++;
    for (const other of this.#network.others(this)) {
      queueMicrotask(() => other.deliver(data));
    }
  }

  /** @internal Bytes from another member. */
  deliver(data: Uint8Array): void {
    this.receive(data);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.markClosed();
    this.#network.leave(this);
  }
}

/** The single-node bus: alone on its own network, so publish() delivers nothing anywhere. */
export function createLocalBus(options: BusCoreOptions = {}): LocalBus {
  return new LocalBusNetwork().join(options);
}
