/**
 * A real Linux secure store for tests: a private D-Bus session bus (`dbus-daemon --session`)
 * with gnome-keyring's Secret Service on it, its login keyring unlocked with a throwaway
 * password and kept in a temporary directory (never the machine user's keyrings).
 *
 * Why in-process rather than wrapping the test run in `dbus-run-session`: the bus address is
 * the only thing @napi-rs/keyring needs, and it reads DBUS_SESSION_BUS_ADDRESS when it
 * connects, so setting it in `process.env` (a real setenv) points the native code at our bus.
 * Each vitest file runs in its own process, so this does not leak into other test files.
 * Needs the Debian packages dbus, dbus-x11, gnome-keyring and libsecret-1-0 (.ci/run).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Entry } from '@napi-rs/keyring';

const BUS_CONFIG = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir=LISTEN_DIR</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`;

export interface SecretService {
  readonly address: string;
  stop(): Promise<void>;
}

function waitExit(p: ChildProcess): Promise<void> {
  return p.exitCode !== null || p.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => p.once('exit', () => r()));
}

export async function startSecretService(): Promise<SecretService> {
  const home = mkdtempSync(join(tmpdir(), 'qalqon-keyring-'));
  // A bus without service activation: the stock session bus would auto-start a second,
  // locked gnome-keyring for a request that arrives before ours has claimed its name.
  const config = join(home, 'bus.conf');
  writeFileSync(config, BUS_CONFIG.replace('LISTEN_DIR', home));
  const bus = spawn('dbus-daemon', [`--config-file=${config}`, '--nofork', '--print-address=1'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const address = await new Promise<string>((resolve, reject) => {
    bus.once('error', (err) => reject(new Error(`dbus-daemon did not start (${err.message}); install dbus`)));
    bus.stdout!.once('data', (b: Buffer) => resolve(String(b).trim()));
  });
  const env = {
    ...process.env,
    DBUS_SESSION_BUS_ADDRESS: address,
    HOME: home,
    XDG_DATA_HOME: join(home, 'data'),
    XDG_RUNTIME_DIR: home,
  };
  const keyring = spawn('gnome-keyring-daemon', ['--foreground', '--unlock', '--components=secrets'], {
    env,
    stdio: ['pipe', 'ignore', 'ignore'],
  });
  keyring.once('error', () => undefined);
  // --unlock reads the login keyring's password from stdin.
  keyring.stdin!.end('throwaway-test-password');
  process.env.DBUS_SESSION_BUS_ADDRESS = address;
  // Ready once a write and read-back succeed (the daemon claims its bus name asynchronously).
  // A fresh Entry each time: an entry that failed once keeps failing.
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      // Pinned to the Secret Service: the default would fall back to the kernel keyring and pass without it.
      const probe = new Entry('qalqon-test-probe', 'probe', { linux: { store: 'secret-service' } });
      probe.setPassword('ready');
      if (probe.getPassword() === 'ready') {
        probe.deletePassword();
        break;
      }
    } catch (err) {
      if (Date.now() > deadline) {
        keyring.kill();
        bus.kill();
        throw new Error(`gnome-keyring did not come up on the test bus: ${(err as Error).message}`);
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    address,
    async stop() {
      keyring.kill();
      bus.kill();
      await Promise.all([waitExit(keyring), waitExit(bus)]);
      rmSync(home, { recursive: true, force: true });
    },
  };
}
