"""Parameter nowcasting (NiNo's idea at this project's scale): jump ahead along the trajectory.

Every ``interval`` optimizer steps the parameters are stored; once ``context`` states are stored
(the last ``(context - 1) * interval`` steps of the trajectory), a network predicts where each
parameter will be ``horizon`` intervals later and the parameters are set there; the stored states
are then dropped and the next context is collected from the new point. The optimizer's own state
(Adam's moments) is kept, as NiNo keeps its base optimizer's.

Inputs per parameter, per tensor scale-free: the context's displacements from the newest state,
divided by the tensor's RMS displacement over the context (so a tensor that moves 1e-5 and one
that moves 1 look alike), and log(horizon). Output: the displacement to the predicted state in the
same unit, added to the newest state. A tensor that did not move is left where it is. The network
is a `LiteGMN` over the parameter graph (neighbouring neurons' trajectories inform each other,
equivariant to hidden-unit permutations) or, as the baseline, a `LitePerParameterMLP`.

A nowcaster is trained supervised on stored Adam trajectories (no meta-gradients:
``python -m outer_train.nowcast``) and stored as ``nowcaster.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaopt.nn.lite import LiteGMN, LitePerParameterMLP

NOWCAST_FORMAT = "metaopt-nowcaster"
NOWCAST_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "nowcaster.safetensors"
DEFAULT_NOWCASTER_DIR = Path(__file__).parent / "pretrained" / "nowcast"
NETS = {"gmn": LiteGMN, "mlp": LitePerParameterMLP}
TARGET_CLIP = 50.0  # displacements beyond 50 context-RMS units are clipped (training targets and outputs)


class NowcastCheckpointError(ValueError):
    """A nowcaster checkpoint is missing, corrupt, or does not fit this code."""


@dataclass(frozen=True)
class NowcastConfig:
    """kind: "gmn" | "mlp"; hidden: network width; context: states per prediction (>= 2);
    interval: optimizer steps between stored states; horizon: intervals ahead to jump (the
    network reads it, so one network serves several; it was trained on 1..max_horizon);
    max_horizon: the largest horizon seen in training."""

    kind: str = "gmn"
    hidden: int = 32
    context: int = 5
    interval: int = 20
    horizon: int = 5
    max_horizon: int = 10

    def __post_init__(self) -> None:
        if self.kind not in NETS:
            raise ValueError(f"NowcastConfig: kind must be one of {sorted(NETS)}, got {self.kind!r}.")
        if self.context < 2 or self.interval < 1 or self.hidden < 1:
            raise ValueError(f"NowcastConfig: need context >= 2, interval >= 1, hidden >= 1, got "
                             f"{self.context}, {self.interval}, {self.hidden}.")
        if not 1 <= self.horizon <= self.max_horizon:
            raise ValueError(f"NowcastConfig: need 1 <= horizon <= max_horizon, got {self.horizon}, {self.max_horizon}.")

    @property
    def period(self) -> int:
        """Optimizer steps between two jumps."""
        return (self.context - 1) * self.interval + self.interval


def tensor_ids(numels: list[int], device: torch.device | str | None = None) -> Tensor:
    """[E] index of the tensor each flat parameter belongs to."""
    return torch.repeat_interleave(torch.arange(len(numels), device=device), torch.tensor(numels, device=device))


def nowcast_inputs(states: Tensor, tensor_id: Tensor, num_tensors: int, horizon: float) -> tuple[Tensor, Tensor]:
    """``states`` [C, E] (oldest first) -> (inputs [E, C] and the per-parameter unit [E]).

    inputs: (state_i - newest) / unit for the C-1 older states, then log(horizon); unit: the
    tensor's RMS displacement over the context (0 for a tensor that did not move)."""
    newest = states[-1]
    disp = states[:-1] - newest  # [C-1, E]
    total = disp[0]
    sq = torch.zeros(num_tensors, dtype=states.dtype, device=states.device).index_add_(0, tensor_id, total * total)
    count = torch.zeros(num_tensors, dtype=states.dtype, device=states.device).index_add_(
        0, tensor_id, torch.ones_like(total))
    unit = (sq / count.clamp_min(1)).sqrt()[tensor_id]
    safe = torch.where(unit > 0, unit, torch.ones_like(unit))
    x = torch.cat([(disp / safe).t(), torch.full_like(newest, math.log(horizon))[:, None]], dim=1)
    return x, unit


