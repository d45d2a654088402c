"""Update rules: a GMN (or a baseline network) that sets a bounded lr scale per parameter.

``log_scale = bound * tanh(alpha * d)`` per edge, where ``d`` is the network's edge output;
`metaopt.optim.core` multiplies Adam's step by ``exp(log_scale)`` and refreshes it every
``refresh_every`` steps. ``alpha`` starts at 0, so an untrained rule is exactly Adam and
meta-training learns the correction. The bound keeps any rule within a factor ``exp(bound)`` of
Adam per parameter, whatever its inputs.

Rule kinds live in a registry (`register_rule_kind`): a kind is a function that builds the
network from a `RuleConfig`. Rules are stored as ``rule.safetensors`` plus ``config.json``
(architecture, feature set, versions, checksum); loading checks everything before touching a
module, so a corrupt or mismatched checkpoint raises `RuleCheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .features import FeatureConfig, Features

RULE_FORMAT = "metaopt-update-rule"
# Version 2 (metaopt 0.2): the amortised lr-scale rule. Version-1 rules (a per-step residual on
# Adam's direction, metaopt 0.1) are refused with a message saying so.
RULE_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "rule.safetensors"
# GMNOptimizer's options of the lr-free estimate, which a rule may record as the mode it runs in (RuleConfig.lr_free)
LR_FREE_OPTIONS = ("growth_rate", "settled_growth_rate", "estimate_stride", "estimate_every", "estimate_warmup", "per_tensor", "d0", "shared_sums",
                   "plateau_block", "plateau_boost", "plateau_anchor", "schedule_free")
GLOBAL_CORRECTION = ("global_gate", "global_offset")  # the parameters of RuleConfig.global_bound's correction of d
DEFAULT_RULE_DIR = Path(__file__).parent / "pretrained" / "default"  # the GMN rule meta-trained at a fixed lr
ADAM_RULE_DIR = DEFAULT_RULE_DIR.parent / "adam"  # alpha = 0: exactly Adam


class RuleCheckpointError(ValueError):
    """A rule checkpoint is missing, corrupt, or does not match this code's rule/feature format."""


# ---- the registry of rule kinds ------------------------------------------------------------------
NetBuilder = Callable[["RuleConfig"], "nn.Module | None"]
RULE_KINDS: dict[str, NetBuilder] = {}


def register_rule_kind(name: str) -> Callable[[NetBuilder], NetBuilder]:
    """Register ``builder(config) -> network`` as rule kind ``name``. The network is called as
    ``net(graph, edge_values=, node_values=, graph_values=)`` and returns an object whose ``.edge``
    is ``[E, 1]`` (one output per parameter); a builder returning None makes a rule that is Adam."""

    def add(builder: NetBuilder) -> NetBuilder:
        if name in RULE_KINDS:
            raise ValueError(f"register_rule_kind: a rule kind named {name!r} is already registered.")
        RULE_KINDS[name] = builder
        return builder

    return add


def _net_kwargs(config: "RuleConfig") -> dict[str, Any]:
    f = config.features
    return dict(hidden=config.hidden, edge_in=f.edge_dim, node_in=f.node_dim, graph_in=f.graph_dim, edge_out=1,
                **config.net_kwargs)


@register_rule_kind("gmn")
def _build_gmn(config: "RuleConfig") -> nn.Module:
    """A lite graph metanetwork: per-edge MLP plus one edge -> node -> edge round (metaopt.nn.lite)."""
    from metaopt.nn.lite import LiteGMN

    return LiteGMN(**_net_kwargs(config))


@register_rule_kind("mlp")
def _build_mlp(config: "RuleConfig") -> nn.Module:
    """The per-parameter MLP baseline: the lite GMN's inputs, width and head, no message passing."""
    from metaopt.nn.lite import LitePerParameterMLP

    return LitePerParameterMLP(**_net_kwargs(config))


@register_rule_kind("none")
def _build_none(config: "RuleConfig") -> None:
    """No network: the lr scale is 1, i.e. exactly Adam."""
    return None


