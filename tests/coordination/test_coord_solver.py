from __future__ import annotations

import itertools

import numpy as np
import pytest

from engines.coordination import solver


def _value(w, choice):
    idx = np.flatnonzero(choice >= 0)
    return float(w[idx, choice[idx]].sum())


def _valid(choice, cap, w):
    counts = np.bincount(choice[choice >= 0], minlength=len(cap))
    assert (counts <= cap).all()
    assert (w[np.flatnonzero(choice >= 0), choice[choice >= 0]] > 0).all()


def test_brute_force_optimum_small():
    rng = np.random.default_rng(3)
    w = rng.random((6, 2)) * (rng.random((6, 2)) > 0.3)
    cap = np.array([2, 1])
    best = 0.0
    for combo in itertools.product(range(-1, 2), repeat=6):
        c = np.array(combo)
        if (np.bincount(c[c >= 0], minlength=2) <= cap).all() and all(w[i, j] > 0 for i, j in enumerate(c) if j >= 0):
            best = max(best, _value(w, c))
    choice, used = solver.assign(w, cap)
    assert used == "linear_sum_assignment"
    _valid(choice, cap, w)
    assert _value(w, choice) == pytest.approx(best)


@pytest.mark.parametrize("n,s", [(60, 5), (300, 12)])
def test_lp_and_hungarian_agree(n, s):
    rng = np.random.default_rng(n)
    w = rng.random((n, s)) * (rng.random((n, s)) > 0.5)
    cap = rng.integers(0, 8, s)
    a, used_a = solver.assign(w, cap, lsa_max_cells=10**9)
    b, used_b = solver.assign(w, cap, lsa_max_cells=1)
    assert (used_a, used_b) == ("linear_sum_assignment", "highs_lp")
    _valid(a, cap, w)
    _valid(b, cap, w)
    assert _value(w, a) == pytest.approx(_value(w, b), rel=1e-9)


def test_urgent_targets_first_and_deterministic():
    # Target 0 is urgent with a fair chance (P 0.5, value 0.2: expected value 0.1); 1 and 2
    # are ordinary and worth far more. One slot at site 0, two at site 1 (where only 2 fits).
    p = np.array([[0.5, 0.0], [1.0, 0.0], [0.8, 0.9]])
    value = np.array([0.2, 5.0, 5.0])
    urgent = np.array([True, False, False])
    first = solver.urgent_pairs(urgent, p, 0.05)
    assert first.tolist() == [[True, False], [False, False], [False, False]]
    choice, used = solver.assign(value[:, None] * p, np.array([1, 2]), first)
    # The urgent target takes site 0's only slot although target 1 would score 50x more there.
    # The first solve (one urgent target) fits as it stands; the second needs the Hungarian.
    assert choice.tolist() == [0, -1, 1] and used == "best_site+linear_sum_assignment"
    # Without urgency the value-maximising plan gives that slot to target 1.
    assert solver.assign(value[:, None] * p, np.array([1, 2]))[0].tolist() == [-1, 0, 1]

    # Deterministic: the same input gives the same plan, call after call, on either solver;
    # random weights have no exact ties, so the Hungarian and LP optima are the same plan.
    rng = np.random.default_rng(0)
    w = rng.random((200, 6))
    crit = rng.random(200) < 0.1
    first = solver.urgent_pairs(crit, w, 0.05)
    lsa = [solver.assign(w, np.array([5] * 6), first, lsa_max_cells=10**9) for _ in range(3)]
    lp = [solver.assign(w, np.array([5] * 6), first, lsa_max_cells=1) for _ in range(3)]
    assert {r[1] for r in lsa} == {"linear_sum_assignment"} and {r[1] for r in lp} == {"highs_lp"}
    assert all(np.array_equal(r[0], lsa[0][0]) for r in lsa + lp)
    assert (lsa[0][0] >= 0).sum() == 30  # every slot filled


def test_hopeless_urgent_target_never_displaces_a_likely_ordinary_one():
    # Urgent target 0 can be observed at site 0 only with P 1e-5 (feasible, out of reach):
    # what a calibrated model outputs where physics or a Monte Carlo rounds to 0. Ordinary
    # target 1 has P 0.9 there. One slot. Its value is 10x lower, so the old rule (any
    # positive weight goes first: floor 0) would hand the slot to target 0.
    p = np.array([[1e-5], [0.9]])
    value = np.array([10.0, 1.0])
    urgent = np.array([True, False])
    for floor, expected in ((0.05, [-1, 0]), (0.0, [0, -1])):
        first = solver.urgent_pairs(urgent, p, floor)
        choice, _ = solver.assign(value[:, None] * p, np.array([1]), first)
        assert choice.tolist() == expected, floor


