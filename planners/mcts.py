"""Monte-Carlo tree search over continuous action sequences, batched and constraint-aware.

The tree branches on actions: node depth d holds a prefix of d actions. Each
node's children are actions sampled from the warm-start plan's Gaussian at that
depth (its first child is the warm-start action itself) or, with probability
``uniform_fraction``, uniformly from the action box; progressive widening adds
a child while ``children < k * visits^alpha`` (Couetoux et al. 2011, "Continuous
upper confidence trees"). Children are chosen by PUCT with the uniform prior
that sampled actions call for (Hubert et al. 2021, "Learning and planning in
complex action spaces", Sec. 4) or by UCT, on Q-values normalised to [0, 1] by
the tree's running min and max (MuZero, Schrittwieser et al. 2020, App. B).

A leaf is valued by imagining its action prefix completed with the warm-start
plan: the sum of particle-mean risk-adjusted rewards along the edges (the
reward model on every edge) and over the rollout gives the return. The ensemble
member is the chance outcome after each action: every imagination call draws
fresh particles (ensemble members), so the P particles of a call and the calls
through an edge sample its chance node, and values are their average. Because
the imagination answers from the root state, the executed plan is open-loop and
chance nodes are averaged, not branched. A child whose imagined step is
flagged in any particle is pruned with its subtree (Leike et al. 2018, Sec. 5.2:
rejection, not penalty), and only fully feasible simulations back up a value.

Batching: ``batch_size`` simulations select their leaves one after another with
a virtual loss (an in-flight visit counts as the tree's lowest value), then all
leaves are imagined in one call. Readable top to bottom in ``plan``: allocate
the tree, then simulate (select and expand), evaluate, back up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from planners.base import (
    WARM_START_FILLS,
    Imagination,
    PlanResult,
    RejectionTally,
    TopK,
    action_box,
    check_generator,
    check_state,
    finish,
    imagine,
    merge_top,
    score_candidates,
    warm_start,
)

SELECTIONS = ("puct", "uct")
RECOMMENDATIONS = ("best", "visits")


@dataclass
class Tree:
    """Preallocated search tree; node 0 is the root (the start state)."""

    depth: np.ndarray  # [M] int, number of actions from the root
    action: np.ndarray  # [M, A] float32, the action on the edge into the node
    children: np.ndarray  # [M, C] int, -1 where empty
    n_children: np.ndarray  # [M] int
    visits: np.ndarray  # [M] int, finished simulations through the node
    pending: np.ndarray  # [M] int, simulations in flight through the node (virtual loss)
    value_sum: np.ndarray  # [M] float64, returns from the parent's state through this edge
    value_count: np.ndarray  # [M] int, simulations that backed up a return
    pruned: np.ndarray  # [M] bool, unacceptable edge or no acceptable child left
    seq_score: np.ndarray  # [M] float64, score of prefix + warm-start completion
    seq_risk: np.ndarray  # [M] float64, its pessimistic risk
    seq_feasible: np.ndarray  # [M] bool, its feasibility
    size: int = 1
    q_min: float = math.inf
    q_max: float = -math.inf

    @classmethod
    def allocate(cls, max_nodes: int, max_children: int, action_dim: int) -> Tree:
        return cls(
            depth=np.zeros(max_nodes, dtype=np.int64),
            action=np.zeros((max_nodes, action_dim), dtype=np.float32),
            children=np.full((max_nodes, max_children), -1, dtype=np.int64),
            n_children=np.zeros(max_nodes, dtype=np.int64),
            visits=np.zeros(max_nodes, dtype=np.int64),
            pending=np.zeros(max_nodes, dtype=np.int64),
            value_sum=np.zeros(max_nodes, dtype=np.float64),
            value_count=np.zeros(max_nodes, dtype=np.int64),
            pruned=np.zeros(max_nodes, dtype=bool),
            seq_score=np.full(max_nodes, np.nan),
            seq_risk=np.full(max_nodes, np.nan),
            seq_feasible=np.zeros(max_nodes, dtype=bool),
        )

    def add_child(self, node: int, action: np.ndarray) -> int:
        child = self.size
        self.size += 1
        self.depth[child] = self.depth[node] + 1
        self.action[child] = action
        self.children[node, self.n_children[node]] = child
        self.n_children[node] += 1
        return child

    def normalised_q(self, nodes: np.ndarray) -> np.ndarray:
        """Q in [0, 1] by the tree's min and max; in-flight visits count as 0."""
        count = self.value_count[nodes]
        q = self.value_sum[nodes] / np.maximum(count, 1)
        span = self.q_max - self.q_min
        qn = (q - self.q_min) / span if span > 0 else np.full(len(nodes), 0.5)
        weight = count / np.maximum(count + self.pending[nodes], 1)
        return np.where(count > 0, qn, 0.0) * weight


