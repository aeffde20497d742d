"""The project page's progress estimate (static/js/progress.js, DOM-free), run under Node:
the ETA from a smoothed progress rate, its wording, and a status line that keeps changing
while the fraction stands still."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

MODULE = Path(__file__).resolve().parents[1] / "static" / "js" / "progress.js"
NODE = shutil.which("node")


def run_js(body: str):
    """Run `body` (an async function body with `m`, the module) under Node; its return value."""
    assert NODE is not None, "these tests run static/js under Node.js: apt-get install nodejs"
    script = (f"const m = await import({json.dumps(MODULE.as_uri())});\n"
              f"const out = await (async () => {{ {body} }})();\n"
              "console.log(JSON.stringify(out));")
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_eta_follows_a_steady_rate_and_counts_down_between_moves():
    eta = run_js("""
        const c = new m.ProgressClock();
        for (let t = 0; t <= 10; t += 1) c.observe(t / 100, "fitting", t);   // 1% a second
        return [c.eta(10), c.eta(11.5), c.stalledFor(11.5)];""")
    assert eta[0] == pytest.approx(90, rel=0.02)  # 90% left at 1%/s
    assert eta[1] == pytest.approx(88.5, rel=0.02)
    assert eta[2] == pytest.approx(1.5)


def test_eta_is_smoothed_and_adapts_to_a_new_rate():
    eta = run_js("""
        const c = new m.ProgressClock();
        let f = 0;
        for (let t = 0; t <= 20; t += 1) { c.observe(f, "a", t); f += 0.01; }   // 1%/s
        const before = c.eta(20);
        c.observe(f + 0.04, "a", 21);                                            // one jump
        const jump = c.eta(21);
        f += 0.04;
        for (let t = 22; t <= 30; t += 1) { f += 0.04; c.observe(f, "a", t); }  // now 4%/s
        return [before, jump, c.eta(30), f];""")
    before, jump, later, f = eta
    assert before == pytest.approx(79, rel=0.05)
    assert before / 4 < jump < before  # one fast step moves it, but not all the way
    assert later == pytest.approx((1 - f) / 0.04, rel=0.15)


def test_no_eta_before_any_move_and_never_below_a_second_when_stalled():
    out = run_js("""
        const c = new m.ProgressClock();
        c.observe(0, "loading", 0);
        const none = c.eta(5);
        c.observe(0.5, "loading", 6);
        c.observe(0.6, "loading", 7);
        return [none, c.eta(1000), m.formatEta(null)];""")
    assert out == [None, 1, ""]


def test_eta_wording():
    out = run_js("return [0.5, 7.4, 42, 200, 7200].map(m.formatEta);")
    assert out == ["almost done", "about 7 s left", "about 40 s left", "about 3 min left", "about 2.0 h left"]


def test_a_new_attempt_starts_the_estimate_over():
    out = run_js("""
        const c = new m.ProgressClock();
        c.observe(0.2, "a", 0); c.observe(0.4, "a", 1);
        c.observe(0.0, "queued again", 2);
        return [c.eta(2), c.fraction, c.stageElapsed(3)];""")
    assert out == [None, 0, 1]


def test_status_line_shows_stage_done_total_eta_and_then_seconds_in_the_stage():
    lines = run_js("""
        const c = new m.ProgressClock();
        const job = { stage: "fitting head (Lite0)", done: 3, total: 8 };
        c.observe(0.1, job.stage, 0); c.observe(0.2, job.stage, 1);
        return [1.5, 3.2, 4.2, 5.2].map((t) => m.progressText(job, c, t));""")
    assert lines[0] == "fitting head (Lite0) (3/8) · about 8 s left"
    # The fraction has stood still for over 2 s: the seconds in the stage tick every second.
    assert lines[1].endswith("· 3 s in this stage")
    assert lines[2].endswith("· 4 s in this stage") and lines[3].endswith("· 5 s in this stage")
    assert len(set(lines)) == 4


def test_text_that_would_sit_still_gets_the_seconds_too():
    out = run_js("""
        const c = new m.ProgressClock();
        c.observe(0.5, "x", 0); c.observe(0.51, "x", 1);
        return [m.progressText({ stage: "x" }, c, 1.5, { textStillFor: 1 }),
                m.progressText({ stage: "x" }, c, 1.5, { textStillFor: 2.5 })];""")
    assert " in this stage" not in out[0] and out[1].endswith("· 1 s in this stage")