def test_urgent_target_goes_first_where_it_has_a_fair_chance_and_competes_elsewhere():
    # Urgent target 0: P 0.2 at site 0 (above the floor), 1e-5 at site 1. Ordinary targets
    # 1 and 2: P 0.9 / 0.8 at both sites. One slot per site.
    p = np.array([[0.2, 1e-5], [0.9, 0.9], [0.8, 0.8]])
    value = np.array([1.0, 1.0, 1.0])
    urgent = np.array([True, False, False])
    first = solver.urgent_pairs(urgent, p, 0.05)
    assert first.tolist() == [[True, False], [False, False], [False, False]]
    choice, used = solver.assign(value[:, None] * p, np.array([1, 1]), first)
    # Site 0 goes to the urgent target (its 0.2 loses to 0.9 on value alone); site 1 to the
    # better ordinary target, not to the urgent one's 1e-5.
    assert choice.tolist() == [0, 1, -1]
    assert used == "best_site+linear_sum_assignment"
    # Site 0 full of urgent demand: the urgent target is not placed first anywhere else, but
    # still competes by value at site 1, and a spare slot there is better used than empty.
    choice, used = solver.assign(value[:, None] * p, np.array([0, 3]), first)
    assert choice.tolist() == [1, 1, 1] and used == "best_site"


def test_an_urgent_targets_site_is_chosen_for_the_whole_plan():
    # One slot at each of two sites. Urgent U: P 0.50 at A, 0.49 at B, value 1 (a fair chance
    # at both). Ordinary O fits only A (P 0.9), value 3. U is kept; where it goes is chosen
    # with O in view: U at B, O at A (3.19), not U at A and O out (0.50, the old rule).
    p = np.array([[0.50, 0.49], [0.9, 0.0]])
    value = np.array([1.0, 3.0])
    first = solver.urgent_pairs(np.array([True, False]), p, 0.05)
    for cells in (10**9, 1):  # Hungarian and LP
        choice, _ = solver.assign(value[:, None] * p, np.array([1, 1]), first, lsa_max_cells=cells)
        assert choice.tolist() == [1, 0]
    # Kept urgent targets go first, even when each is worth far less than the ordinary target
    # it displaces: two urgent at 0.1 (value 1) take both slots from O at 0.9 (value 30),
    # where value alone would place O.
    p = np.array([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9]])
    value = np.array([1.0, 1.0, 30.0])
    first = solver.urgent_pairs(np.array([True, True, False]), p, 0.05)
    choice = solver.assign(value[:, None] * p, np.array([1, 1]), first)[0]
    assert sorted(choice[:2].tolist()) == [0, 1] and choice[2] == -1
    assert solver.kept(value[:, None] * p, np.array([1, 1]), first).tolist() == [True, True, False]
    assert solver.assign(value[:, None] * p, np.array([1, 1]))[0][2] >= 0


@pytest.mark.parametrize("seed", range(6))
def test_best_site_is_taken_only_where_it_fits_and_is_then_the_optimum(seed):
    # Capacity to spare: every target's best site fits, and that plan is what the Hungarian
    # finds (random weights: no ties). One slot fewer at a site that more targets want there
    # than it holds, and the plan must come from a solver, at the same optimum as the LP's.
    rng = np.random.default_rng(seed)
    w = rng.random((8, 4)) * (rng.random((8, 4)) > 0.3)
    live = (w > 0).any(axis=1)
    want = np.bincount(w[live].argmax(axis=1), minlength=4)
    choice, used = solver.assign(w, want)
    assert used == "best_site"
    _valid(choice, want, w)
    assert choice[live].tolist() == w[live].argmax(axis=1).tolist() and (choice[~live] == -1).all()
    assert np.array_equal(choice, solver.assign(w, want, lsa_max_cells=1)[0])  # best_site first, either way
    tight = want.copy()
    tight[int(want.argmax())] -= 1
    choice, used = solver.assign(w, tight)
    assert used == "linear_sum_assignment"
    _valid(choice, tight, w)
    assert _value(w, choice) < _value(w, solver.assign(w, want)[0])
    assert _value(w, choice) == pytest.approx(_value(w, solver.assign(w, tight, lsa_max_cells=1)[0]), rel=1e-9)


