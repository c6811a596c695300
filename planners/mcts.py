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
from planners.settings import MCTSSettings


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
    """Batched continuous-action MCTS with pruning of unacceptable children.

    Every option is a field of :class:`MCTSSettings`; the action box comes from the
    task at run time. The tree lives on the CPU (numpy) and the imagination runs on
    ``device``: each batch of leaves crosses there once and its values come back once.
    """

    def __init__(
        self,
        settings: MCTSSettings,
        action_low: ArrayLike,
        action_high: ArrayLike,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(settings, MCTSSettings):
            raise TypeError(f"MCTSPlanner needs MCTSSettings, got {type(settings).__name__}")
        self.settings = settings
        self.device = torch.device(device)
        low, high = action_box(action_low, action_high)  # on the CPU, for the tree
        self._low, self._high = low.numpy(), high.numpy()
        self.low, self.high = low.to(self.device), high.to(self.device)

    def plan(
        self,
        state: torch.Tensor,
        imagination: Imagination,
        *,
        generator: torch.Generator,
        previous_plan: torch.Tensor | None = None,
    ) -> PlanResult:
        """Search from ``state`` [S]; ``previous_plan`` [H, A] is shifted to warm-start."""
        state = check_state(state, self.device)
        check_generator(generator)
        s = self.settings
        H, A = s.horizon, self.low.shape[0]
        base = (
            warm_start(
                previous_plan, horizon=H, low=self.low, high=self.high, fill=s.warm_start_fill
            )
            .cpu()
            .numpy()
        )  # [H, A] proposal centre per depth and the rollout policy

        # Allocate the tree: each simulation adds at most one node.
        tree = Tree.allocate(1 + s.simulations, s.max_children, A)
        top: TopK | None = None
        tally = RejectionTally()
        history: list[torch.Tensor] = []  # best score so far, per batch

        done = 0
        while done < s.simulations:
            # Simulate: select leaves one after another under virtual loss, expanding
            # one new child per simulation, so the whole batch is imagined at once.
            B = min(s.batch_size, s.simulations - done)
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
            actions_t = torch.from_numpy(actions).to(self.device)  # one copy per batch
            batch = imagine(imagination, state, actions_t)
            scores = score_candidates(
                batch, risk_aversion=s.risk_aversion, reject_above=s.reject_above
            )
            tally.add(scores)
            top = merge_top(top, batch, actions_t, scores, s.top_k)
            history.append(top.score[0])
            # Chance outcomes (particles) are averaged per edge; one flagged particle
            # or a NaN makes the edge unacceptable.
            r = batch.reward_mean.float() - s.risk_aversion * batch.reward_std.float()  # [B, P, H]
            p = batch.p_unacceptable.float()  # [B, P, H]
            step_value = r.mean(1)  # [B, H]
            step_bad = (p > s.reject_above).any(1) | p.isnan().any(1) | step_value.isnan()

            # Back up (the tree is on the CPU: the batch's values come back once).
            self._backup(
                tree,
                paths,
                step_value.cpu().numpy().astype(np.float64),
                step_bad.cpu().numpy(),
                scores.score.cpu().numpy().astype(np.float64),
                scores.risk.cpu().numpy().astype(np.float64),
                scores.feasible.cpu().numpy(),
            )
            done += len(paths)

        assert top is not None, "the first simulation always reaches the imagination"
        return self._recommend(tree, base, top, tally, history)

    # -- simulate ----------------------------------------------------------------------

    def _draws(self, B: int, generator: torch.Generator) -> dict[str, np.ndarray]:
        """All random numbers one batch of expansions can use, drawn at once (on the
        generator's device, the CPU, where the tree is)."""
        A, g = self.low.shape[0], generator
        return {
            "normal": torch.randn(B, A, generator=g, device=g.device).cpu().numpy(),
            "pick": torch.rand(B, generator=g, device=g.device).cpu().numpy(),
            "uniform": torch.rand(B, A, generator=g, device=g.device).cpu().numpy(),
        }

    def _select_and_expand(
        self, tree: Tree, base: np.ndarray, draws: dict[str, np.ndarray], b: int
    ) -> np.ndarray | None:
        """Path of node ids from the root to a new (or full-depth) leaf, or None."""
        node, path = 0, [0]
        while tree.depth[node] < self.settings.horizon:
            if self._may_widen(tree, node):
                action = self._propose(tree, node, base, draws, b)
                path.append(tree.add_child(node, action))
                break
            child = self._best_child(tree, node)
            if child < 0 and tree.n_children[node] < self.settings.max_children:
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
        s = self.settings
        allowed = math.ceil(s.widening_k * n**s.widening_alpha)
        return tree.n_children[node] < min(allowed, s.max_children)

    def _propose(
        self, tree: Tree, node: int, base: np.ndarray, draws: dict[str, np.ndarray], b: int
    ) -> np.ndarray:
        """First child: the warm-start action; then its Gaussian or, sometimes, uniform."""
        centre = base[tree.depth[node]]  # [A]
        if tree.n_children[node] == 0:
            return centre
        if draws["pick"][b] < self.settings.uniform_fraction:
            return self._low + draws["uniform"][b] * (self._high - self._low)
        half = (self._high - self._low) / 2.0
        step = self.settings.proposal_std * half * draws["normal"][b]
        return np.clip(centre + step, self._low, self._high)

    def _best_child(self, tree: Tree, node: int) -> int:
        kids = tree.children[node, : tree.n_children[node]]
        kids = kids[~tree.pruned[kids]]
        if kids.size == 0:
            return -1
        n_kid = tree.visits[kids] + tree.pending[kids]  # >= 1: created in flight
        n_parent = tree.visits[node] + tree.pending[node]
        q = tree.normalised_q(kids)
        c = self.settings.exploration
        if self.settings.selection == "puct":
            # Sampled actions carry the uniform prior 1 / K (Hubert et al. 2021, Sec. 4).
            u = c / kids.size * math.sqrt(max(n_parent, 1)) / (1.0 + n_kid)
        else:
            u = c * np.sqrt(math.log(max(n_parent, 1)) / np.maximum(n_kid, 1))
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
        self,
        tree: Tree,
        base: np.ndarray,
        top: TopK,
        tally: RejectionTally,
        history: list[torch.Tensor],
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
        while self.settings.recommend == "visits":
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
                plan=torch.from_numpy(plan).to(self.device),
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