@dataclass
class RuleConfig:
    """Architecture and feature set of an update rule (stored in ``config.json``).

    kind: a registered rule kind: "gmn" (graph metanetwork), "mlp" (per-parameter MLP: same inputs
        and head, no message passing), "none" (no network: exactly Adam), or your own.
    hidden: width of the network (layers: reserved for kinds with a depth); net_kwargs: extra
        constructor arguments.
    alpha: initial output scale (0 = exactly Adam; a learnable parameter of the rule).
    bound: the lr scale stays within ``exp(+-bound)`` of Adam's per parameter.
    refresh_every: the rule runs on steps 1, k + 1, 2k + 1, ... (k = refresh_every); the scale it
        sets is reused in between. Meta-training uses the same k as deployment.
    global_bound: lr-free only. 0: the scale is divided by its geometric mean ``g`` over the network,
        so the rule only shares Prodigy's ``d`` out between parameters. ``b > 0``: the rule also
        corrects ``d`` for the whole network, within ``exp(+-b)``: the scale's geometric mean becomes
        ``exp(b * tanh((gate * log g + offset) / b))`` with two learned scalars that start at 0 (so a
        rule continued with it starts exactly where it was): ``offset`` a constant correction of
        ``d``, ``gate`` how much of the network's own mean output is kept.
    default_lr: the lr `GMNOptimizer(model, rule=...)` uses at a fixed lr when none is passed. A rule multiplies Adam's step by
        its own scale, so its best lr is a property of the rule, not Adam's 1e-3; it is chosen on the
        meta-validation suite (``python -m outer_train.compare --tune-lr``), never on held-out tasks.
    lr_free: None (a fixed-lr rule), or the options of the lr-free estimate the rule was trained or
        tuned with (`LR_FREE_OPTIONS`, GMNOptimizer's names, e.g. ``{"estimate_every": 10,
        "per_tensor": 0.7}``): `GMNOptimizer` then runs it lr-free with those options unless told
        otherwise (``lr_free=False``, or an option passed), and ``lr`` multiplies the estimated step.
    soap_switch: None, or the soap switch its lr-free mode runs (`SoapSwitch`'s fields, e.g. ``{"sides":
        "columns", "block": 64, ...}``; lr-free only): `GMNOptimizer` switches to SOAP's step once the estimate has
        settled unless ``soap_switch=False`` or an option the switch does not go with (``schedule_free``,
        ``nowcast``, ``spike_guard``) is passed.
    """

    kind: str = "gmn"
    hidden: int = 8
    layers: int = 1
    alpha: float = 0.0
    bound: float = 3.0
    refresh_every: int = 100
    default_lr: float = 1e-3
    global_bound: float = 0.0
    features: FeatureConfig = field(default_factory=FeatureConfig)
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    lr_free: dict[str, float] | None = None
    soap_switch: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"RuleConfig: kind must be a registered rule kind {sorted(RULE_KINDS)}, got {self.kind!r}.")
        if not self.bound > 0 or self.refresh_every < 1:
            raise ValueError(f"RuleConfig: need bound > 0 and refresh_every >= 1, got {self.bound}, {self.refresh_every}.")
        if not self.global_bound >= 0:
            raise ValueError(f"RuleConfig: global_bound must be >= 0, got {self.global_bound}.")
        if not self.default_lr > 0:
            raise ValueError(f"RuleConfig: default_lr must be > 0, got {self.default_lr}.")
        if self.lr_free is not None:
            if not isinstance(self.lr_free, dict) or set(self.lr_free) - set(LR_FREE_OPTIONS):
                raise ValueError(f"RuleConfig: lr_free is None or a dict of the lr-free estimate's options "
                                 f"{list(LR_FREE_OPTIONS)}, got {self.lr_free!r}.")
            self.lr_free = dict(self.lr_free)
        if self.soap_switch is not None:
            from .eigenbasis import SoapSwitch  # here: eigenbasis imports the update core, which imports this module

            if self.lr_free is None:
                raise ValueError("RuleConfig: soap_switch is a mode of the lr-free step; record it with lr_free.")
            try:
                SoapSwitch.from_dict(self.soap_switch)
            except (TypeError, ValueError) as err:
                raise ValueError(f"RuleConfig: soap_switch is None or SoapSwitch's fields: {err}") from None
            self.soap_switch = dict(self.soap_switch)
        if isinstance(self.features, dict):
            self.features = FeatureConfig.from_dict(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden": self.hidden,
            "layers": self.layers,
            "alpha": self.alpha,
            "bound": self.bound,
            "refresh_every": self.refresh_every,
            "default_lr": self.default_lr,
            "global_bound": self.global_bound,
            "features": self.features.to_dict(),
            "net_kwargs": dict(self.net_kwargs),
            **({} if self.lr_free is None else {"lr_free": dict(self.lr_free)}),
            **({} if self.soap_switch is None else {"soap_switch": dict(self.soap_switch)}),
        }


