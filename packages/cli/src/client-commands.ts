/**
 * The client side of the `qalqon` command (SPEC section 3): enroll, link, device
 * approve|list|remove, channel create|add|remove|list|members, send, recv, safety-number,
 * verify, repin. A thin layer over @qalqon/client: it parses arguments, asks for a
 * passphrase when the profile needs one, and prints. Security warnings and notices go to
 * stderr; stdout carries only the result (one JSON object with --json, JSON lines for
 * `link` and `recv --json`). Nothing printed ever holds a key, a passphrase or a token;
 * `recv` prints message text, the user's own.
 */
import { createInterface } from 'node:readline';
import {
  type ClientOptions,
  type KeystoreKind,
  QalqonClient,
  type ReceivedFile,
  type ReceivedMessage,
} from '@qalqon/client';
import { type CliIo, EXIT_OK, UsageError } from './io.js';

export const CLIENT_USAGE = `  qalqon enroll --server URL --code CODE --profile DIR [--pin sha256/..] [--device-name N] [--keystore os|passphrase] [--json]
  qalqon link --server URL --profile DIR [--pin sha256/..] [--device-name N] [--keystore os|passphrase] [--json]
  qalqon device approve --profile DIR LINKCODE [--json]
  qalqon device list --profile DIR [--json]
  qalqon device remove --profile DIR DEVICE_ID [--json]
  qalqon channel create NAME [--unit UNIT] --profile DIR [--json]
  qalqon channel add NAME USER [--manager] --profile DIR [--json]
  qalqon channel remove NAME USER --profile DIR [--json]
  qalqon channel list --profile DIR [--json]
  qalqon channel members NAME --profile DIR [--json]
  qalqon send --profile DIR (--to USER | --channel NAME) TEXT [--json]
  qalqon recv --profile DIR [--wait SECONDS] [--json]
      (one line per message: "from: text", "#channel from: text"; --json: JSON lines)
  qalqon safety-number --profile DIR USER [--json]
  qalqon verify --profile DIR USER NUMBER [--json]
  qalqon repin --profile DIR --pin sha256/.. [--json]
`;

