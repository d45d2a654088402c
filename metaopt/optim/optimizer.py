"""`GMNOptimizer`: a drop-in ``torch.optim.Optimizer`` whose update is Adam plus a learned residual.

A step (DESIGN.md, "How a step of GMNOptimizer flows"): gradients are gathered once into a flat
edge-ordered vector; Adam's moments and the rule's extra momenta live in flat buffers (the
per-parameter entries of ``opt.state`` are views into them); features are computed over the flat
vector, the rule maps them to a residual per edge, and the update
``lr * (adam_direction + residual)`` is applied through views with ``torch._foreach`` ops.
Weight decay is decoupled (AdamW-style): ``p *= 1 - lr * weight_decay`` before the update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .features import GraphIndex, compute_features
from .lazy_graph import FirstCallGraph, build_graph, check_graph, graph_now, not_built_error
from .rules import UpdateRule, resolve_rule

# Keys of opt.state that are not parameters: fault counters and the layout check.
SKIPPED_STEPS = "skipped_steps"  # steps skipped because a gradient was NaN/Inf
RULE_FALLBACKS = "rule_fallbacks"  # edges whose rule output was non-finite (Adam used instead)
STEPS_TAKEN = "steps_taken"  # real steps taken (drives the tanh(step / T) features)
MOMENTUM_DECAYS = "momentum_decays"  # the rule's extra momentum decays the state was built for


def _build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Convert ``model`` once. Layers no converter knows are kept as free edges (strict=False):
    still optimized, with the converter's one warning naming them."""
    return build_graph(model, example_inputs)


