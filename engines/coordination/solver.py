"""Exact assignment of targets to site slots under per-site capacity.

maximise sum_ij w_ij x_ij  s.t.  sum_j x_ij <= 1 (a target once),  sum_i x_ij <= cap_j,
x_ij in {0, 1}, with w_ij = value_i * P(success_ij) on feasible pairs. This is a
transportation problem: its constraint matrix is totally unimodular, so the LP optimum at a
vertex is integral. Where every target's best site has room for all the targets whose best
it is, that plan is the optimum ("best_site": it is the best plan without capacity, and it
fits). Otherwise small instances go to scipy's Hungarian solver with one column per capacity
slot; large ones to the LP with HiGHS (dual simplex, which ends at a vertex).

Before either solver, each site keeps only its `C` best candidates, C being the slots of
all sites together: if target i sat at site j with C targets ahead of it there, one of those
C is unassigned (at most C are assigned, i among them), and moving site j to it loses
nothing. So the optimum's value is unchanged, and a 10,000-target call with 12 sites of 12
slots solves over at most 12 x 144 pairs instead of 120,000.

The decision rule for urgent targets (time-critical, or due within the window: they have no
later chance) is `urgent_pairs()` and two solves. An urgent target's pair *qualifies* where
its P(success) reaches a floor (`urgent_min_p_success`, 0.05 by default). First the
qualifying pairs alone are solved over the whole capacity, maximising their value x P: the
urgent targets this places are *kept* (`kept()`). Then one solve places everything: every
kept target at one of its qualifying pairs, and, under that, the most total value x P,
urgent targets included. It is exact, one assignment problem: each kept target's qualifying
pairs get a bonus larger than the value of any whole plan (`_urgent_bonus`), so the plan
places all of them (they fit together: the first solve placed them) and value alone decides
the rest and where they go. Urgent targets not kept compete like any target by value.

Without the floor any positive weight qualified, and a calibrated model never says exactly
0: urgent targets it rated at P ~ 1e-5 took slots that ordinary targets at P ~ 0.9 would
have used, while a scorer that rounds hopeless pairs to 0 was spared. The floor is on P
rather than on value x P so that a client's value scale does not move it. Until 2026-12-04
the first solve also fixed *where* the kept targets went, blind to what the site cost the
others (urgent U at P 0.50 at A, 0.49 at B; ordinary O fits only A at 0.9, value 3: U went
to A and O was left out), so a method with other probabilities could beat the rule applied
to the truth. Now the first solve decides only *which* urgent targets are kept; applied to
the true probabilities the rule is then the best plan that keeps them (what
`training/coordination/evaluate.py`'s oracle relies on).

Deterministic for a given input: both solvers are deterministic, and nothing here depends on
time or hash order.

A standing plan is not solved again from scratch on every event (`assign_more`). Its
previous plan was optimal for the rows it had. An optimal plan for one more row differs
from it by one augmenting path starting at that row: the difference of two plans splits
into paths and cycles, and any part of it that avoids the new row was already open to the
previous plan, which found no gain in it. That path is the best of: the new target into a
free slot, or into a taken one whose target moves on to another site, and so on, ending in
a free slot or a target dropped. Likewise a retracted placed target frees one slot, and the
plan needs at most one path through it: a waiting target entering, or a placed target
moving into it, each chain ending in a free slot or a drop. With S sites each path is a
shortest path over S + 1 nodes (the sites and "unassigned"), instead of a Hungarian solve
over every live target. A replaced target is a retraction and an addition. This holds for
the urgent rule's second solve as long as the first keeps the same urgent targets among
the rows that stayed; otherwise, after a site or window change, or a reload, `assign` runs.
The plan it finds has the same value as `assign`'s (the tests compare them, with ties and
without); where several plans tie it keeps the previous plan's choices, so the stream
moves fewer targets.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse import coo_matrix

_EPS = 1e-12


def urgent_pairs(urgent: np.ndarray, p_success: np.ndarray, min_p_success: float) -> np.ndarray:
    """(N, S) bool: the qualifying urgent pairs (`assign`, `kept`). `urgent` (N,) bool, `p_success` (N, S).

    An urgent target's pair qualifies when its P(success) is at least `min_p_success` (and
    above 0: an infeasible pair never does, even with a floor of 0).
    """
    return np.asarray(urgent, dtype=bool)[:, None] & (p_success >= min_p_success) & (p_success > _EPS)


def assign(weights: np.ndarray, capacity: np.ndarray, first: np.ndarray | None = None,
           lsa_max_cells: int = 60_000) -> tuple[np.ndarray, str]:
    """Site index per target (-1: unassigned) and the solver(s) used, "+"-joined.

    `weights` (N, S): expected value, <= 0 where infeasible. `capacity` (S,). `first` (N, S)
    bool, from `urgent_pairs()`: the qualifying urgent pairs. The urgent targets `kept()`
    chooses are all placed at qualifying pairs; under that, the plan maximises the total
    weight (module docstring). Without `first`, it maximises the total weight.
    """
    out, _, used = assign_more(weights, capacity, first, lsa_max_cells=lsa_max_cells)
    return out, used


def kept(weights: np.ndarray, capacity: np.ndarray, first: np.ndarray, lsa_max_cells: int = 60_000) -> np.ndarray:
    """(N,) bool: the urgent targets the rule keeps, those the qualifying pairs alone (`first`)
    place when they maximise their own value x P over the whole capacity."""
    return _kept(weights, np.asarray(capacity, dtype=np.int64), first, lsa_max_cells)[0]


def _kept(weights: np.ndarray, cap: np.ndarray, first: np.ndarray, lsa_max_cells: int) -> tuple[np.ndarray, str]:
    if first.shape != weights.shape:
        raise ValueError(f"first has shape {first.shape}, weights {weights.shape}: pass urgent_pairs(...)")
    keep = np.zeros(weights.shape[0], dtype=bool)
    rows = np.flatnonzero((first & (weights > _EPS)).any(axis=1))
    if rows.size == 0:
        return keep, "empty"
    sub, name = _solve(np.where(first[rows], weights[rows], 0.0), cap, lsa_max_cells)
    keep[rows[sub >= 0]] = True
    return keep, name


def _urgent_bonus(weights: np.ndarray) -> float:
    """More than the total weight of any plan: each target counts at most its best pair."""
    return 1.0 + float(np.maximum(weights, 0.0).max(axis=1).sum())


def _solve(w: np.ndarray, cap: np.ndarray, lsa_max_cells: int) -> tuple[np.ndarray, str]:
    n, s = w.shape
    if not cap.all():  # a site without slots takes nobody: its column cannot matter
        w = np.where(cap > 0, w, 0.0)
    # Only targets with some positive weight can matter; and no site needs more slots than
    # there are such targets.
    live = np.flatnonzero((w > _EPS).any(axis=1))
    out = np.full(n, -1, dtype=np.int64)
    if live.size == 0:
        return out, "empty"
    wl = w[live]
    # Each live target at its best site is the best plan when capacity is ignored, so where
    # that plan fits every site's capacity it is the optimum: a small call, or the urgent
    # rule's first solve over a few urgent targets, needs no assignment solver.
    best = wl.argmax(axis=1)
    if (np.bincount(best, minlength=s) <= cap).all():
        out[live] = best
        return out, "best_site"
    slots = np.minimum(cap, live.size)
    total = int(slots.sum())
    if total == 0:
        return out, "empty"
    if live.size > total:  # prune to each site's `total` best candidates (module docstring)
        top = np.argpartition(-wl, total - 1, axis=0)[:total]  # (total, S) row indices per site
        keep = np.zeros(wl.shape, dtype=bool)
        keep[top, np.arange(s)] = True
        wl = np.where(keep, wl, 0.0)
        still = np.flatnonzero((wl > _EPS).any(axis=1))
        live, wl = live[still], wl[still]
    if live.size * int(slots.sum()) <= lsa_max_cells:
        col_site = np.repeat(np.arange(s), slots)  # (C,) site of each slot column
        cost = -np.where(wl > _EPS, wl, 0.0)[:, col_site]  # (L, C)
        r, c = linear_sum_assignment(cost)
        keep = cost[r, c] < -_EPS
        out[live[r[keep]]] = col_site[c[keep]]
        return out, "linear_sum_assignment"
    ii, jj = np.nonzero(wl > _EPS)  # one LP column per positive pair
    k = ii.size
    cols = np.arange(k)
    a = coo_matrix((np.ones(2 * k), (np.concatenate([ii, live.size + jj]), np.concatenate([cols, cols]))),
                   shape=(live.size + s, k)).tocsr()
    b = np.concatenate([np.ones(live.size), slots.astype(np.float64)])
    res = linprog(-wl[ii, jj], A_ub=a, b_ub=b, bounds=(0.0, 1.0), method="highs-ds")
    if res.status != 0:  # cannot happen for a feasible bounded LP; fail loudly, not silently
        raise RuntimeError(f"HiGHS failed: {res.message}")
    chosen = res.x > 0.5
    out[live[ii[chosen]]] = jj[chosen]
    return out, "highs_lp"


def assign_more(weights: np.ndarray, capacity: np.ndarray, first: np.ndarray | None,
                previous: np.ndarray | None = None, previous_kept: np.ndarray | None = None,
                fresh: np.ndarray | None = None, freed: int = 0,
                lsa_max_cells: int = 60_000) -> tuple[np.ndarray, np.ndarray, str]:
    """`assign` for a problem built from one `assign` (or this) already solved: (site per
    target, the urgent targets kept (N,) bool, solver).

    `previous` (N,) is that plan's site for each row (-1 unassigned) and `previous_kept` (N,)
    whether it kept the row's urgent target; `fresh` (N,) marks rows that are new (their
    entries in both are ignored), and `freed` counts the placed targets removed since. Rows
    not fresh are unchanged (weights, capacity and urgency). A shorter `previous` (M,) means
    rows [M, N) are fresh. The previous plan, less the removed targets, is repaired by one
    augmenting path per freed slot and one per fresh row (module docstring) when the rule
    keeps the same urgent targets among the old rows; otherwise, and without `previous`, the
    full solve.
    """
    n, s = weights.shape
    if n == 0 or s == 0:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool), "empty"
    cap = np.asarray(capacity, dtype=np.int64)
    kept_now = np.zeros(n, dtype=bool)
    used = []
    if first is not None:
        kept_now, name = _kept(weights, cap, first, lsa_max_cells)
        used.append(name)
    w = _with_bonus(weights, first, kept_now)
    out = None
    if previous is not None and previous.shape[0] <= n:
        m = previous.shape[0]
        new = np.arange(n) >= m if fresh is None else np.asarray(fresh, dtype=bool)
        old_kept = np.zeros(n, dtype=bool)
        old_kept[:m] = False if previous_kept is None else previous_kept
        if np.array_equal(kept_now[~new], old_kept[~new]):
            out = np.full(n, -1, dtype=np.int64)
            out[:m] = previous
            out[new] = -1
            waiting = np.flatnonzero(~new & (out < 0))  # old rows left out: candidates for freed slots
            done = all(_augment(w, cap, out, waiting) for _ in range(freed))
            entering = [e for e in np.flatnonzero(new).tolist() if (w[e] > _EPS).any()]
            if not (done and all(_augment(w, cap, out, np.array([e])) for e in entering)):
                out = None
            else:
                used.append("augmenting_path")
    if out is None:
        out, name = _solve(w, cap, lsa_max_cells)
        used.append(name)
    used = [u for i, u in enumerate(used) if u != "empty" and u not in used[:i]]
    return out, kept_now, "+".join(used) or "empty"


def _with_bonus(weights: np.ndarray, first: np.ndarray | None, keep: np.ndarray) -> np.ndarray:
    """The second solve's weights: each kept urgent target's qualifying pairs lifted above any plan."""
    if first is None or not keep.any():
        return weights
    must = first & keep[:, None] & (weights > _EPS)
    return np.where(must, weights + _urgent_bonus(weights), weights)


def _augment(w: np.ndarray, cap: np.ndarray, out: np.ndarray, rows: np.ndarray) -> bool:
    """Apply the best augmenting path that starts with one of the unassigned `rows`, if it
    gains; False (nothing changed) if the path could not be followed to its end.

    Nodes: sites 0..S-1 and S = unassigned. Moving a placed target i from site k to site j
    (w[i, j] > 0) or to S (dropped) costs w[i, k] - w[i, j] (w[i, S] = 0) and frees a slot
    at k; a site with a free slot, and S, end a path at no cost. `dist[k]` is the least cost
    of freeing a slot at k (Bellman-Ford over S + 1 nodes: the plan is optimal, so there is
    no negative cycle), and the path's gain is w[e, j] - dist[j] at the best row e and site j.
    """
    n, s = w.shape
    rows = rows[out[rows] < 0]  # a candidate a previous path placed is no longer one
    placed = np.flatnonzero(out >= 0)
    at = out[placed]
    load = np.bincount(at, minlength=s)
    # cost[a, j]: moving placed target a to site j (inf where infeasible or its own site); j = s drops it.
    wp = w[placed]
    own = wp[np.arange(placed.size), at]
    cost = np.full((placed.size, s + 1), np.inf)
    cost[:, :s] = np.where(wp > _EPS, own[:, None] - wp, np.inf)
    cost[np.arange(placed.size), at] = np.inf
    cost[:, s] = own
    edge = np.full((s + 1, s + 1), np.inf)  # edge[k, j]: cheapest move of a target at k to j
    mover = np.full((s + 1, s + 1), -1, dtype=np.int64)
    cols = np.arange(s + 1)
    for k in np.unique(at).tolist():
        here = np.flatnonzero(at == k)
        best = here[cost[here].argmin(axis=0)]  # (S + 1,) the cheapest placed target to move to each j
        edge[k], mover[k] = cost[best, cols], placed[best]
    dist = np.where(load < cap, 0.0, np.inf)
    dist = np.append(dist, 0.0)  # S: unassigned, always free
    nxt = np.full(s + 1, -1, dtype=np.int64)  # -1: the path ends here
    for _ in range(s + 1):
        via = edge + dist[None, :]
        j = via.argmin(axis=1)
        better = via[np.arange(s + 1), j] < dist - _EPS
        if not better.any():
            break
        dist[better], nxt[better] = via[np.arange(s + 1), j][better], j[better]
    # A path starts with a candidate row entering site j (gain w[e, j] - dist[j]) or, once
    # targets were removed, with a placed target leaving j for a slot they freed (gain
    # -dist[j]: a plan that was optimal has dist >= 0 everywhere, so only removals open these).
    gain = np.where(w[rows] > _EPS, w[rows] - dist[None, :s], -np.inf) if rows.size else np.full((0, s), -np.inf)
    r, j = divmod(int(gain.argmax()), s) if rows.size else (-1, 0)  # the first best, row then site order
    best = gain[r, j] if rows.size else -np.inf
    leave = int(dist[:s].argmin())
    path = []  # (target, its new site or -1), applied only once the path is known to end
    if -dist[leave] > max(best, _EPS):
        node = leave
    elif best > _EPS:
        node = j
        path.append((int(rows[r]), j))
    else:
        return True
    for _ in range(s + 2):  # a simple path visits each node at most once
        step = int(nxt[node]) if node < s else -1
        if step < 0:
            for t, k in path:
                out[t] = k
            return True
        path.append((int(mover[node, step]), step if step < s else -1))
        node = step
    return False  # a cycle in the pointers: rounding met a zero-cost cycle; the caller solves afresh
