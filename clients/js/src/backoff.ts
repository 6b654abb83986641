// Exponential backoff with full jitter, and the failure count that drives it
// (docs/clients.md, section 5).

import type { BackoffOptions } from "./types.js";

/** Close codes that blame the client or its traffic: they never reset the count. */
const CLIENT_CAUSED = new Set([1002, 1003, 1007, 1008, 1009, 1013]);

export class Backoff {
  readonly min: number;
  readonly max: number;
  readonly factor: number;
  readonly resetAfter: number;
  /** Failures since the last stable connection. */
  private failures = 0;

  constructor(options: BackoffOptions = {}) {
    this.min = options.min ?? 1000;
    this.max = options.max ?? 30000;
    this.factor = options.factor ?? 2;
    this.resetAfter = options.resetAfter ?? 10000;
    for (const [name, value] of Object.entries({
      min: this.min,
      max: this.max,
      factor: this.factor,
      resetAfter: this.resetAfter,
    })) {
      if (!(value >= 0) || !Number.isFinite(value)) {
        throw new TypeError(`backoff.${name} must be a finite number >= 0`);
      }
    }
    if (this.factor < 1) throw new TypeError("backoff.factor must be >= 1");
  }

  /** The largest delay of the `n`-th consecutive failure (`n` ≥ 1), in ms. */
  cap(n: number): number {
    return Math.min(this.max, this.min * this.factor ** (n - 1));
  }

  /**
   * Counts the end of an attempt or connection the client will retry, and draws the delay
   * before the next attempt. `openFor`: how long the connection was up (ms), 0 for a failed
   * attempt; `code`: the close code it ended with.
   */
  next(openFor: number, code: number): number {
    const stable = openFor >= this.resetAfter && !CLIENT_CAUSED.has(code);
    this.failures = stable ? 1 : this.failures + 1;
    return Math.random() * this.cap(this.failures);
  }
}
