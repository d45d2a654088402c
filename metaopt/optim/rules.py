"""Update rules: a residual on Adam, ``update = lr * (adam_direction + alpha * d * exp(beta * m))``.

An `UpdateRule` wraps a network (a GMN, or the per-parameter MLP baseline that shares everything
but message passing) whose two edge outputs are a direction ``d`` and a log-magnitude ``m`` per
parameter. ``alpha`` starts at 0, so an untrained rule is exactly Adam and meta-training learns
the correction. Rules are stored as ``rule.safetensors`` plus ``config.json`` (architecture,
feature set, versions, checksum); loading checks everything before touching a module, so a
corrupt or mismatched checkpoint raises `RuleCheckpointError` instead of loading partially.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .features import FeatureConfig, Features

RULE_FORMAT = "metaopt-update-rule"
RULE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "rule.safetensors"
KINDS = ("gmn", "mlp", "none")
DEFAULT_RULE_DIR = Path(__file__).parent / "pretrained" / "default"  # the meta-trained GMN rule
ADAM_RULE_DIR = DEFAULT_RULE_DIR.parent / "adam"  # alpha = 0: exactly Adam


class RuleCheckpointError(ValueError):
    """A rule checkpoint is missing, corrupt, or does not match this code's rule/feature format."""


RESIDUAL_SCALES = ("adam", "none")


@dataclass
class RuleConfig:
    """Architecture and feature set of an update rule (stored in ``config.json``).

    kind: "gmn" (graph metanetwork), "mlp" (per-parameter MLP: same inputs and head, no message
        passing) or "none" (no network: the residual is identically zero, i.e. exactly Adam).
    hidden, layers: width and depth of the network; net_kwargs: extra constructor arguments.
    alpha: initial residual scale (0 = exactly Adam; a learnable parameter of the rule).
    beta: scale of the magnitude output inside ``exp(beta * m)`` (fixed).
    residual_scale: "adam" multiplies each edge's residual by the magnitude of Adam's own step
        direction ``|m_hat| / (sqrt(v_hat) + eps)`` there, so the learned part shrinks as Adam's
        step does near a minimum and cannot leave an O(lr) noise floor; "none" leaves it in units
        of the learning rate (rules saved before this option existed load as "none").
    """

    kind: str = "gmn"
    hidden: int = 32
    layers: int = 2
    alpha: float = 0.0
    beta: float = 0.1
    residual_scale: str = "adam"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    net_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RuleConfig: kind must be one of {KINDS}, got {self.kind!r}.")
        if self.residual_scale not in RESIDUAL_SCALES:
            raise ValueError(f"RuleConfig: residual_scale must be one of {RESIDUAL_SCALES}, got {self.residual_scale!r}.")
        if isinstance(self.features, dict):
            self.features = FeatureConfig.from_dict(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden": self.hidden,
            "layers": self.layers,
            "alpha": self.alpha,
            "beta": self.beta,
            "residual_scale": self.residual_scale,
            "features": self.features.to_dict(),
            "net_kwargs": dict(self.net_kwargs),
        }


def _build_net(config: RuleConfig) -> nn.Module | None:
    """The rule's network for ``config.kind`` (None for "none"), with two edge outputs (d, m)."""
    if config.kind == "none":
        return None
    try:
        from metaopt.nn import GMN, PerParameterMLP
    except ImportError as exc:  # the nn package is developed in parallel
        raise ImportError(
            f"UpdateRule(kind={config.kind!r}) needs metaopt.nn.GMN / PerParameterMLP, which could not "
            f"be imported ({exc}); use kind='none' (exact Adam) until metaopt.nn is installed."
        ) from exc
    cls = GMN if config.kind == "gmn" else PerParameterMLP
    f = config.features
    return cls(
        hidden=config.hidden,
        layers=config.layers,
        edge_in=f.edge_dim,
        node_in=f.node_dim,
        graph_in=f.graph_dim,
        edge_out=2,
        node_out=0,
        graph_out=0,
        **config.net_kwargs,
    )


