"""The hyper-parameter search: stratified (grouped) folds and their repeated draws, the grids,
CV of many searches in one batched descent with successive halving (`search_all`), and the
choice of input candidate from the CV log-losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .descent import Descent, Rows, common_rank, gather, prepare, softmax_few
from .linear import LinearDescent

L2_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
STEP_GRID = (10, 20, 40, 80, 160, 320, 640, 1280)
DEFAULT_PARAMS = {"l2": 1e-2, "steps": 160}  # used only when a class has < 2 images
MAX_FOLDS = 5

# Successive halving: from this many steps on, an L2 strength whose CV log-loss is worse than
# the best so far by more than PRUNE_GAP nats stops descending. Such a gap is rarely closed by
# longer training, and dropping it early is most of the saving on 10-class problems.
PRUNE_FROM = 80
PRUNE_GAP = 0.1

Candidates = dict  # name -> (n, d) features of the same images, simplest candidate first
Tick = Callable[[float], None]  # fraction of the search done, 0..1

# Descent steps between progress ticks: one, since a step takes ~0.2 s at 150 classes x 3
# images (20 steps left the bar still for 3.6 s there); the caller throttles what it passes on.
TICK_STEPS = 1

# A richer candidate (e.g. more views per image) must beat a simpler one by this much CV
# log-loss to be chosen: it costs forward passes at every prediction, so ties go to the cheap.
SWITCH_MARGIN = 0.002


def make_folds(labels: np.ndarray, groups: np.ndarray | None = None, max_folds: int = MAX_FOLDS,
               seed: int = 0) -> list[np.ndarray] | None:
    """Stratified folds as boolean *validation* masks, or None when a class has < 2 images.

    With `groups`, images of one group always fall in the same fold (near-duplicates).
    """
    _, counts = np.unique(labels, return_counts=True)
    k = int(min(max_folds, counts.min()))
    if k < 2:
        return None
    placeholder = np.zeros(len(labels))
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, labels, groups)
    masks = []
    for _, val in splits:
        mask = np.zeros(len(labels), bool)
        mask[val] = True
        masks.append(mask)
    return masks


def inner_repeats(n_rows: int) -> int:
    """How many draws of folds the inner CV averages over, for a search on `n_rows` rows.

    With 5-50 images per class one draw of folds is noisy enough to flip the choice between
    near-equal candidates; repeats cost time in proportion, and matter less as rows grow.
    """
    return 3 if n_rows < 80 else 2 if n_rows < 134 else 1


def repeated_folds(labels: np.ndarray, groups: np.ndarray | None, seed: int,
                   repeats: int | None = None) -> list[np.ndarray] | None:
    """`make_folds` drawn `repeats` (default `inner_repeats`) times with different seeds, all
    folds in one list."""
    folds = [make_folds(labels, groups, seed=seed + 1000 * r)
             for r in range(repeats or inner_repeats(len(labels)))]
    return None if folds[0] is None else [mask for draw in folds for mask in draw]


def spread(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A mask over `rows`' True entries, as a mask over all rows."""
    out = np.zeros(len(rows), bool)
    out[np.flatnonzero(rows)[mask]] = True
    return out


@dataclass
class Search:
    """Choose (l2, steps) for features `x` by CV: validation `val_masks` within `rows`."""

    x: np.ndarray  # (n, d): every row; only `rows` take part
    rows: np.ndarray  # (n,) bool
    val_masks: list[np.ndarray] | None  # None: CV impossible, DEFAULT_PARAMS


def survivors(loss: dict[int, float], best: float) -> list[int]:
    """The L2 strengths (grid indices) that keep descending: within PRUNE_GAP of the best."""
    return sorted(j for j, value in loss.items() if value <= best + PRUNE_GAP)


def _slots(current: np.ndarray, alive: list[int], width: int) -> np.ndarray:
    """Positions in `current` (grid indices per slot) of `alive`, padded to `width` by
    repeating the first (a repeated slot descends twice, harmlessly)."""
    where = [int(np.flatnonzero(current == j)[0]) for j in alive]
    return np.array(where + where[:1] * (width - len(where)))


def _held_out_loss(descent: Descent, held: Rows, active: np.ndarray) -> np.ndarray:
    """(P', L): each active problem's summed log-loss on its held-out rows, per slot."""
    logits = descent.logits(held.data[active]).astype(np.float64)
    logp = np.log(np.clip(softmax_few(logits), 1e-12, 1.0))  # (P', m, L, C)
    nll = -(logp * held.onehot[active][:, :, None, :]).sum(axis=-1)  # (P', m, L)
    return np.einsum("pml,pm->pl", nll, held.present[active])