class UpdateRule(nn.Module):
    """Graph + features -> a bounded log lr scale per parameter edge (``bound * tanh(alpha * d)``)."""

    def __init__(self, config: RuleConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = RuleConfig(**overrides)
        elif overrides:
            raise TypeError("UpdateRule: pass either a RuleConfig or keyword overrides, not both.")
        self.config = config
        self.net = RULE_KINDS[config.kind](config)
        self.alpha = nn.Parameter(torch.tensor(float(config.alpha)))
        if config.global_bound > 0:  # lr-free: the rule's correction of Prodigy's d (RuleConfig.global_bound)
            self.global_gate = nn.Parameter(torch.zeros(()))
            self.global_offset = nn.Parameter(torch.zeros(()))

    @property
    def features(self) -> FeatureConfig:
        return self.config.features

    @property
    def is_identity(self) -> bool:
        """True when the lr scale is exactly 1 (no network, or alpha == 0): the rule is Adam."""
        return self.net is None or float(self.alpha.detach()) == 0.0

    def prepare(self, graph: Any, device: torch.device | str) -> Any:
        """The graph in the form the network wants, on ``device`` (its ``prepare``: int64 indices,
        degrees), built once per structure instead of at every refresh."""
        if self.net is not None and hasattr(self.net, "prepare"):
            return self.net.prepare(graph, device)
        return graph.to(device)

    def forward(self, graph: Any, feats: Features) -> Tensor:
        """The network's raw output ``d`` [E], one per parameter edge."""
        if self.net is None:
            return feats.edge.new_zeros(feats.edge.shape[0])
        out = self.net(graph, edge_values=feats.edge, node_values=feats.node, graph_values=feats.graph)
        edge = out.edge
        if edge is None or edge.shape != (feats.edge.shape[0], 1):
            raise RuntimeError(
                f"UpdateRule: the {self.config.kind} network returned edge outputs of shape "
                f"{None if edge is None else tuple(edge.shape)}, expected ({feats.edge.shape[0]}, 1)."
            )
        return edge[:, 0]

    def log_scale(self, graph: Any, feats: Features, rule_params: dict[str, Tensor] | None = None) -> Tensor:
        """``bound * tanh(alpha * d)`` per edge (differentiable); ``rule_params`` substitutes the
        rule's parameters (``torch.func.functional_call``), as PES needs."""
        if rule_params is None:
            d, alpha = self(graph, feats), self.alpha
        else:
            d, alpha = torch.func.functional_call(self, rule_params, (graph, feats)), rule_params["alpha"]
        out = self.config.bound * torch.tanh(alpha * d)
        # tanh would saturate an Inf output to the bound: keep it non-finite, so that the edge
        # falls back to scale 1 (and is counted) like a NaN output. Without autograd a finite sum
        # of d (one pass; the usual case) shows there is no Inf to find.
        if torch.is_grad_enabled() or not bool(torch.isfinite(d.sum())):
            out = torch.where(torch.isinf(d), torch.full_like(out, float("nan")), out)
        return out.float()

    def global_log_scale(self, log_g: Tensor, rule_params: dict[str, Tensor] | None = None) -> Tensor:
        """Lr-free, the log geometric mean the scale keeps, from the network's ``log_g``:
        ``b * tanh((gate * log_g + offset) / b)``, ``b = global_bound``; 0 without one."""
        b = self.config.global_bound
        if b <= 0:
            return torch.zeros_like(log_g)
        p = dict(self.named_parameters()) if rule_params is None else rule_params
        return b * torch.tanh((p["global_gate"] * log_g + p["global_offset"]) / b)

    def with_global_bound(self, bound: float) -> "UpdateRule":
        """This rule with ``RuleConfig.global_bound = bound``, its correction of ``d`` starting at 0
        (gate and offset 0): lr-free it computes exactly what it computed before."""
        rule = type(self)(RuleConfig(**{**self.config.to_dict(), "global_bound": bound})).to(self.alpha.device)
        missing, unexpected = rule.load_state_dict(self.state_dict(), strict=False)
        if unexpected or set(missing) - set(GLOBAL_CORRECTION):
            raise ValueError(f"UpdateRule.with_global_bound: weights do not carry over ({missing}, {unexpected}).")
        return rule  # a trained correction (gate, offset) carries over when both bounds are > 0

    # ---- checkpoints ---------------------------------------------------------------------
    def with_lr_free(self, options: dict[str, float] | None, soap_switch: dict[str, Any] | None = None) -> "UpdateRule":
        """This rule (same weights) recording ``options`` as the lr-free mode `GMNOptimizer` runs it in
        (`RuleConfig.lr_free`; None: a fixed-lr rule) and ``soap_switch`` as that mode's switch
        (`RuleConfig.soap_switch`; None: none)."""
        config = {**self.config.to_dict(), "lr_free": options, "soap_switch": soap_switch}
        rule = type(self)(RuleConfig(**config)).to(self.alpha.device)
        rule.load_state_dict(self.state_dict())
        return rule

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
                f"this metaopt reads version {RULE_VERSION} (version 1 was the per-step residual rule of "
                "metaopt 0.1, which this release replaced by the amortised lr-scale rule). Re-train the "
                "rule with this metaopt's outer_train, or use metaopt 0.1."
            )
        try:
            config = RuleConfig(**meta["rule"])
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

    def with_features(self, features: FeatureConfig) -> "UpdateRule":
        """This rule reading a larger feature set, computing exactly what it computed before.

        The new feature set must list the old edge, node and graph features first (as
        ``relative_lr`` appends its column); the columns added to an input projection start at
        zero, so the new inputs are ignored until meta-training gives them weight. This is how a
        trained rule is continued with a feature it was not trained on (``rule.init_from`` with a
        new feature flag) instead of starting from scratch."""
        old, new = self.config.features, features
        for kind in ("edge", "node", "graph"):
            a, b = getattr(old, f"{kind}_names")(), getattr(new, f"{kind}_names")()
            if b[: len(a)] != a:
                raise ValueError(
                    f"UpdateRule.with_features: the new {kind} features {b} do not start with the rule's {a}; "
                    "only appended features keep the trained weights meaningful."
                )
        config = RuleConfig(**{**self.config.to_dict(), "features": new})
        rule = type(self)(config).to(self.alpha.device)
        current = self.state_dict()
        widened = {}
        for name, target in rule.state_dict().items():
            source = current[name]
            if source.shape == target.shape:
                widened[name] = source.clone()
            elif source.dim() == 2 and source.shape[0] == target.shape[0] and source.shape[1] < target.shape[1]:
                # An input projection (out, in): the trained columns, then zeros for the new inputs.
                widened[name] = torch.cat([source, source.new_zeros(target.shape[0], target.shape[1] - source.shape[1])], 1)
            else:
                raise ValueError(
                    f"UpdateRule.with_features: {name} changes from {tuple(source.shape)} to {tuple(target.shape)}, "
                    "which is not an input projection gaining columns."
                )
        rule.load_state_dict(widened, strict=True)
        return rule

    def appended_inputs(self, base: "UpdateRule") -> dict[str, Tensor]:
        """Parameter name -> bool mask of the input columns this rule has beyond ``base`` (what
        `with_features` appended to ``base``'s input projections); parameters without any are absent."""
        old = dict(base.named_parameters())
        out = {}
        for name, p in self.named_parameters():
            if p.dim() == 2 and name in old and old[name].shape[1] < p.shape[1]:
                mask = torch.zeros_like(p, dtype=torch.bool)
                mask[:, old[name].shape[1]:] = True
                out[name] = mask
        return out

    @classmethod
    def default(cls) -> "UpdateRule":
        """The rule shipped in ``metaopt/optim/pretrained/default``: the GMN lr-scale rule
        meta-trained at a fixed lr by ``outer_train`` (command, budget and evaluation in docs/optim.md),
        which ``GMNOptimizer(model, lr=...)`` runs; ``GMNOptimizer(model)`` runs ``rule="lrfree_soap_1e4"``.
        ``rule="adam"`` is the untrained rule (alpha = 0), i.e. exactly Adam."""
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


