/**
 * A page loaded in headless Chromium (Debian's `chromium` package), driven over the DevTools
 * protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out, NUL-separated JSON), so the
 * test needs no npm package: it sends a handful of commands and reads the events it cares about.
 *
 *   const browser = await startBrowser();
 *   const page = await browser.open('file:///tmp/report.html');
 *   page.console, page.requests, await page.evaluate('document.title'), await page.screenshot()
 *   await browser.close();
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';

export interface ConsoleEntry {
  source: 'console' | 'log' | 'exception';
  level: string;
  text: string;
}

export interface LoadedPage {
  /** console calls, browser log entries (CSP violations, failed loads) and uncaught exceptions */
  console: ConsoleEntry[];
  /** every URL the page asked for, the page's own included */
  requests: string[];
  evaluate<T>(expression: string): Promise<T>;
  /** PNG of the whole page (up to maxHeight CSS px tall) */
  screenshot(maxHeight?: number): Promise<Buffer>;
}

export interface Browser {
  /** opens url in a new tab and waits for its load event */
  open(url: string, opts?: { width?: number; height?: number }): Promise<LoadedPage>;
  close(): Promise<void>;
}

const CANDIDATES = ['chromium', 'chromium-browser', 'google-chrome'];

/** The browser's path; throws with what to install when there is none (never a silent skip). */
export function chromiumPath(): string {
  for (const c of CANDIDATES) {
    const r = spawnSync('sh', ['-c', `command -v ${c}`], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  throw new Error('chromium is not installed: run `bash scripts/setup` (it installs the Debian package chromium) or apt-get install chromium');
}

interface Pending { resolve(v: Record<string, unknown>): void; reject(e: Error): void }

export async function startBrowser(opts: { timeoutMs?: number } = {}): Promise<Browser> {
  const exe = chromiumPath();
  const profile = mkdtempSync(path.join(tmpdir(), 'kvmfault-chromium-'));
  const args = [
    '--headless=new',
    // Chromium refuses to start as root with its sandbox on (the sandbox needs an unprivileged
    // user namespace it cannot set up as root); tests run as root here, and the page is a local
    // file we generated, so the sandbox is off for this process only
    '--no-sandbox',
    '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check',
    '--disable-extensions', '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--hide-scrollbars', '--mute-audio',
    `--user-data-dir=${profile}`,
    '--remote-debugging-pipe',
    'about:blank',
  ];
  const child: ChildProcess = spawn(exe, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 20_000) stderr += d; });
  const toBrowser = child.stdio[3] as Writable;
  const fromBrowser = child.stdio[4] as Readable;
  const pending = new Map<number, Pending>();
  const listeners: ((method: string, params: Record<string, unknown>, sessionId?: string) => void)[] = [];
  let nextId = 1;
  let buf = '';
  let exited: Error | null = null;
  fromBrowser.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nul;
    while ((nul = buf.indexOf('\0')) >= 0) {
      const msg = JSON.parse(buf.slice(0, nul)) as { id?: number; result?: Record<string, unknown>; error?: { message: string }; method?: string; params?: Record<string, unknown>; sessionId?: string };
      buf = buf.slice(nul + 1);
      if (msg.id !== undefined) {
        const p = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.error) p?.reject(new Error(`DevTools: ${msg.error.message}`));
        else p?.resolve(msg.result ?? {});
      } else if (msg.method) {
        for (const l of listeners) l(msg.method, msg.params ?? {}, msg.sessionId);
      }
    }
  });
  child.on('exit', (code, signal) => {
    exited = new Error(`chromium exited (${code ?? signal}) before the test was done: ${stderr.slice(-2000)}`);
    for (const p of pending.values()) p.reject(exited);
    pending.clear();
  });
  toBrowser.on('error', () => { /* the exit handler reports it */ });

  const send = (method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> => {
    if (exited) return Promise.reject(exited);
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      toBrowser.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0');
    });
  };
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const withTimeout = <T>(p: Promise<T>, what: string): Promise<T> => {
    let timer: NodeJS.Timeout;
    return Promise.race([p, new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`chromium: ${what} took more than ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`)), timeoutMs); })])
      .finally(() => clearTimeout(timer));
  };

  const cleanup = async () => {
    if (!exited) {
      await send('Browser.close').catch(() => undefined);
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, 5000);
        child.once('exit', () => { clearTimeout(t); resolve(); });
      });
    }
    rmSync(profile, { recursive: true, force: true });
  };

  const open = async (url: string, o: { width?: number; height?: number } = {}): Promise<LoadedPage> => {
    const { targetId } = await withTimeout(send('Target.createTarget', { url: 'about:blank' }), 'opening a tab') as { targetId: string };
    const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true }) as { sessionId: string };
    const consoleEntries: ConsoleEntry[] = [];
    const requests: string[] = [];
    let loaded!: () => void;
    const loadFired = new Promise<void>((resolve) => (loaded = resolve));
    listeners.push((method, params, sid) => {
      if (sid !== sessionId) return;
      if (method === 'Runtime.consoleAPICalled') {
        const argsText = (params.args as { value?: unknown; description?: string }[]).map((a) => String(a.value ?? a.description ?? '')).join(' ');
        consoleEntries.push({ source: 'console', level: String(params.type), text: argsText });
      } else if (method === 'Log.entryAdded') {
        const e = params.entry as { level: string; text: string; url?: string };
        consoleEntries.push({ source: 'log', level: e.level, text: `${e.text}${e.url ? ` (${e.url})` : ''}` });
      } else if (method === 'Runtime.exceptionThrown') {
        const d = params.exceptionDetails as { text: string; exception?: { description?: string } };
        consoleEntries.push({ source: 'exception', level: 'error', text: `${d.text} ${d.exception?.description ?? ''}` });
      } else if (method === 'Network.requestWillBeSent') {
        requests.push(String((params.request as { url: string }).url));
      } else if (method === 'Page.loadEventFired') {
        loaded();
      }
    });
    for (const domain of ['Page', 'Runtime', 'Log', 'Network']) await send(`${domain}.enable`, {}, sessionId);
    await send('Emulation.setDeviceMetricsOverride', { width: o.width ?? 1100, height: o.height ?? 900, deviceScaleFactor: 1, mobile: false }, sessionId);
    const nav = await send('Page.navigate', { url }, sessionId) as { errorText?: string };
    if (nav.errorText) throw new Error(`chromium could not open ${url}: ${nav.errorText}`);
    await withTimeout(loadFired, `loading ${url}`);

    const evaluate = async <T>(expression: string): Promise<T> => {
      const r = await send('Runtime.evaluate', { expression, returnByValue: true }, sessionId) as { result: { value: T }; exceptionDetails?: { text: string } };
      if (r.exceptionDetails) throw new Error(`evaluating ${expression}: ${r.exceptionDetails.text}`);
      return r.result.value;
    };
    return {
      console: consoleEntries,
      requests,
      evaluate,
      async screenshot(maxHeight = 6000) {
        const m = await send('Page.getLayoutMetrics', {}, sessionId) as { cssContentSize: { width: number; height: number } };
        const width = Math.ceil(m.cssContentSize.width), height = Math.min(maxHeight, Math.ceil(m.cssContentSize.height));
        const r = await withTimeout(send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true, clip: { x: 0, y: 0, width, height, scale: 1 } }, sessionId), 'the screenshot') as { data: string };
        return Buffer.from(r.data, 'base64');
      },
    };
  };
  try {
    // the browser answers once it is up
    await withTimeout(send('Browser.getVersion'), 'starting');
    return { open, close: cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
