// Training progress you can trust: an ETA estimated from how fast the fraction moves
// (smoothed), and a status line that keeps changing while the job is alive. No DOM here,
// so it runs under Node too (tests/test_progress_eta.py).

/**
 * Watches one job's fraction over time. observe(fraction, stage, now) on each poll;
 * eta(now) -> seconds left (null while there is too little to go on); stalledFor(now) ->
 * seconds since the fraction last moved; stageElapsed(now) -> seconds in the current stage.
 * Times are in seconds (any origin, e.g. performance.now() / 1000).
 */
export class ProgressClock {
  constructor({ smoothing = 0.3, minFraction = 0.01 } = {}) {
    this.smoothing = smoothing; // weight of the newest rate in the moving average
    this.minFraction = minFraction;
    this.reset();
  }

  reset() {
    this.startedAt = null;
    this.fraction = 0;
    this.startFraction = 0;
    this.movedAt = null; // when the fraction last changed
    this.rate = null; // smoothed fraction per second
    this.stage = null;
    this.stageSince = null;
    this.moves = 0;
  }

  observe(fraction, stage, now) {
    fraction = Math.max(0, Math.min(1, Number(fraction) || 0));
    if (this.startedAt == null) {
      this.startedAt = now;
      this.movedAt = now;
      this.fraction = fraction;
      this.startFraction = fraction; // a page opened mid-job starts from here
    }
    if (stage !== this.stage) {
      this.stage = stage;
      this.stageSince = now;
    }
    if (fraction > this.fraction) {
      const dt = Math.max(now - this.movedAt, 1e-3);
      const instant = (fraction - this.fraction) / dt;
      const overall = now > this.startedAt ? (fraction - this.startFraction) / (now - this.startedAt) : instant;
      // Seed with the average rate so far, then follow recent moves (exponential smoothing).
      this.rate = this.rate == null ? (instant + overall) / 2 : this.smoothing * instant + (1 - this.smoothing) * this.rate;
      this.fraction = fraction;
      this.movedAt = now;
      this.moves += 1;
    } else if (fraction < this.fraction) {
      // A new attempt (re-queued) starts over.
      this.reset();
      this.observe(fraction, stage, now);
    }
  }

  /** Seconds left, or null when unknown (no move yet, or too early to tell). */
  eta(now) {
    if (this.rate == null || this.rate <= 0 || this.fraction < this.minFraction) return null;
    if (this.fraction >= 1) return 0;
    // Counts down between moves; a stall never makes it promise less than a second.
    return Math.max((1 - this.fraction) / this.rate - (now - this.movedAt), 1);
  }

  stalledFor(now) {
    return this.movedAt == null ? 0 : now - this.movedAt;
  }

  stageElapsed(now) {
    return this.stageSince == null ? 0 : now - this.stageSince;
  }
}

/** 42.3 -> "about 45 s left"; 200 -> "about 3 min left"; null -> "". */
export function formatEta(secondsLeft) {
  if (secondsLeft == null || !Number.isFinite(secondsLeft)) return "";
  if (secondsLeft < 1.5) return "almost done";
  if (secondsLeft < 10) return `about ${Math.round(secondsLeft)} s left`;
  if (secondsLeft < 60) return `about ${Math.round(secondsLeft / 5) * 5} s left`;
  const minutes = Math.round(secondsLeft / 60);
  if (minutes < 90) return `about ${minutes} min left`;
  return `about ${(secondsLeft / 3600).toFixed(1)} h left`;
}

/** A whole number of seconds as "7 s" or "2 min 05 s". */
export function formatElapsed(s) {
  s = Math.max(0, Math.floor(s));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

/**
 * The status line of a running job as {stage, extra}: the stage with done/total, and an ETA;
 * once the fraction has not moved (or the shown text not changed: `textStillFor`) for more
 * than `still` seconds, the seconds spent in this stage too, so the text changes every second
 * while the job is alive.
 */
export function progressParts(job, clock, now, { still = 2, textStillFor = 0 } = {}) {
  let stage = job.stage || "";
  if (job.done != null && job.total) stage += ` (${job.done}/${job.total})`;
  const bits = [];
  const eta = formatEta(clock.eta(now));
  if (eta) bits.push(eta);
  if (Math.max(clock.stalledFor(now), textStillFor) > still) bits.push(`${formatElapsed(clock.stageElapsed(now))} in this stage`);
  return { stage, extra: bits.join(" · ") };
}

/** progressParts as one line. */
export function progressText(job, clock, now, options) {
  const { stage, extra } = progressParts(job, clock, now, options);
  return extra ? `${stage} · ${extra}` : stage;
}