class Nowcaster(nn.Module):
    """Predicts parameters ``horizon`` intervals ahead from the last ``context`` stored states."""

    def __init__(self, config: NowcastConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or NowcastConfig()
        if overrides:
            config = NowcastConfig(**{**asdict(config), **overrides})
        self.config = config
        self.net = NETS[config.kind](hidden=config.hidden, edge_in=config.context, edge_out=1)
        nn.init.zeros_(self.net.out.weight)  # untrained: predicts no move (stays at the newest state)
        nn.init.zeros_(self.net.out.bias)

    def prepare(self, graph: Any, device: torch.device | str) -> Any:
        return self.net.prepare(graph, device)

    def displacement(self, graph: Any, x: Tensor) -> Tensor:
        """[E] predicted displacement in context units (clipped) from inputs [E, C]."""
        return self.net(graph, edge_values=x).edge[:, 0].clamp(-TARGET_CLIP, TARGET_CLIP)

    def forward(self, graph: Any, states: Tensor, tensor_id: Tensor, num_tensors: int,
                horizon: float | None = None) -> Tensor:
        """[E] the predicted parameters (float32) from ``states`` [C, E]."""
        x, unit = nowcast_inputs(states.float(), tensor_id, num_tensors, horizon or self.config.horizon)
        return states[-1].float() + unit * self.displacement(graph, x)

    def with_horizon(self, horizon: int) -> "Nowcaster":
        """The same network jumping ``horizon`` intervals ahead (within the trained 1..max_horizon)."""
        other = Nowcaster(self.config, horizon=horizon)
        other.load_state_dict(self.state_dict())
        return other.train(self.training)

    # ---- checkpoints ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, **info: Any) -> Path:
        """``nowcaster.safetensors`` + ``config.json`` (config, versions, checksum, ``info``: how it was made)."""
        from safetensors.torch import save_file

        from metaopt import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": NOWCAST_FORMAT})
        meta = {"format": NOWCAST_FORMAT, "version": NOWCAST_VERSION, "metaopt_version": __version__,
                "nowcaster": asdict(self.config), "sha256": hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest(),
                **({"info": info} if info else {})}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Nowcaster":
        """Load what `save_pretrained` wrote; every check runs before a weight is applied."""
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise NowcastCheckpointError(f"Nowcaster.from_pretrained: {directory} lacks {CONFIG_FILE} or {WEIGHTS_FILE} "
                                         "(written by Nowcaster.save_pretrained).")
        try:
            meta = json.loads(cfg_path.read_text())
            ok = meta.get("format") == NOWCAST_FORMAT and meta.get("version") == NOWCAST_VERSION
            config = NowcastConfig(**meta["nowcaster"]) if ok else None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NowcastCheckpointError(f"Nowcaster.from_pretrained: {cfg_path} is not a valid nowcaster config ({exc}).") from exc
        if config is None:
            raise NowcastCheckpointError(f"Nowcaster.from_pretrained: {cfg_path} is not a version-{NOWCAST_VERSION} "
                                         f"{NOWCAST_FORMAT} config.")
        data = w_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise NowcastCheckpointError(f"Nowcaster.from_pretrained: {w_path} does not match the checksum in {cfg_path}.")
        from safetensors.torch import load as load_bytes

        nowcaster = cls(config)
        tensors = load_bytes(data)
        expected = {k: tuple(v.shape) for k, v in nowcaster.state_dict().items()}
        if {k: tuple(v.shape) for k, v in tensors.items()} != expected:
            raise NowcastCheckpointError(f"Nowcaster.from_pretrained: {w_path} does not fit a {config.kind} nowcaster "
                                         f"with this config (the network code changed since it was saved).")
        nowcaster.load_state_dict(tensors, strict=True)
        return nowcaster.eval()


def resolve_nowcaster(nowcast: "str | Path | Nowcaster | None") -> Nowcaster | None:
    """None | "default" (the shipped nowcaster) | a directory | a `Nowcaster`."""
    if nowcast is None or isinstance(nowcast, Nowcaster):
        return nowcast
    return Nowcaster.from_pretrained(DEFAULT_NOWCASTER_DIR if str(nowcast) == "default" else nowcast)