def _narrow(descent: Descent, slot_l2: np.ndarray, active: np.ndarray,
            alive: list[list[int]]) -> np.ndarray:
    """Let each active problem descend only its `alive` strengths (grid indices; one list
    per active problem). `slot_l2` (all problems x slots) maps slots to grid indices; returns
    it updated to the new slots."""
    width = max(len(a) for a in alive)
    current = slot_l2[active]
    slots = np.array([_slots(row, a, width) for row, a in zip(current, alive)])
    if width == current.shape[1] and (slots == np.arange(width)).all():
        return slot_l2
    descent.select(slots)
    slot_l2 = slot_l2[:, :width].copy()
    slot_l2[np.flatnonzero(active)] = np.take_along_axis(current, slots, axis=1)
    return slot_l2


def search_all(searches: list[Search], labels: np.ndarray, n_classes: int,
               tick: Tick | None = None) -> list[dict]:
    """Run every search's CV in one batched descent of linear heads; each stops on its own.

    Per search: validation log-loss at each step checkpoint, strongest penalty winning ties,
    then the shortest run; from PRUNE_FROM steps on, strengths far behind the best stop
    (`survivors`); a search stops after two doublings of the run length without a better
    model, or when no strength survives. Returns {"l2", "steps", "cv_log_loss"} per search
    (DEFAULT_PARAMS and None where CV is impossible). `tick(fraction)` is called every
    TICK_STEPS steps with the share of the longest possible run done.
    """
    results: list[dict | None] = [None] * len(searches)
    folds, xs, train_masks, val_masks, owner = [], [], [], [], []
    for s, search in enumerate(searches):
        if search.val_masks is None:
            results[s] = dict(DEFAULT_PARAMS, cv_log_loss=None)
            continue
        for val in search.val_masks:
            train = search.rows & ~val
            folds.append(prepare(search.x, train))
            xs.append(search.x)
            train_masks.append(train)
            val_masks.append(val)
            owner.append(s)
    if not folds:
        return results
    onehot = np.eye(n_classes)[labels]
    rank = common_rank(folds)
    descent = LinearDescent(gather(folds, xs, np.array(train_masks), onehot, rank),
                            np.array([f.lipschitz for f in folds]),
                            np.tile(L2_GRID, (len(folds), 1)), np.float32)
    held = gather(folds, xs, np.array(val_masks), onehot, rank)
    held.data = held.data.astype(np.float32)
    owner = np.array(owner)
    held_count = {s: held.counts[owner == s].sum() for s in np.unique(owner).tolist()}
    slot_l2 = np.tile(np.arange(len(L2_GRID)), (len(folds), 1))  # grid index of each slot
    live = np.unique(owner)  # searches still running
    active = np.ones(len(owner), bool)  # problems still in the descent
    best: dict[int, tuple[float, float, int]] = {}
    stale = dict.fromkeys(live.tolist(), 0)
    alive: dict[int, list[int]] = {}
    for step in STEP_GRID:
        while descent.step < step:
            descent.run_to(min(step, descent.step + TICK_STEPS))
            if tick:
                tick(descent.step / STEP_GRID[-1])
        per_problem = _held_out_loss(descent, held, active)
        for s in live.tolist():
            mine = owner[active] == s
            total = per_problem[mine].sum(axis=0) / held_count[s]  # (L,)
            loss = {int(j): float(v) for j, v in zip(slot_l2[active][mine][0], total)}
            improved = False
            for j in sorted(loss, reverse=True):
                if s not in best or loss[j] < best[s][0] - 1e-9:
                    best[s] = (loss[j], L2_GRID[j], step)
                    improved = True
            stale[s] = 0 if improved else stale[s] + 1
            alive[s] = survivors(loss, best[s][0]) if step >= PRUNE_FROM else sorted(loss)
        # A search whose every strength fell behind its best so far has nothing left to run.
        live = np.array([s for s in live.tolist() if stale[s] < 2 and alive[s]], int)
        still = np.isin(owner[active], live)
        if not still.any():
            break
        if not still.all():
            descent.keep(still)
            active[np.flatnonzero(active)[~still]] = False
        slot_l2 = _narrow(descent, slot_l2, active, [alive[s] for s in owner[active]])
    for s, (loss, l2, step) in best.items():
        results[s] = {"l2": l2, "steps": step, "cv_log_loss": loss}
    return results


def as_candidates(features) -> Candidates:
    return features if isinstance(features, dict) else {"orig": features}


def pick(candidates: Candidates, params: list[dict]) -> tuple[str, dict]:
    """The candidate `train_head` uses: best CV log-loss, a richer one only by SWITCH_MARGIN."""
    best_name, best = None, None
    for name, p in zip(candidates, params):
        loss = p["cv_log_loss"]
        if best is None or (loss is not None and loss < best["cv_log_loss"] - SWITCH_MARGIN):
            best_name, best = name, p
        if loss is None:  # CV impossible: no ground to prefer a costlier input
            break
    return best_name, best
