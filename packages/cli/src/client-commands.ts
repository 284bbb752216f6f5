/**
 * The client side of the `qalqon` command (SPEC section 3): enroll, link, device
 * approve|list|remove, send, recv, safety-number, verify, repin. A thin layer over
 * @qalqon/client: it parses arguments, asks for a passphrase when the profile needs one,
 * and prints. Security warnings and notices go to stderr; stdout carries only the result
 * (one JSON object with --json, JSON lines for `link` and `recv`). Nothing printed ever
 * holds a key, a passphrase or a token; `recv` prints message text, the user's own.
 */
import { createInterface } from 'node:readline';
import { type ClientOptions, type KeystoreKind, QalqonClient, type ReceivedMessage } from '@qalqon/client';
import { type CliIo, EXIT_OK, UsageError } from './io.js';

export const CLIENT_USAGE = `  qalqon enroll --server URL --code CODE --profile DIR [--pin sha256/..] [--device-name N] [--keystore os|passphrase] [--json]
  qalqon link --server URL --profile DIR [--pin sha256/..] [--device-name N] [--keystore os|passphrase] [--json]
  qalqon device approve --profile DIR LINKCODE [--json]
  qalqon device list --profile DIR [--json]
  qalqon device remove --profile DIR DEVICE_ID [--json]
  qalqon send --profile DIR --to USER TEXT [--json]
  qalqon recv --profile DIR [--wait SECONDS]
  qalqon safety-number --profile DIR USER [--json]
  qalqon verify --profile DIR USER NUMBER [--json]
  qalqon repin --profile DIR --pin sha256/.. [--json]
`;

export const CLIENT_COMMANDS = new Set([
  'enroll',
  'link',
  'device',
  'send',
  'recv',
  'safety-number',
  'verify',
  'repin',
]);

export interface ClientValues {
  server?: string;
  code?: string;
  profile?: string;
  pin?: string;
  'device-name'?: string;
  keystore?: string;
  to?: string;
  channel?: string;
  wait?: string;
  json?: boolean;
}

/** The longest `recv --wait`: a day; a longer-lived stream is a service, not a command. */
const MAX_WAIT_SECONDS = 86_400;

function need(values: ClientValues, name: 'server' | 'code' | 'profile' | 'pin' | 'to'): string {
  const v = values[name];
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function keystoreOf(values: ClientValues): KeystoreKind {
  const k = values.keystore ?? 'os';
  if (k !== 'os' && k !== 'passphrase') throw new UsageError('--keystore must be os or passphrase');
  return k;
}

/** Reads a passphrase from the terminal without echoing it. */
function promptPassphrase(prompt = 'Passphrase for the profile database: '): Promise<string> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
    const out = rl as unknown as { _writeToOutput: (s: string) => void };
    process.stderr.write(prompt);
    // Echo nothing the user types.
    out._writeToOutput = () => undefined;
    rl.question('', (answer) => {
      rl.close();
      process.stderr.write('\n');
      resolve(answer);
    });
  });
}

/**
 * `confirm`: a new profile's passphrase is typed twice at a prompt, so a typo cannot lock the
 * user out of the profile for good.
 */
function clientOptions(io: CliIo, profile: string, confirm = false): ClientOptions {
  return {
    profile,
    passphrase: async () => {
      const env = process.env.QALQON_PASSPHRASE;
      if (env !== undefined && env !== '') return env;
      if (!process.stdin.isTTY) return '';
      const first = await promptPassphrase();
      if (confirm && (await promptPassphrase('Repeat the passphrase: ')) !== first) {
        throw new UsageError('the two passphrases differ');
      }
      return first;
    },
    notice: (line) => io.stderr(`qalqon: ${line}.\n`),
    warning: (line) => io.stderr(`qalqon: WARNING: ${line}.\n`),
  };
}

function print(io: CliIo, json: boolean, value: Record<string, unknown>, human: string): void {
  io.stdout(json ? `${JSON.stringify(value)}\n` : human);
}