class MCTSPlanner:
    """Batched continuous-action MCTS with pruning of unacceptable children."""

    def __init__(
        self,
        *,
        action_low: ArrayLike,
        action_high: ArrayLike,
        horizon: int,
        simulations: int = 2000,
        batch_size: int = 400,
        widening_k: float = 2.0,
        widening_alpha: float = 0.5,
        max_children: int = 16,
        selection: str = "puct",
        exploration: float = 1.25,
        proposal_std: float = 0.6,
        uniform_fraction: float = 0.2,
        kappa: float = 0.0,
        threshold: float = 0.5,
        recommend: str = "best",
        warm_start_fill: str = "repeat",
        top_k: int = 4,
    ) -> None:
        self.low, self.high = action_box(action_low, action_high)
        checks = {
            "horizon >= 1": horizon >= 1,
            "simulations >= 1": simulations >= 1,
            "batch_size >= 1": batch_size >= 1,
            "widening_k > 0": widening_k > 0.0,
            "0 < widening_alpha < 1": 0.0 < widening_alpha < 1.0,
            "max_children >= 1": max_children >= 1,
            f"selection in {SELECTIONS}": selection in SELECTIONS,
            "exploration >= 0": exploration >= 0.0,
            "proposal_std > 0": proposal_std > 0.0,
            "0 <= uniform_fraction <= 1": 0.0 <= uniform_fraction <= 1.0,
            "kappa is finite": math.isfinite(kappa),
            "0 <= threshold <= 1": 0.0 <= threshold <= 1.0,
            f"warm_start_fill in {WARM_START_FILLS}": warm_start_fill in WARM_START_FILLS,
            "top_k >= 1": top_k >= 1,
            f"recommend in {RECOMMENDATIONS}": recommend in RECOMMENDATIONS,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"MCTSPlanner: violated {', '.join(failed)}")
        self.horizon = int(horizon)
        self.simulations = int(simulations)
        self.batch_size = int(batch_size)
        self.widening_k = float(widening_k)
        self.widening_alpha = float(widening_alpha)
        self.max_children = int(max_children)
        self.selection = selection
        self.exploration = float(exploration)
        self.proposal_std = float(proposal_std)
        self.uniform_fraction = float(uniform_fraction)
        self.kappa = float(kappa)
        self.threshold = float(threshold)
        self.recommend = recommend
        self.warm_start_fill = warm_start_fill
        self.top_k = int(top_k)
        self._low = self.low.numpy()
        self._high = self.high.numpy()

    def plan(
        self,
        state: torch.Tensor,
        imagination: Imagination,
        *,
        generator: torch.Generator,
        previous_plan: torch.Tensor | None = None,
    ) -> PlanResult:
        """Search from ``state`` [S]; ``previous_plan`` [H, A] is shifted to warm-start."""
        state = check_state(state)
        check_generator(generator)
        H, A = self.horizon, self.low.shape[0]
        base = warm_start(
            previous_plan, horizon=H, low=self.low, high=self.high, fill=self.warm_start_fill
        ).numpy()  # [H, A] proposal centre per depth and the rollout policy

        # Allocate the tree: each simulation adds at most one node.
        tree = Tree.allocate(1 + self.simulations, self.max_children, A)
        top: TopK | None = None
        tally = RejectionTally()
        history: list[float] = []

        done = 0
        while done < self.simulations:
            # Simulate: select leaves one after another under virtual loss, expanding
            # one new child per simulation, so the whole batch is imagined at once.
            B = min(self.batch_size, self.simulations - done)
            draws = self._draws(B, generator)
            paths: list[np.ndarray] = []
            for b in range(B):
                path = self._select_and_expand(tree, base, draws, b)
                if path is None:  # every action at the root is unacceptable
                    break
                tree.pending[path] += 1
                paths.append(path)
            if not paths:
                break

            # Evaluate: each leaf's prefix completed by the warm-start plan, one call.
            actions = np.repeat(base[None], len(paths), axis=0)  # [B, H, A]
            for b, path in enumerate(paths):
                actions[b, : len(path) - 1] = tree.action[path[1:]]
            actions_t = torch.from_numpy(actions)
            batch = imagine(imagination, state, actions_t)
            scores = score_candidates(batch, kappa=self.kappa, threshold=self.threshold)
            tally.add(scores)
            top = merge_top(top, batch, actions_t, scores, self.top_k)
            history.append(top.best_score())
            # Chance outcomes (particles) are averaged per edge; one flagged particle
            # or a NaN makes the edge unacceptable.
            r = batch.reward_mean.float() - self.kappa * batch.reward_std.float()  # [B, P, H]
            p = batch.p_unacceptable.float()  # [B, P, H]
            step_value = r.mean(1)  # [B, H]
            step_bad = (p > self.threshold).any(1) | p.isnan().any(1) | step_value.isnan()

            # Back up.
            self._backup(
                tree,
                paths,
                step_value.numpy().astype(np.float64),
                step_bad.numpy(),
                scores.score.numpy().astype(np.float64),
                scores.risk.numpy().astype(np.float64),
                scores.feasible.numpy(),
            )
            done += len(paths)

        assert top is not None, "the first simulation always reaches the imagination"
        return self._recommend(tree, base, top, tally, history)

    # -- simulate ----------------------------------------------------------------------

    def _draws(self, B: int, generator: torch.Generator) -> dict[str, np.ndarray]:
        """All random numbers one batch of expansions can use, drawn at once."""
        A = self.low.shape[0]
        return {
            "normal": torch.randn(B, A, generator=generator).numpy(),
            "pick": torch.rand(B, generator=generator).numpy(),
            "uniform": torch.rand(B, A, generator=generator).numpy(),
        }

    def _select_and_expand(
        self, tree: Tree, base: np.ndarray, draws: dict[str, np.ndarray], b: int
    ) -> np.ndarray | None:
        """Path of node ids from the root to a new (or full-depth) leaf, or None."""
        node, path = 0, [0]
        while tree.depth[node] < self.horizon:
            if self._may_widen(tree, node):
                action = self._propose(tree, node, base, draws, b)
                path.append(tree.add_child(node, action))
                break
            child = self._best_child(tree, node)
            if child < 0 and tree.n_children[node] < self.max_children:
                # Every child so far is unacceptable, but the node may hold more: widen
                # now rather than give up a node that still has room.
                action = self._propose(tree, node, base, draws, b)
                path.append(tree.add_child(node, action))
                break
            if child < 0:
                # All children unacceptable and no room for another: a dead end.
                tree.pruned[node] = True
                if node == 0:
                    return None
                node, path = 0, [0]
                continue
            node = child
            path.append(child)
        return np.asarray(path, dtype=np.int64)

    def _may_widen(self, tree: Tree, node: int) -> bool:
        n = tree.visits[node] + tree.pending[node] + 1
        allowed = math.ceil(self.widening_k * n**self.widening_alpha)
        return tree.n_children[node] < min(allowed, self.max_children)

    def _propose(
        self, tree: Tree, node: int, base: np.ndarray, draws: dict[str, np.ndarray], b: int
    ) -> np.ndarray:
        """First child: the warm-start action; then its Gaussian or, sometimes, uniform."""
        centre = base[tree.depth[node]]  # [A]
        if tree.n_children[node] == 0:
            return centre
        if draws["pick"][b] < self.uniform_fraction:
            return self._low + draws["uniform"][b] * (self._high - self._low)
        half = (self._high - self._low) / 2.0
        step = self.proposal_std * half * draws["normal"][b]
        return np.clip(centre + step, self._low, self._high)

    def _best_child(self, tree: Tree, node: int) -> int:
        kids = tree.children[node, : tree.n_children[node]]
        kids = kids[~tree.pruned[kids]]
        if kids.size == 0:
            return -1
        n_kid = tree.visits[kids] + tree.pending[kids]  # >= 1: created in flight
        n_parent = tree.visits[node] + tree.pending[node]
        q = tree.normalised_q(kids)
        if self.selection == "puct":
            # Sampled actions carry the uniform prior 1 / K (Hubert et al. 2021, Sec. 4).
            u = self.exploration / kids.size * math.sqrt(max(n_parent, 1)) / (1.0 + n_kid)
        else:
            u = self.exploration * np.sqrt(math.log(max(n_parent, 1)) / np.maximum(n_kid, 1))
        return int(kids[np.argmax(q + u)])

    # -- back up -------------------------------------------------------------------

    def _backup(
        self,
        tree: Tree,
        paths: list[np.ndarray],
        step_value: np.ndarray,  # [B, H]
        step_bad: np.ndarray,  # [B, H]
        seq_score: np.ndarray,  # [B]
        seq_risk: np.ndarray,  # [B]
        seq_feasible: np.ndarray,  # [B]
    ) -> None:
        # suffix[b, t]: return from step t on; a node at depth j >= 1 is worth suffix[j-1]
        # (its own edge plus everything after), the root suffix[0].
        suffix = np.flip(np.cumsum(np.flip(step_value, 1), 1), 1)  # [B, H]
        for b, path in enumerate(paths):
            tree.pending[path] -= 1
            tree.visits[path] += 1
            leaf = path[-1]
            tree.seq_score[leaf] = seq_score[b]
            tree.seq_risk[leaf] = seq_risk[b]
            tree.seq_feasible[leaf] = seq_feasible[b]
            edge_bad = step_bad[b, : len(path) - 1]  # [d], edge into path[j] is step j-1
            if edge_bad.any():
                tree.pruned[path[1 + int(np.argmax(edge_bad))]] = True
                continue
            if not seq_feasible[b]:
                continue  # the completion was rejected: no return to credit
            returns = suffix[b, np.maximum(tree.depth[path] - 1, 0)]  # [len(path)]
            tree.value_sum[path] += returns
            tree.value_count[path] += 1
            q = tree.value_sum[path] / tree.value_count[path]
            tree.q_min = min(tree.q_min, float(q.min()))
            tree.q_max = max(tree.q_max, float(q.max()))

    # -- recommend ---------------------------------------------------------------------

    def _recommend(
        self, tree: Tree, base: np.ndarray, top: TopK, tally: RejectionTally, history: list[float]
    ) -> PlanResult:
        """The best candidate imagined, or the most visited path (robust child).

        ``"best"`` returns the best-ranked sequence imagined, a whole plan that
        warm-starts the next call (as iCEM's executing the best sample).
        ``"visits"`` follows the most visited valued children (Browne et al. 2012,
        Sec. 3.3.3); that prefix, completed by the warm-start plan, was imagined when
        its last node was expanded and is returned if that imagining was feasible,
        else the best candidate is.
        """
        node, prefix = 0, []
        while self.recommend == "visits":
            kids = tree.children[node, : tree.n_children[node]]
            kids = kids[~tree.pruned[kids] & (tree.value_count[kids] > 0)]
            if kids.size == 0:
                break
            q = tree.value_sum[kids] / tree.value_count[kids]
            node = int(kids[np.lexsort((q, tree.visits[kids]))[-1]])
            prefix.append(node)
        if prefix and tree.seq_feasible[node]:
            plan = base.copy()
            plan[: len(prefix)] = tree.action[prefix]
            return finish(
                plan=torch.from_numpy(plan),
                plan_score=float(tree.seq_score[node]),
                plan_risk=float(tree.seq_risk[node]),
                plan_feasible=True,
                top=top,
                tally=tally,
                history=history,
            )
        return finish(
            plan=top.actions[0].clone(),
            plan_score=float(top.score[0]),
            plan_risk=float(top.risk[0]),
            plan_feasible=bool(top.feasible[0]),
            top=top,
            tally=tally,
            history=history,
        )
