import numpy as np
import pytest

from models.ensemble import majority_vote, mean_probability


@pytest.mark.unit
def test_majority_vote_counts_top1_labels():
    a = np.array([[0.9, 0.1, 0.0]])
    b = np.array([[0.6, 0.4, 0.0]])
    c = np.array([[0.1, 0.2, 0.7]])
    predicted, score, votes = majority_vote([a, b, c])
    assert predicted.tolist() == [0]
    assert votes.tolist() == [[2, 0, 1]]
    assert np.isclose(score[0], (0.9 + 0.6 + 0.1) / 3)


@pytest.mark.unit
def test_tie_goes_to_highest_mean_probability():
    # Three backbones, three different top-1 labels: one vote each. Class 2 has the highest
    # mean probability (0.4+0.3+0.9)/3 although its single vote came last.
    a = np.array([[0.5, 0.1, 0.4]])
    b = np.array([[0.3, 0.4, 0.3]])
    c = np.array([[0.05, 0.05, 0.9]])
    predicted, score, votes = majority_vote([a, b, c])
    assert votes.tolist() == [[1, 1, 1]]
    assert predicted.tolist() == [2]
    assert np.isclose(score[0], (0.4 + 0.3 + 0.9) / 3)


@pytest.mark.unit
def test_tie_break_only_among_tied_classes():
    # Class 1 has the highest mean but only one vote; class 0 has two votes and must win.
    a = np.array([[0.51, 0.49]])
    b = np.array([[0.51, 0.49]])
    c = np.array([[0.0, 1.0]])
    predicted, _, _ = majority_vote([a, b, c])
    assert mean_probability([a, b, c])[0].argmax() == 1
    assert predicted.tolist() == [0]


@pytest.mark.unit
def test_combine_ensemble_vote_scores_argmax_to_the_voted_class():
    from models.result import combine_ensemble

    rng = np.random.default_rng(3)
    probs = {n: rng.dirichlet(np.ones(4), 50) for n in ("a", "b", "c")}
    combined = combine_ensemble("vote", probs)
    predicted, score, votes = majority_vote(list(probs.values()))
    np.testing.assert_array_equal(combined.probs.argmax(axis=1), predicted)
    np.testing.assert_array_equal(combined.predicted, predicted)
    np.testing.assert_array_equal(combined.score, score)
    np.testing.assert_array_equal(combined.votes, votes)


@pytest.mark.unit
def test_combine_ensemble_mean_and_weighted():
    from models.result import combine_ensemble

    a, b = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.4, 0.6]])
    mean = combine_ensemble("mean", {"a": a, "b": b})
    np.testing.assert_allclose(mean.probs, mean_probability([a, b]))
    np.testing.assert_array_equal(mean.predicted, [0, 1])
    np.testing.assert_allclose(mean.score, [0.6, 0.7])
    weighted = combine_ensemble("weighted", {"a": a, "b": b}, {"b": 1.0, "a": 0.0})
    np.testing.assert_allclose(weighted.probs, b)
    assert weighted.votes.sum() == 4  # each backbone's top-1, whatever the method
    with pytest.raises(ValueError):
        combine_ensemble("median", {"a": a})


@pytest.mark.integration
def test_result_module_is_cheap_to_import():
    """The web process reads reports through models.result without TensorFlow or scikit-learn."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, models.result; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'keras', 'sklearn', 'scipy', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
