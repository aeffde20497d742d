"""Load (issue #6): 20 concurrent uploaders and 20 concurrent classifiers against one real
`python app.py` on loopback for 20 s (the full minute is `bench/load.py`): no errors, no lost
images, bounded memory, pages still fast. Same code as the benchmark (bench/load.py).

Every HTTP call goes through bench.load's `_session()`, which carries an API token.
"""
from __future__ import annotations

import pytest

from bench.load import _session, prepare, run_load, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SECONDS = 20.0
PAGE_P95_LIMIT_S = 3.0  # pages while 40 clients saturate 2 cores (measured: docs/RELIABILITY.md)
RSS_GROWTH_LIMIT_MB = 400.0  # over a warm server that has TensorFlow loaded


def test_20_uploaders_and_20_classifiers_for_20_seconds(tmp_path):
    proc, base = start_server(tmp_path / "instance", tmp_path / "server.log")
    try:
        setup = prepare(base, _session)
        result = run_load(base, proc.pid, setup, seconds=SECONDS, uploaders=20, classifiers=20,
                          session_factory=_session)
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        stop_server(proc)
    print(result)
    assert result["errors"] == {"upload": 0, "classify": 0, "page": 0}, result["error_samples"]
    assert result["requests"]["upload"] >= 20 and result["requests"]["classify"] >= 20, result
    assert result["requests"]["page"] >= 10, result
    images = result["images"]
    assert images["missing"] == images["unexpected"] == images["not_served"] == 0, images
    assert images["accepted"] == images["unique_accepted"] == images["listed"] \
        == result["requests"]["upload"], images
    assert set(result["classified_as"]) == {setup["probe_label"]}  # every answer the same
    assert result["rss_mb"]["growth"] < RSS_GROWTH_LIMIT_MB, result["rss_mb"]
    assert result["latency"]["page"]["p95_ms"] < PAGE_P95_LIMIT_S * 1000, result["latency"]
