//! Exponential reconnect backoff with full jitter.

/** Doublings after which the ceiling stops growing (2^20 × min is far past any sane max). */
const BACKOFF_DOUBLINGS_MAX = 20;

/**
 * Delays between retries: attempt `n` waits a uniformly random time in
 * `[min, min(max, min × 2^n)]`. Randomising the whole range ("full jitter")
 * spreads the reconnects of many clients after a server restart.
 */
export class Backoff {
  private readonly min: number;
  private readonly max: number;
  private attempt = 0;

  /** A backoff between `minMs` and `maxMs` (`maxMs` below `minMs` counts as `minMs`). */
  constructor(
    minMs: number,
    maxMs: number,
    private readonly random: () => number = Math.random,
  ) {
    this.min = Math.max(0, minMs);
    this.max = Math.max(this.min, maxMs);
  }

  /** Starts over from the shortest delays (after a successful connect). */
  reset(): void {
    this.attempt = 0;
  }

  /** The ceiling of the next delay, ms. */
  ceiling(): number {
    const factor = 2 ** Math.min(this.attempt, BACKOFF_DOUBLINGS_MAX);
    return Math.min(this.min * factor, this.max);
  }

  /** The next delay, ms. */
  next(): number {
    const low = this.min;
    const high = Math.max(this.ceiling(), low);
    this.attempt = Math.min(this.attempt + 1, BACKOFF_DOUBLINGS_MAX);
    return low + Math.floor(this.random() * (high - low + 1));
  }
}