export const CLIENT_COMMANDS = new Set([
  'enroll',
  'link',
  'device',
  'channel',
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
  unit?: string;
  manager?: boolean;
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

/** Opens the profile of --profile, runs `fn` with it, and closes it. */
export async function withClient<T>(
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

function messageJson(m: ReceivedMessage): string {
  return `${JSON.stringify({ from: m.from, device: m.device, channel: m.channel, conversation: m.conversation, text: m.text, sentAt: m.sentAt, id: m.id, ...(m.file ? { file: m.file } : {}) })}\n`;
}

/**
 * Text as a terminal may show it: control characters (which could move the cursor or
 * rewrite earlier lines) become U+FFFD, and a line break continues on an indented line.
 */
export function terminalSafe(text: string): string {
  let out = '';
  for (const ch of text.replace(/\r\n?/g, '\n')) {
    const c = ch.codePointAt(0)!;
    if (ch === '\n') out += '\n  ';
    else if ((c < 0x20 && ch !== '\t') || (c >= 0x7f && c <= 0x9f)) out += '\ufffd';
    else out += ch;
  }
  return out;
}

/** `1234` → `1.2 KiB`; bytes below 1 KiB as they are. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

/** `[file NAME, SIZE, id ID]`: a file as `recv` shows it (fetch it with `qalqon file get ID --out PATH`). */
export function fileSummary(f: ReceivedFile): string {
  return `[file ${terminalSafe(f.name)}, ${formatBytes(f.size)}, id ${f.id}${f.thumbnail ? `, thumbnail ${f.thumbnail.id}` : ''}]`;
}

/** `#channel from: text` for a channel message; `from: text` 1:1; `me → peer: text` for a copy of one's own message. */
function messageLine(m: ReceivedMessage, self: string): string {
  const text = m.file ? fileSummary(m.file) : terminalSafe(m.text);
  if (m.channel !== null) return `#${m.channel} ${m.from}: ${text}\n`;
  if (m.from === self && m.conversation !== self) return `${m.from} → ${m.conversation}: ${text}\n`;
  return `${m.from}: ${text}\n`;
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
      if (args.length !== 1)
        throw new UsageError(
          'expected the message text as one argument: send (--to USER | --channel NAME) TEXT',
        );
      if ((values.to === undefined) === (values.channel === undefined))
        throw new UsageError('send needs exactly one of --to USER and --channel NAME');
      if (values.channel !== undefined) {
        const channel = values.channel;
        const r = await withClient(io, values, (c) => c.sendChannel(channel, args[0]!));
        print(
          io,
          json,
          { channel, id: r.id, sentAt: r.sentAt, rotated: r.rotated, keysSent: r.keysSent },
          `Sent to #${channel}.${r.rotated ? ' (A new sender key was made for the channel.)' : ''}\n`,
        );
        return EXIT_OK;
      }
      const to = need(values, 'to');
      const r = await withClient(io, values, (c) => c.send(to, args[0]!));
      print(io, json, r, `Sent to ${r.devices} device(s).\n`);
      return EXIT_OK;
    }
    case 'channel':
      return await channelCommand(io, values, args);
    case 'recv': {
      noArgs('recv');
      let waitMs = 0;
      if (values.wait !== undefined) {
        if (!/^[0-9]{1,6}$/.test(values.wait) || Number(values.wait) > MAX_WAIT_SECONDS) {
          throw new UsageError(`--wait expected whole seconds, at most ${MAX_WAIT_SECONDS}`);
        }
        waitMs = Number(values.wait) * 1000;
      }
      // One line per message as it arrives: JSON lines with --json (the stream is the contract).
      await withClient(io, values, (c) =>
        c.receive({
          waitMs,
          onMessage: (m) => io.stdout(json ? messageJson(m) : messageLine(m, c.userName)),
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

/** `qalqon channel create|add|remove|list|members`. */
async function channelCommand(io: CliIo, values: ClientValues, args: string[]): Promise<number> {
  const json = values.json === true;
  const [verb, ...rest] = args;
  const expect = (n: number, what: string) => {
    if (rest.length !== n) throw new UsageError(`expected ${what}`);
  };
  if (values.unit !== undefined && verb !== 'create')
    throw new UsageError('--unit applies to "channel create" only');
  if (values.manager !== undefined && verb !== 'add')
    throw new UsageError('--manager applies to "channel add" only');
  switch (verb) {
    case 'create': {
      expect(1, 'a channel name: channel create NAME [--unit UNIT]');
      const name = rest[0]!;
      const unit = values.unit;
      const ch = await withClient(io, values, (c) =>
        c.createChannel(name, unit === undefined ? {} : { unit }),
      );
      print(
        io,
        json,
        { channel: ch },
        `Created channel #${ch.name}${ch.unit === undefined ? '' : ` in org unit "${ch.unit}"`}; you manage it.\n`,
      );
      return EXIT_OK;
    }
    case 'add': {
      expect(2, 'a channel and a user: channel add NAME USER [--manager]');
      const [name, user] = rest as [string, string];
      const manager = values.manager === true;
      const role = manager ? 'manager' : 'member';
      await withClient(io, values, (c) => c.addChannelMember(name, user, { manager }));
      print(io, json, { channel: name, user, role }, `Added "${user}" to #${name} as ${role}.\n`);
      return EXIT_OK;
    }
    case 'remove': {
      expect(2, 'a channel and a user: channel remove NAME USER');
      const [name, user] = rest as [string, string];
      await withClient(io, values, (c) => c.removeChannelMember(name, user));
      print(io, json, { channel: name, user, removed: true }, `Removed "${user}" from #${name}.\n`);
      return EXIT_OK;
    }
    case 'list': {
      expect(0, 'no arguments after "channel list"');
      const channels = await withClient(io, values, (c) => c.listChannels());
      print(
        io,
        json,
        { channels },
        channels
          .map(
            (ch) =>
              `#${ch.name}\t${ch.unit === undefined ? '-' : `unit=${ch.unit}`}\tmembers=${ch.members}\n`,
          )
          .join(''),
      );
      return EXIT_OK;
    }
    case 'members': {
      expect(1, 'a channel name: channel members NAME');
      const name = rest[0]!;
      const members = await withClient(io, values, (c) => c.channelMembers(name));
      print(
        io,
        json,
        { channel: name, members },
        members.map((m) => `${m.user}\t${m.role}\tidentity ${m.identity}\n`).join(''),
      );
      return EXIT_OK;
    }
    default:
      throw new UsageError(`unknown command "channel ${verb ?? ''}"`.trimEnd());
  }
}
