/**
 * The addon, loaded once. Every native entry point is reached through here, so a missing or
 * broken build gives one clear error instead of a stack trace from deep inside a module.
 */
let cached: any;

export class NativeLoadError extends Error {
  constructor(cause: unknown) {
    super(
      `kvmfault's native addon could not be loaded (${(cause as Error)?.message ?? cause}). ` +
        'Build it with `npm run build:native` (needs clang, bpftool, libbpf-dev, cmake) ' +
        'or install a package that ships prebuilds/linux-x64.',
    );
    this.name = 'NativeLoadError';
  }
}

/** The raw addon exports (typed by the modules that use them). */
export function native(): any {
  if (cached === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      cached = require('../../binding/index.js');
    } catch (e) {
      throw new NativeLoadError(e);
    }
  }
  return cached;
}
