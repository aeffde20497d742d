"""Micro-batching of predictions (web.prediction.PredictionService.classify): requests that
wait for the TensorFlow thread together run as one batch, and get exactly the answers they
would have got alone."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from helpers import REPO

from models.backbones import load_backbone
from models.datasets import read_dataset
from models.features import FeatureCache
from models.training import train
from web import concurrency
from web.prediction import PredictionService

pytestmark = pytest.mark.integration

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def trained_folder(photo_folder, tmp_path_factory):
    """A trained result whose head averages the 8 dihedral views (8 passes per image), so a
    batch mixes views and images the way the product does."""
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    data = read_dataset(photo_folder)
    result = train(data.samples, [BACKBONE], cache, load_backbone, view_policies=("dihedral",))
    assert result.heads[BACKBONE].params["views"].startswith("dihedral")
    return result.save(tmp_path_factory.mktemp("result"))


@pytest.fixture(scope="module")
def images(photo_test_folder):
    return [s.image() for s in read_dataset(photo_test_folder).samples][:8]


def _scores(answer: dict) -> list[float]:
    return [c["score"] for c in answer["backbones"][BACKBONE]] + [answer["ensemble"]["score"]]


def test_batched_probabilities_equal_one_at_a_time(trained_folder, images):
    predictor = PredictionService().predictor(1, trained_folder)
    together = predictor.probabilities(images)[BACKBONE]
    alone = np.concatenate([predictor.probabilities([im])[BACKBONE] for im in images])
    assert together.shape == (8, 3)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-4)


def test_concurrent_requests_are_merged_and_answered_as_alone(trained_folder, images):
    service = PredictionService()
    options = [(3, 0.0), (1, 0.0), (2, 0.5), (3, 0.0)] * 2  # (top_k, threshold)
    sequential = [service.classify(1, trained_folder, im, k, t)
                  for im, (k, t) in zip(images, options)]
    assert service.stats.batches == 8 and service.stats.merged == 0
    assert service.stats.largest == 1

    answers: dict[int, dict] = {}

    def client(i):
        k, t = options[i]
        answers[i] = service.classify(1, trained_folder, images[i], k, t)

    # Hold the TensorFlow turn (as a running batch would) while 8 clients queue up.
    with concurrency._direct_lock:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(service._queue) < 8:
            assert time.monotonic() < deadline, "clients did not queue"
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 8
    stats = service.stats
    assert stats.requests == 16 and stats.batches == 9
    assert stats.sizes == {1: 8, 8: 1} and stats.largest == 8 and stats.merged == 8
    for i, alone in enumerate(sequential):
        together = answers[i]
        assert together["ensemble"]["label"] == alone["ensemble"]["label"]
        assert [c["label"] for c in together["backbones"][BACKBONE]] == \
            [c["label"] for c in alone["backbones"][BACKBONE]]
        np.testing.assert_allclose(_scores(together), _scores(alone), rtol=0, atol=1e-4 + 1e-9)
        assert len(together["backbones"][BACKBONE]) == options[i][0]  # each its own top_k


def test_a_failing_batch_fails_each_request_and_the_next_works(trained_folder, images,
                                                               tmp_path):
    service = PredictionService()
    with pytest.raises(FileNotFoundError):
        service.classify(7, tmp_path / "gone", images[0])
    assert not service._queue
    answer = service.classify(1, trained_folder, images[0])
    assert answer["ensemble"]["label"] in ("cat", "coffee", "rocket")


def test_under_gevent_concurrent_requests_share_a_batch(trained_folder, photo_test_folder,
                                                       tmp_path):
    """The product's mode: monkey-patched, TensorFlow on gevent's one native thread. Eight
    greenlets classify at once; the batcher serves them in at most two batches (the first
    may start before the others queued), with the answers each gets alone."""
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        import gevent
        from models.datasets import read_dataset
        from web.prediction import PredictionService
        images = [s.image() for s in read_dataset({str(photo_test_folder)!r}).samples][:8]
        service = PredictionService()
        alone = [service.classify(1, {str(trained_folder)!r}, im) for im in images]
        before = service.stats.batches
        jobs = [gevent.spawn(service.classify, 1, {str(trained_folder)!r}, im) for im in images]
        gevent.joinall(jobs, raise_error=True)
        together = [job.value for job in jobs]
        print(json.dumps({{"batches": service.stats.batches - before,
                           "largest": service.stats.largest, "alone": alone,
                           "together": together}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["batches"] <= 2 and result["largest"] >= 7, result
    for alone, together in zip(result["alone"], result["together"]):
        assert together["ensemble"]["label"] == alone["ensemble"]["label"]
        np.testing.assert_allclose(_scores(together), _scores(alone), rtol=0, atol=1e-4 + 1e-9)


def test_warm_loads_an_iteration_in_the_background_once(trained_folder, images, tmp_path):
    """`warm` (called when the web process sees a job succeed, or at start) loads the
    predictor off the caller's thread; the first request then only runs the image."""
    service = PredictionService()
    assert service.warm(7, trained_folder) is True
    assert service.warm(7, trained_folder) is False  # already loading: not twice
    deadline = time.monotonic() + 120
    while service.warming():
        assert time.monotonic() < deadline, "the warm-up did not finish"
        time.sleep(0.02)
    assert service.is_warm(7) and 7 in service.warmed
    assert service.warm(7, trained_folder) is False  # loaded: nothing to do
    began = time.perf_counter()
    service.classify(7, trained_folder, images[0])
    assert time.perf_counter() - began < 2.0
    # A warm-up that fails says so in the log and leaves it to the first request.
    assert service.warm(8, tmp_path / "nothing here") is True
    deadline = time.monotonic() + 60
    while service.warming():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not service.is_warm(8)