def test_empty():
    choice, used = solver.assign(np.zeros((0, 3)), np.array([1, 1, 1]))
    assert choice.size == 0 and used == "empty"
    choice, _ = solver.assign(np.zeros((4, 2)), np.array([1, 1]))
    assert (choice == -1).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_to_each_sites_best_candidates_keeps_the_optimum(seed):
    # Many more targets than slots: the solver prunes; the full LP (HiGHS on every positive
    # pair, built here without the solver's pruning) must reach the same value.
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    rng = np.random.default_rng(seed)
    n, s = 400, 5
    w = rng.random((n, s)) * (rng.random((n, s)) > 0.3)
    w[rng.integers(0, n, 40)] = 0.5  # ties across a whole row
    cap = rng.integers(1, 9, s)
    ii, jj = np.nonzero(w > 0)
    k = ii.size
    a = coo_matrix((np.ones(2 * k), (np.concatenate([ii, n + jj]), np.concatenate([np.arange(k)] * 2))),
                   shape=(n + s, k))
    full = linprog(-w[ii, jj], A_ub=a, b_ub=np.concatenate([np.ones(n), cap]), bounds=(0, 1), method="highs-ds")
    for cells in (10**9, 1):  # Hungarian and LP, both after pruning
        choice, _ = solver.assign(w, cap, lsa_max_cells=cells)
        _valid(choice, cap, w)
        assert _value(w, choice) == pytest.approx(-full.fun, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_a_plan_that_gains_rows_is_extended_by_augmenting_paths_to_the_full_solves_optimum(seed):
    # assign_more builds on the previous plan (one augmenting path per added row) and must
    # reach the value of a solve from scratch under the urgent rule, with ties (rounded P)
    # and without, one row at a time and several at once.
    rng = np.random.default_rng(seed)
    n, s = 120, 6
    cap = rng.integers(0, 7, s)
    p = rng.random((n, s)) * (rng.random((n, s)) > 0.5)
    if seed % 2:
        p = np.round(p, 1)
    w = rng.uniform(0.5, 2.0, n)[:, None] * p
    urgent = rng.random(n) < 0.15
    first = solver.urgent_pairs(urgent, p, 0.05)
    m = 80
    previous, kept, used = solver.assign_more(w[:m], cap, first[:m])  # no previous plan: the full solve
    assert "augmenting_path" not in used
    for k in list(range(m + 1, m + 21)) + [n]:  # twenty alerts, then twenty rows at once
        choice, kept_k, used = solver.assign_more(w[:k], cap, first[:k], previous, kept)
        full, _ = solver.assign(w[:k], cap, first[:k])
        keep_full = solver.kept(w[:k], cap, first[:k])
        assert np.array_equal(kept_k, keep_full)
        _valid(choice, cap, w[:k])
        bonus = solver._with_bonus(w[:k], first[:k], keep_full)  # the rule's objective
        assert _value(bonus, choice) == pytest.approx(_value(bonus, full), rel=1e-12)
        assert (choice[keep_full] >= 0).all() and first[:k][keep_full, choice[keep_full]].all()
        if np.array_equal(kept_k[:len(kept)], kept):
            assert "augmenting_path" in used
        else:  # the rule keeps other urgent targets now: solved afresh
            assert "augmenting_path" not in used
        previous, kept = choice, kept_k


def test_a_new_urgent_target_that_changes_which_are_kept_is_solved_afresh():
    # One slot; an urgent target at P 0.5 holds it. A new urgent target at P 0.9 and value 1
    # now wins the first solve, so the kept set changes and the plan is solved from scratch.
    w = np.array([[0.5], [0.9]])
    first = solver.urgent_pairs(np.array([True, True]), w, 0.05)
    cap = np.array([1])
    previous, kept, _ = solver.assign_more(w[:1], cap, first[:1])
    choice, kept2, used = solver.assign_more(w, cap, first, previous, kept)
    assert list(choice) == [-1, 0] and list(kept2) == [False, True]
    assert "augmenting_path" not in used


@pytest.mark.parametrize("seed", range(8))
def test_a_plan_that_lost_and_replaced_rows_is_repaired_to_the_full_solves_optimum(seed):
    # Retracted targets free slots: a placed target may now move into one, or a waiting
    # target take it (one augmenting path per freed slot); replaced targets are new rows.
    rng = np.random.default_rng(100 + seed)
    n, s = 90, 5
    cap = rng.integers(1, 6, s)
    p = rng.random((n, s)) * (rng.random((n, s)) > 0.4)
    if seed % 2:
        p = np.round(p, 1)
    value = rng.uniform(0.5, 2.0, n)
    urgent = rng.random(n) < 0.15
    w = value[:, None] * p
    first = solver.urgent_pairs(urgent, p, 0.05)
    previous, kept, _ = solver.assign_more(w, cap, first)
    stay = rng.random(n) > 0.3  # a third retracted, the placed ones among them
    stay[np.flatnonzero(previous >= 0)[:2]] = False
    rows = np.flatnonzero(stay)
    replaced = np.zeros(rows.size, dtype=bool)
    replaced[rng.choice(rows.size, 3, replace=False)] = True
    p2 = p[rows].copy()
    p2[replaced] = rng.random((3, s))
    w2, u2 = value[rows][:, None] * p2, urgent[rows]
    first2 = solver.urgent_pairs(u2, p2, 0.05)
    freed = int((previous[~stay] >= 0).sum() + (previous[rows][replaced] >= 0).sum())
    choice, kept2, used = solver.assign_more(w2, cap, first2, previous[rows], kept[rows], replaced, freed)
    full, _ = solver.assign(w2, cap, first2)
    keep_full = solver.kept(w2, cap, first2)
    _valid(choice, cap, w2)
    bonus = solver._with_bonus(w2, first2, keep_full)
    assert _value(bonus, choice) == pytest.approx(_value(bonus, full), rel=1e-12)
    if np.array_equal(kept2[~replaced], kept[rows][~replaced]):
        assert "augmenting_path" in used