class UpdateRule(nn.Module):
    """Graph + features -> per-edge residual ``alpha * d * exp(beta * m)`` added to Adam's direction."""

    def __init__(self, config: RuleConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = RuleConfig(**overrides)
        elif overrides:
            raise TypeError("UpdateRule: pass either a RuleConfig or keyword overrides, not both.")
        self.config = config
        self.net = _build_net(config)
        self.alpha = nn.Parameter(torch.tensor(float(config.alpha)))

    @property
    def features(self) -> FeatureConfig:
        return self.config.features

    @property
    def is_identity(self) -> bool:
        """True when the residual is exactly zero (no network, or alpha == 0): the rule is Adam."""
        return self.net is None or float(self.alpha.detach()) == 0.0

    def prepare(self, graph: Any, device: torch.device | str) -> Any:
        """The graph in the form the network wants, on ``device``: a metaopt.nn network gets its
        `prepare_graph` result (int64 indices, degrees) once, instead of recomputing it per step."""
        if self.net is not None:
            try:
                from metaopt.nn import GMN, prepare_graph
            except ImportError:
                pass
            else:
                if isinstance(self.net, GMN):  # PerParameterMLP is a GMN subclass
                    return prepare_graph(graph, device)
        return graph.to(device)

    def forward(self, graph: Any, feats: Features) -> tuple[Tensor, Tensor]:
        """Per-edge direction ``d`` [E] and log-magnitude ``m`` [E] from the network's edge head."""
        if self.net is None:
            zero = feats.edge.new_zeros(feats.edge.shape[0])
            return zero, zero
        out = self.net(graph, edge_values=feats.edge, node_values=feats.node, graph_values=feats.graph)
        edge = out.edge
        if edge is None or edge.shape != (feats.edge.shape[0], 2):
            raise RuntimeError(
                f"UpdateRule: the {self.config.kind} network returned edge outputs of shape "
                f"{None if edge is None else tuple(edge.shape)}, expected ({feats.edge.shape[0]}, 2)."
            )
        return edge[:, 0], edge[:, 1]

    def residual(self, graph: Any, feats: Features) -> Tensor:
        """``alpha * d * exp(beta * m)`` per edge, in units of the learning rate (differentiable)."""
        d, m = self(graph, feats)
        return self.alpha * d * torch.exp(self.config.beta * m)

    # ---- checkpoints ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``rule.safetensors`` and ``config.json`` (with versions and a checksum) to ``directory``."""
        from safetensors.torch import save_file

        from metaopt import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": RULE_FORMAT})
        digest = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
        config = {
            "format": RULE_FORMAT,
            "rule_version": RULE_VERSION,
            "metaopt_version": __version__,
            "rule": self.config.to_dict(),
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "sha256": digest,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "UpdateRule":
        """Load a rule saved by `save_pretrained`; every check runs before the weights are applied."""
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (cfg_path, w_path):
            if not path.is_file():
                raise RuleCheckpointError(
                    f"UpdateRule.from_pretrained: {path} does not exist; a rule directory holds "
                    f"{CONFIG_FILE} and {WEIGHTS_FILE} written by save_pretrained()."
                )
        try:
            meta = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RuleCheckpointError(f"UpdateRule.from_pretrained: {cfg_path} is not valid JSON ({exc}).") from exc
        if not isinstance(meta, dict) or meta.get("format") != RULE_FORMAT:
            raise RuleCheckpointError(
                f"UpdateRule.from_pretrained: {cfg_path} is not a metaopt update-rule config "
                f"(format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {RULE_FORMAT!r})."
            )
        if meta.get("rule_version") != RULE_VERSION:
            raise RuleCheckpointError(
                f"UpdateRule.from_pretrained: {cfg_path} has rule_version {meta.get('rule_version')!r}; "
                f"this metaopt reads version {RULE_VERSION}. Re-export the rule with a matching metaopt."
            )
        try:
            # Rules saved before residual_scale existed were trained with the plain residual.
            config = RuleConfig(**{"residual_scale": "none", **meta["rule"]})
        except (KeyError, TypeError, ValueError) as exc:
            raise RuleCheckpointError(f"UpdateRule.from_pretrained: invalid rule section in {cfg_path}: {exc}") from exc
        _check_feature_set(meta["rule"]["features"], config.features, cfg_path)

        data = w_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise RuleCheckpointError(
                f"UpdateRule.from_pretrained: {w_path} does not match the checksum in {cfg_path}; the "
                "file is corrupt or was replaced. Re-download or re-save the rule."
            )
        from safetensors.torch import load as load_bytes

        try:
            tensors = load_bytes(data)
        except Exception as exc:  # safetensors raises its own error types for malformed files
            raise RuleCheckpointError(f"UpdateRule.from_pretrained: cannot read {w_path}: {exc}") from exc

        rule = cls(config)
        expected = {k: tuple(v.shape) for k, v in rule.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        if missing or unexpected or wrong:
            raise RuleCheckpointError(
                f"UpdateRule.from_pretrained: {w_path} does not fit a {config.kind} rule with this config: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape "
                f"{[(k, got[k], expected[k]) for k in wrong[:5]]}. The network code changed since it was saved."
            )
        rule.load_state_dict(tensors, strict=True)
        return rule.to(map_location)

    @classmethod
    def default(cls) -> "UpdateRule":
        """The rule shipped in ``metaopt/optim/pretrained/default``: the GMN rule meta-trained by
        ``outer_train`` (command, budget and evaluation in the README). ``rule="adam"`` is the
        untrained residual (alpha = 0), i.e. exactly Adam."""
        return cls.from_pretrained(DEFAULT_RULE_DIR)


def _check_feature_set(stored: dict[str, Any], config: FeatureConfig, where: Path) -> None:
    """Refuse a checkpoint whose recorded feature names/version differ from what this code computes."""
    if stored.get("version") != config.version or config.version != FeatureConfig().version:
        raise RuleCheckpointError(
            f"UpdateRule.from_pretrained: {where} was trained on feature version {stored.get('version')!r}; "
            f"this metaopt computes version {FeatureConfig().version}."
        )
    names = stored.get("names")
    current = {"edge": config.edge_names(), "node": config.node_names(), "graph": config.graph_names()}
    if names != current:
        raise RuleCheckpointError(
            f"UpdateRule.from_pretrained: {where} lists features {names}, but this metaopt computes "
            f"{current} for that config; the rule would read the wrong inputs."
        )


PRETRAINED_DIR = DEFAULT_RULE_DIR.parent


def shipped_rules() -> list[str]:
    """Names of the rules shipped in the package (``rule="<name>"``)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_rule(rule: "str | Path | UpdateRule | None") -> UpdateRule:
    """``"default"`` or another shipped name (see `shipped_rules`) -> that rule; a path ->
    `UpdateRule.from_pretrained`; a rule -> itself."""
    if isinstance(rule, UpdateRule):
        return rule
    if rule is None or rule == "default":
        return UpdateRule.default()
    if isinstance(rule, str) and "/" not in rule and (PRETRAINED_DIR / rule / CONFIG_FILE).is_file():
        return UpdateRule.from_pretrained(PRETRAINED_DIR / rule)
    if isinstance(rule, (str, Path)):
        return UpdateRule.from_pretrained(rule)
    raise TypeError(f"GMNOptimizer: rule must be 'default', a directory or an UpdateRule, got {type(rule).__name__}.")
