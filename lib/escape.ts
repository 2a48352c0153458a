/**
 * Untrusted text (log lines, capture metadata, file names, arguments) shown on a terminal:
 * control characters would be interpreted by it (ESC sequences retitle the window, move the
 * cursor or rewrite earlier lines; BEL rings; NUL and CR hide text; a newline forges a line of
 * the report). They are shown escaped instead:
 *
 *   C0 (U+0000..U+001F, tab and newline included), DEL and C1 (U+0080..U+009F) -> \x1b style
 *   line/paragraph separators and bidirectional overrides (U+2028, U+2029, U+200E, U+200F,
 *   U+202A..U+202E, U+2066..U+2069) -> \u{202e} style
 *
 * Everything else, backslashes included, is left as it is.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function escapeOne(c: string): string {
  const n = c.charCodeAt(0);
  return n <= 0xff ? '\\x' + n.toString(16).padStart(2, '0') : `\\u{${n.toString(16)}}`;
}

/** The text with its control characters escaped (one line of output stays one line). */
export function escapeControl(text: string): string {
  CONTROL.lastIndex = 0;
  return CONTROL.test(text) ? text.replace(CONTROL, escapeOne) : text;
}

/** JSON text with DEL, C1 and the characters above as \uXXXX (JSON.stringify leaves them raw). */
export function escapeJsonControl(json: string): string {
  return json.replace(/[\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}
