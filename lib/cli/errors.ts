export const EXIT_OK = 0;
/** the tool ran and found a problem (a stuck vCPU, a failed check) */
export const EXIT_PROBLEM = 1;
/** bad usage or an environment that cannot run the command */
export const EXIT_USAGE = 2;

/** An error shown to the user as one line (message includes the remedy), no stack trace. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode: number = EXIT_USAGE) {
    super(message);
    this.name = 'CliError';
  }
}