@dataclass(frozen=True)
class RetiredRule:
    """A shipped rule name removed from the package: the release whose ``GMNOptimizer(model)`` ran it, and
    its lr-free mode, which ``GMNOptimizer(model, rule="adam", lr_free=True, **options)`` runs bit for bit
    (each was the untrained rule, exactly Adam's direction, recording that mode)."""

    default_of: str
    options: Mapping[str, Any]  # read-only (a shared table): kwargs() gives a dict to change

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def kwargs(self, **replace: Any) -> dict[str, Any]:
        """`GMNOptimizer`'s keyword arguments that run this mode (``replace``: options changed)."""
        return {"rule": "adam", "lr_free": True, **self.options, **replace}

    def call(self) -> str:
        """The `GMNOptimizer` call that runs this mode, as a user would type it."""
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f'GMNOptimizer(model, rule="adam", lr_free=True, {kwargs})'


_LEAN = dict(estimate_every=10, estimate_stride=3, per_tensor=0.7, shared_sums=True)
# The lr-free defaults of 0.5-0.9, retired in 0.12 (the rule names no longer serve a user: each is a later
# default's mode with an option off). Their directories are kept in the repository for the recorded commands
# of docs/optim_history.md, under docs/figures/optim/retired_rules/<name>.
RETIRED_RULES: dict[str, RetiredRule] = {
    "lrfree_base": RetiredRule("0.5", dict(estimate_every=10, per_tensor=0.7)),
    "lrfree_lean": RetiredRule("0.6", dict(_LEAN)),
    "lrfree_settled": RetiredRule("0.7", dict(_LEAN, settled_growth_rate=1.02)),
    "lrfree_plateau": RetiredRule("0.8", dict(_LEAN, settled_growth_rate=1.02, plateau_block=500)),
    "lrfree_boost": RetiredRule("0.9", dict(_LEAN, settled_growth_rate=1.02, plateau_block=500, plateau_boost=True)),
}
RETIRED_IN = "0.12"


