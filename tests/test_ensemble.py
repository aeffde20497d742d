import numpy as np

from models.ensemble import majority_vote, mean_probability


def test_majority_vote_counts_top1_labels():
    a = np.array([[0.9, 0.1, 0.0]])
    b = np.array([[0.6, 0.4, 0.0]])
    c = np.array([[0.1, 0.2, 0.7]])
    predicted, score, votes = majority_vote([a, b, c])
    assert predicted.tolist() == [0]
    assert votes.tolist() == [[2, 0, 1]]
    assert np.isclose(score[0], (0.9 + 0.6 + 0.1) / 3)


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


def test_tie_break_only_among_tied_classes():
    # Class 1 has the highest mean but only one vote; class 0 has two votes and must win.
    a = np.array([[0.51, 0.49]])
    b = np.array([[0.51, 0.49]])
    c = np.array([[0.0, 1.0]])
    predicted, _, _ = majority_vote([a, b, c])
    assert mean_probability([a, b, c])[0].argmax() == 1
    assert predicted.tolist() == [0]
