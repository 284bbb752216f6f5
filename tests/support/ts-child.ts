/**
 * Runs a script as a separate Node process against this repository's TypeScript sources
 * (Node 20 cannot strip types): a tiny module loader resolves `@qalqon/<pkg>` to package
 * sources and `./x.js` to `./x.ts`, and transpiles with the repository's `typescript`.
 * Shared by every test that needs a real child process (crash tests, CLI tests).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const packagesDir = fileURLToPath(new URL('../../packages/', import.meta.url));

const LOADER = `
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';
const ts = createRequire(${JSON.stringify(join(packagesDir, '..', 'package.json'))})('typescript');
const PACKAGES = ${JSON.stringify(packagesDir)};
export async function resolve(specifier, context, next) {
  const m = /^@qalqon\\/([a-z-]+)$/.exec(specifier);
  if (m) return { url: pathToFileURL(PACKAGES + m[1] + '/src/index.ts').href, shortCircuit: true };
  if (specifier.startsWith('.') && specifier.endsWith('.js') && context.parentURL?.endsWith('.ts')) {
    const ts = new URL(specifier.slice(0, -3) + '.ts', context.parentURL);
    if (existsSync(fileURLToPath(ts))) return { url: ts.href, shortCircuit: true };
  }
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (!url.endsWith('.ts')) return next(url, context);
  const out = ts.transpileModule(readFileSync(fileURLToPath(url), 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true },
  });
  return { format: 'module', source: out.outputText, shortCircuit: true };
}
`;

/** The file URL of a source file in this repository's packages, for generated scripts to import. */
export function sourceUrl(pkg: string, path: string): string {
  return pathToFileURL(join(packagesDir, pkg, 'src', path)).href;
}

/** Environment changes for a child: a value sets the variable, `undefined` removes it. */
export type EnvChanges = Readonly<Record<string, string | undefined>>;

function childEnv(changes: EnvChanges): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/**
 * Writes the loader into `dir` and returns a function that runs a script in a child, with
 * this process's environment plus `env`.
 */
export function childRunner(dir: string): (script: string, args: string[], env?: EnvChanges) => ChildProcess {
  writeFileSync(join(dir, 'loader.mjs'), LOADER);
  const loaderUrl = pathToFileURL(join(dir, 'loader.mjs')).href;
  writeFileSync(
    join(dir, 'register.mjs'),
    `import { register } from 'node:module'; register(${JSON.stringify(loaderUrl)});`,
  );
  return (script, args, env = {}) => {
    const file = join(dir, `child-${randomBytes(4).toString('hex')}.mjs`);
    writeFileSync(file, script);
    return spawn(
      process.execPath,
      ['--import', pathToFileURL(join(dir, 'register.mjs')).href, file, ...args],
      { stdio: ['pipe', 'pipe', 'pipe'], env: childEnv(env) },
    );
  };
}

/** Resolves with the first stdout line of `child` (rejects if it exits first). */
export function firstLine(child: ChildProcess): Promise<string> {
  let buf = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      buf += d.toString();
      const i = buf.indexOf('\n');
      if (i >= 0) {
        child.stdout?.off('data', onData);
        resolve(buf.slice(0, i));
      }
    };
    child.stdout?.on('data', onData);
    child.once('exit', (code, signal) =>
      reject(new Error(`child exited (${code ?? signal}) before a line: ${err}`)),
    );
  });
}