class GMNOptimizer(torch.optim.Optimizer):
    """Adam with a learned per-parameter residual from a graph-metanetwork update rule.

    ``GMNOptimizer(model)`` optimizes all of ``model``'s parameters; ``params=`` takes the usual
    list of tensors or param-group dicts (each tensor must belong to ``model``) for per-group
    ``lr`` / ``betas`` / ``eps`` / ``weight_decay``. Model parameters in no group are untouched.
    ``rule="default"`` is the shipped meta-trained GMN rule; ``rule="adam"`` (the untrained
    residual, alpha = 0) is exactly Adam, AdamW with ``weight_decay > 0`` (decoupled decay).

    The parameter graph is built once with ``metaopt.to_graph``: from ``example_inputs`` (or the
    model's ``example_inputs()``) when given, else from the model's first real forward call
    (``opt.graph`` is None until then; see ``metaopt/optim/lazy_graph.py``); ``graph=`` supplies
    a prebuilt one.

    Fault handling: a step whose gradients hold NaN/Inf is skipped entirely (``opt.skipped_steps``);
    non-finite rule outputs fall back to the Adam direction on those edges (``opt.rule_fallbacks``).
    """

    def __init__(
        self,
        model: nn.Module,
        rule: str | Path | UpdateRule | None = "default",
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        graph: Any = None,
        example_inputs: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"GMNOptimizer: the first argument must be the nn.Module being trained (its graph is "
                f"built from it), got {type(model).__name__}; pass parameter groups as params=."
            )
        if not lr >= 0.0 or not eps >= 0.0 or not weight_decay >= 0.0:
            raise ValueError(f"GMNOptimizer: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}.")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"GMNOptimizer: betas must lie in [0, 1), got {betas}.")
        self._params_all: list[Tensor] = list(model.parameters())
        if not self._params_all:
            raise ValueError("GMNOptimizer: the model has no parameters.")
        self._index = {id(p): i for i, p in enumerate(self._params_all)}
        self.graph: Any = None  # the parameter graph; None until the first forward when built lazily
        self._first_call: FirstCallGraph | None = None
        if graph is None:
            graph = _build_graph(model, example_inputs) if example_inputs is not None else graph_now(model)
        if graph is None:
            self._first_call = FirstCallGraph(model, self._set_graph)  # built from the first batch
        else:
            self._set_graph(graph)
        self.rule: UpdateRule = resolve_rule(rule)
        self.rule.eval()
        self._numels = [p.numel() for p in self._params_all]
        self._num_edges = sum(self._numels)
        self._buffers: dict[str, Tensor] | None = None  # flat state, allocated at the first step
        self._graph_cache: dict[str, tuple[Any, GraphIndex]] = {}
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(self._params_all if params is None else params, defaults)
        self._reset_counters()

    # ---- construction helpers ------------------------------------------------------------
    def _reset_counters(self) -> None:
        self.state[SKIPPED_STEPS] = 0
        self.state[RULE_FALLBACKS] = 0
        self.state[STEPS_TAKEN] = 0
        self.state[MOMENTUM_DECAYS] = list(self.rule.features.momentum_decays)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its parameters must be parameters of the model the graph was built from."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        foreign = [tuple(p.shape) for p in params if id(p) not in self._index]
        if foreign:
            raise ValueError(
                f"GMNOptimizer: {len(foreign)} parameter(s) in a param group are not parameters of the "
                f"model this optimizer was built for (shapes {foreign[:3]}); pass only model parameters."
            )
        super().add_param_group(param_group)
        if self._buffers is not None:
            self._attach_views()

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because some gradient was NaN or Inf."""
        return int(self.state[SKIPPED_STEPS])

    @property
    def rule_fallbacks(self) -> int:
        """Edges (summed over steps) where the rule's output was non-finite and Adam was used."""
        return int(self.state[RULE_FALLBACKS])

    # ---- flat state ----------------------------------------------------------------------
    def _allocate(self, device: torch.device) -> None:
        """Zero flat buffers (edge order) on ``device`` and per-parameter views into them."""
        e, k = self._num_edges, len(self.rule.features.momentum_decays)
        self._buffers = {
            "exp_avg": torch.zeros(e, device=device),
            "exp_avg_sq": torch.zeros(e, device=device),
            "momenta": torch.zeros(k, e, device=device),
            "step": torch.zeros(len(self._params_all)),  # per tensor, on CPU like torch.optim.Adam
        }
        self._attach_views()

    def _attach_views(self) -> None:
        """Point ``self.state[p]`` of every grouped parameter at its slice of the flat buffers."""
        b = self._buffers
        assert b is not None
        self._views = {
            "exp_avg": list(b["exp_avg"].split(self._numels)),
            "exp_avg_sq": list(b["exp_avg_sq"].split(self._numels)),
            "momenta": [list(row.split(self._numels)) for row in b["momenta"]],
        }
        offsets = [0]
        for n in self._numels:
            offsets.append(offsets[-1] + n)
        for group in self.param_groups:
            for p in group["params"]:
                i = self._index[id(p)]
                a, z = offsets[i], offsets[i + 1]
                self.state[p] = {
                    "step": b["step"][i],
                    "exp_avg": self._views["exp_avg"][i].view(p.shape),
                    "exp_avg_sq": self._views["exp_avg_sq"][i].view(p.shape),
                    "momenta": b["momenta"][:, a:z].view(-1, *p.shape),
                }

    def _ensure_state(self, device: torch.device) -> dict[str, Tensor]:
        if self._buffers is None:
            self._allocate(device)
        elif self._buffers["exp_avg"].device != device:  # the model moved (e.g. .to("cuda"))
            self._buffers = {k: (v if k == "step" else v.to(device)) for k, v in self._buffers.items()}
            self._attach_views()
        assert self._buffers is not None
        return self._buffers

    def _set_graph(self, graph: Any) -> None:
        """Adopt ``graph`` (checked against the model's parameters) and drop prepared copies."""
        check_graph(graph, self._params_all)
        self.graph = graph
        self._graph_cache = {}

    def _graph_on(self, device: torch.device) -> tuple[Any, GraphIndex]:
        if self.graph is None:
            raise not_built_error(self._first_call)
        key = f"{device}/{id(self.rule)}"  # the prepared form depends on the rule's network
        if key not in self._graph_cache:
            self._graph_cache[key] = (self.rule.prepare(self.graph, device), GraphIndex.from_graph(self.graph, device))
        return self._graph_cache[key]

    # ---- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimizer step; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Which parameters take part: in a group, requiring grad, with a gradient (as torch.optim).
        entries: list[tuple[int, Tensor, dict[str, Any]]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GMNOptimizer does not support sparse gradients; use dense embeddings.")
                entries.append((self._index[id(p)], p, group))
        if not entries:
            return loss
        entries.sort(key=lambda t: t[0])
        device = entries[0][1].device
        if any(p.device != device for _, p, _ in entries):
            raise RuntimeError("GMNOptimizer: all optimized parameters must be on one device.")

        # Gather gradients once, in edge order (zeros for parameters that do not take part).
        parts: list[Tensor | None] = [None] * len(self._params_all)
        for i, p, _ in entries:
            parts[i] = p.grad.reshape(-1)
        grad = torch.cat(
            [t if t is not None else torch.zeros(n, device=device) for t, n in zip(parts, self._numels)]
        ).float()
        # One reduction, no [E] temporary: min/max propagate NaN, and Inf is their value.
        if not bool(torch.isfinite(torch.stack(torch.aminmax(grad))).all()):
            self.state[SKIPPED_STEPS] += 1  # state and parameters stay exactly as they were
            return loss

        buf = self._ensure_state(device)
        idx = [i for i, _, _ in entries]
        steps = buf["step"]
        steps[idx] += 1
        self.state[STEPS_TAKEN] += 1
        step_list = steps.tolist()

        # Per-participating-tensor hyperparameters (Python floats, as torch.optim.Adam computes them).
        lr, b1, b2, eps, wd, bc1, bc2 = ([] for _ in range(7))
        for i, _, group in entries:
            beta1, beta2 = group["betas"]
            lr.append(float(group["lr"]))
            b1.append(float(beta1))
            b2.append(float(beta2))
            eps.append(float(group["eps"]))
            wd.append(float(group["weight_decay"]))
            bc1.append(1.0 - beta1 ** step_list[i])
            bc2.append(1.0 - beta2 ** step_list[i])
        # Fast path: every tensor takes part with the same hyperparameters -> plain flat ops.
        flat = len(entries) == len(self._params_all) and all(
            len(set(c)) == 1 for c in (lr, b1, b2, eps, wd, bc1, bc2)
        )

        m, v, mom = buf["exp_avg"], buf["exp_avg_sq"], buf["momenta"]
        decays = self.rule.features.momentum_decays
        params = [p for _, p, _ in entries]
        # Moments: one flat op each when uniform, else foreach over the participating views.
        # The arithmetic mirrors torch.optim.Adam(foreach=True) op for op, so the untrained
        # rule reproduces Adam's trajectory bit for bit.
        if flat:
            m.lerp_(grad, 1.0 - b1[0])
            v.mul_(b2[0]).addcmul_(grad, grad, value=1.0 - b2[0])
            for k, d in enumerate(decays):
                mom[k].lerp_(grad, 1.0 - d)
            denom_flat = v.sqrt().div_(bc2[0] ** 0.5).add_(eps[0])
            denom = [t.view(p.shape) for t, p in zip(denom_flat.split(self._numels), params)]
        else:
            grad_parts = grad.split(self._numels)
            gv = [grad_parts[i] for i in idx]
            mv = [self._views["exp_avg"][i] for i in idx]
            vv = [self._views["exp_avg_sq"][i] for i in idx]
            torch._foreach_lerp_(mv, gv, [1.0 - x for x in b1])
            torch._foreach_mul_(vv, b2)
            torch._foreach_addcmul_(vv, gv, gv, [1.0 - x for x in b2])
            for k, d in enumerate(decays):
                torch._foreach_lerp_([self._views["momenta"][k][i] for i in idx], gv, 1.0 - d)
            denom = torch._foreach_sqrt(vv)
            torch._foreach_div_(denom, [x**0.5 for x in bc2])
            torch._foreach_add_(denom, eps)
            denom = [t.view(p.shape) for t, p in zip(denom, params)]
        residual = None if self.rule.is_identity else self._rule_residual(grad, device)

        # Apply through views: decoupled decay, Adam's step, then the rule's residual.
        decayed = [(p, 1.0 - a * w) for p, a, w in zip(params, lr, wd) if w != 0.0]
        if decayed:
            torch._foreach_mul_([p for p, _ in decayed], [f for _, f in decayed])
        exp_avgs = [self._views["exp_avg"][i].view(p.shape) for i, p in zip(idx, params)]
        torch._foreach_addcdiv_(params, exp_avgs, denom, [-a / c for a, c in zip(lr, bc1)])
        if residual is not None:
            res = residual.split(self._numels)
            upd = [(res[i] * -a).view(p.shape) for i, a, p in zip(idx, lr, params)]
            if self.rule.config.residual_scale == "adam":  # in units of Adam's own step there
                mag = torch._foreach_abs(exp_avgs)
                torch._foreach_div_(mag, bc1)
                torch._foreach_div_(mag, denom)
                torch._foreach_mul_(upd, mag)
            torch._foreach_add_(params, upd)
        return loss

    def _rule_residual(self, grad: Tensor, device: torch.device) -> Tensor:
        """The rule's residual per edge; non-finite outputs become 0 (Adam direction), counted."""
        graph, index = self._graph_on(device)
        buf = self._buffers
        assert buf is not None
        self.rule.to(device)
        feats = compute_features(
            index,
            grad,
            self._params_all,
            buf["exp_avg"],
            buf["exp_avg_sq"],
            buf["momenta"],
            self.state[STEPS_TAKEN],
            self.rule.features,
        )
        residual = self.rule.residual(graph, feats).float()
        bad = ~torch.isfinite(residual)
        n_bad = int(bad.sum())
        if n_bad:
            self.state[RULE_FALLBACKS] += n_bad
            residual = residual.masked_fill(bad, 0.0)
        return residual

    # ---- checkpointing -------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by `state_dict`, copying it into the flat buffers (views stay views)."""
        stored = state_dict.get("state", {}).get(MOMENTUM_DECAYS)
        current = list(self.rule.features.momentum_decays)
        if stored is not None and [float(x) for x in stored] != current:
            raise ValueError(
                f"GMNOptimizer.load_state_dict: the state was saved with extra momenta at decays {stored}, "
                f"this optimizer's rule uses {current}; load it with the same rule."
            )
        super().load_state_dict(state_dict)
        for key, default in ((SKIPPED_STEPS, 0), (RULE_FALLBACKS, 0), (STEPS_TAKEN, 0)):
            self.state.setdefault(key, default)
        self.state[MOMENTUM_DECAYS] = current
        loaded = {p: self.state[p] for group in self.param_groups for p in group["params"] if p in self.state}
        if not loaded:
            self._buffers = None
            return
        device = next(iter(loaded)).device
        self._allocate(device)
        buf = self._buffers
        assert buf is not None
        k = len(current)
        for p, st in loaded.items():
            i = self._index[id(p)]
            missing = [key for key in ("step", "exp_avg", "exp_avg_sq", "momenta") if key not in st]
            if missing:
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} (shape {tuple(p.shape)}) lacks "
                    f"{missing}; it was not saved by a GMNOptimizer."
                )
            if st["exp_avg"].shape != p.shape or st["exp_avg_sq"].shape != p.shape or st["momenta"].shape != (k, *p.shape):
                raise ValueError(
                    f"GMNOptimizer.load_state_dict: the state of parameter {i} has shapes "
                    f"{tuple(st['exp_avg'].shape)} / {tuple(st['momenta'].shape)}, expected {tuple(p.shape)} / "
                    f"{(k, *p.shape)}."
                )
            buf["step"][i] = st["step"]
            self._views["exp_avg"][i].copy_(st["exp_avg"].reshape(-1))
            self._views["exp_avg_sq"][i].copy_(st["exp_avg_sq"].reshape(-1))
            for r in range(k):
                self._views["momenta"][r][i].copy_(st["momenta"][r].reshape(-1))
        self._attach_views()

    @classmethod
    def from_pretrained(cls, directory: str | Path, model: nn.Module, **kwargs: Any) -> "GMNOptimizer":
        """An optimizer for ``model`` driven by the rule saved in ``directory``."""
        return cls(model, rule=UpdateRule.from_pretrained(directory), **kwargs)