def shipped_rules() -> list[str]:
    """Names of the rules shipped in the package (``rule="<name>"``)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def _refuse_retired(name: str) -> None:
    retired = RETIRED_RULES[name]
    raise ValueError(f"GMNOptimizer: rule={name!r} (what GMNOptimizer(model) ran in {retired.default_of}) was "
                     f"removed in {RETIRED_IN}; the same optimizer, bit for bit: {retired.call()}. "
                     f"Shipped rules: {', '.join(shipped_rules())}.")


def resolve_rule(rule: "str | Path | UpdateRule | None") -> UpdateRule:
    """``"default"`` or another shipped name (`shipped_rules`: ``"lrfree_soap_1e4"``, ``"adam"``, ...) -> that
    rule; a path -> `UpdateRule.from_pretrained`; a rule -> itself (None -> ``"default"``; `GMNOptimizer`
    picks the shipped rule for its mode itself)."""
    if isinstance(rule, UpdateRule):
        return rule
    if rule is None or rule == "default":
        return UpdateRule.default()
    if isinstance(rule, str) and rule in RETIRED_RULES:
        _refuse_retired(rule)
    if isinstance(rule, str) and "/" not in rule and (PRETRAINED_DIR / rule / CONFIG_FILE).is_file():
        return UpdateRule.from_pretrained(PRETRAINED_DIR / rule)
    if isinstance(rule, (str, Path)):
        return UpdateRule.from_pretrained(rule)
    raise TypeError(f"GMNOptimizer: rule must be 'default', a directory or an UpdateRule, got {type(rule).__name__}.")