async function withClient<T>(
  io: CliIo,
  values: ClientValues,
  fn: (c: QalqonClient) => Promise<T>,
): Promise<T> {
  const client = await QalqonClient.open(clientOptions(io, need(values, 'profile')));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

function messageLine(m: ReceivedMessage): string {
  return `${JSON.stringify({ from: m.from, device: m.device, channel: m.channel, conversation: m.conversation, text: m.text, sentAt: m.sentAt, id: m.id })}\n`;
}

export async function clientCommand(
  io: CliIo,
  command: string,
  values: ClientValues,
  args: string[],
): Promise<number> {
  const json = values.json === true;
  const noArgs = (what: string) => {
    if (args.length !== 0) throw new UsageError(`unexpected argument after "${what}"`);
  };
  switch (command) {
    case 'enroll': {
      noArgs('enroll');
      const c = await QalqonClient.enroll({
        ...clientOptions(io, need(values, 'profile'), true),
        server: need(values, 'server'),
        code: need(values, 'code'),
        pin: values.pin,
        deviceName: values['device-name'],
        keystore: keystoreOf(values),
      });
      try {
        print(
          io,
          json,
          { user: c.userName, device: c.deviceId, pin: c.pin },
          `Enrolled device ${c.deviceId} of user "${c.userName}". Server key pinned: ${c.pin}\n`,
        );
      } finally {
        c.close();
      }
      return EXIT_OK;
    }
    case 'link': {
      noArgs('link');
      const profile = need(values, 'profile');
      const c = await QalqonClient.link({
        ...clientOptions(io, profile, true),
        server: need(values, 'server'),
        pin: values.pin,
        deviceName: values['device-name'],
        keystore: keystoreOf(values),
        onLinkCode: (linkCode) =>
          print(
            io,
            json,
            { linkCode },
            `Link code: ${linkCode}\nOn an existing device of yours run: qalqon device approve --profile DIR ${linkCode}\nWaiting for approval...\n`,
          ),
      });
      try {
        print(
          io,
          json,
          { user: c.userName, device: c.deviceId },
          `Linked as device ${c.deviceId} of user "${c.userName}".\n`,
        );
      } finally {
        c.close();
      }
      return EXIT_OK;
    }
    case 'device': {
      const [verb, ...rest] = args;
      if (verb === 'approve') {
        if (rest.length !== 1) throw new UsageError('expected a link code: device approve LINKCODE');
        await withClient(io, values, (c) => c.approveLink(rest[0]!));
        print(io, json, { approved: true }, 'Approved: the new device now holds your identity.\n');
        return EXIT_OK;
      }
      if (verb === 'list') {
        if (rest.length !== 0) throw new UsageError('unexpected argument after "device list"');
        const devices = await withClient(io, values, (c) => c.listDevices());
        print(
          io,
          json,
          { devices },
          devices
            .map(
              (d) =>
                `${d.deviceId}\t${d.name}\t${new Date(d.createdAt).toISOString()}${d.current ? '\t(this device)' : ''}\n`,
            )
            .join(''),
        );
        return EXIT_OK;
      }
      if (verb === 'remove') {
        const id = rest[0];
        if (rest.length !== 1 || !/^[1-9][0-9]{0,9}$/.test(id!)) {
          throw new UsageError('expected a device id: device remove DEVICE_ID');
        }
        await withClient(io, values, (c) => c.removeDevice(Number(id)));
        print(io, json, { removed: Number(id) }, `Removed device ${id}.\n`);
        return EXIT_OK;
      }
      throw new UsageError(`unknown command "device ${verb ?? ''}"`.trimEnd());
    }
    case 'send': {
      if (values.channel !== undefined)
        throw new UsageError('--channel is not available in this version; use --to USER');
      if (args.length !== 1)
        throw new UsageError('expected the message text as one argument: send --to USER TEXT');
      const to = need(values, 'to');
      const r = await withClient(io, values, (c) => c.send(to, args[0]!));
      print(io, json, r, `Sent to ${r.devices} device(s).\n`);
      return EXIT_OK;
    }
    case 'recv': {
      noArgs('recv');
      let waitMs = 0;
      if (values.wait !== undefined) {
        if (!/^[0-9]{1,6}$/.test(values.wait) || Number(values.wait) > MAX_WAIT_SECONDS) {
          throw new UsageError(`--wait expected whole seconds, at most ${MAX_WAIT_SECONDS}`);
        }
        waitMs = Number(values.wait) * 1000;
      }
      // JSON lines in every mode: the stream is the contract (SPEC section 3).
      await withClient(io, values, (c) =>
        c.receive({
          waitMs,
          onMessage: (m) => io.stdout(messageLine(m)),
          onFailure: (f) =>
            io.stderr(
              `qalqon: a message from device ${f.senderDeviceId} of ${f.from ?? `account ${f.senderUserId}`} could not be read (${f.code}); it was discarded.\n`,
            ),
        }),
      );
      return EXIT_OK;
    }
    case 'safety-number': {
      if (args.length !== 1) throw new UsageError('expected a user name: safety-number USER');
      const user = args[0]!;
      const r = await withClient(io, values, (c) => c.safetyNumber(user));
      print(io, json, { user, ...r }, `${r.safetyNumber}\n`);
      return EXIT_OK;
    }
    case 'verify': {
      // The number may come as one argument or as its 12 groups.
      if (args.length < 2)
        throw new UsageError('expected a user name and the safety number: verify USER NUMBER');
      const [user, ...groups] = args;
      await withClient(io, values, (c) => c.verify(user!, groups.join(' ')));
      print(io, json, { user, verified: true }, `Verified: the safety number with "${user}" matches.\n`);
      return EXIT_OK;
    }
    case 'repin': {
      noArgs('repin');
      const r = QalqonClient.repin(need(values, 'profile'), need(values, 'pin'));
      print(io, json, r, `The profile now pins ${r.pin} (was ${r.previous ?? 'none'}).\n`);
      return EXIT_OK;
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}
