"""Fit many SIRENs at once: one per image, vmapped over `functional_call` + `grad`, batched Adam.

Every INR in a batch has the same architecture, so parameters are stacked along a leading batch
dimension and one vmapped gradient call serves all of them; Adam is written in plain tensor ops on
the stacked tensors (no per-INR optimizer objects, no Python loop over INRs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from inner_tasks.models.specs import SIRENSpec, build_model


@dataclass(frozen=True)
class FitConfig:
    """How each SIREN is fitted: Adam with a cosine-decayed learning rate on the pixel MSE."""

    steps: int = 300
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def pixel_coords(height: int, width: int) -> Tensor:
    """[H * W, 2] coordinates (x = column, y = row) on linspace(-1, 1), row-major pixel order.

    The same convention is written to the INR set's JSON so readers can render without this code.
    """
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def images_to_targets(images: Tensor) -> Tensor:
    """[B, C, H, W] images -> [B, H * W, C] per-pixel targets in `pixel_coords` order."""
    b, c, h, w = images.shape
    return images.reshape(b, c, h * w).transpose(1, 2).contiguous()


def init_stacked(spec: SIRENSpec, seeds: list[int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """A template SIREN plus its parameters for every seed stacked as ``{name: [B, *shape]}``.

    Each INR's init is exactly `build_model(spec, seed)`, so an INR can be re-created from its seed.
    """
    if not seeds:
        raise ValueError("init_stacked: no seeds given")
    models = [build_model(spec, seed=s) for s in seeds]
    names = [n for n, _ in models[0].named_parameters()]
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}
    return models[0], stacked


def psnr(mse: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, peak]; mse is clamped at 1e-12 (120 dB cap)."""
    return 10.0 * torch.log10(peak**2 / mse.clamp(min=1e-12))


def fit_sirens(
    spec: SIRENSpec, images: Tensor, seeds: list[int], cfg: FitConfig = FitConfig()
) -> tuple[dict[str, Tensor], Tensor]:
    """Fit one SIREN per image ``[B, C, H, W]`` (values in [0, 1]) from the given init seeds.

    Returns the fitted parameters ``{name: [B, *shape]}`` and each INR's final pixel MSE ``[B]``.
    """
    if images.dim() != 4:
        raise ValueError(f"fit_sirens: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] != len(seeds):
        raise ValueError(f"fit_sirens: {images.shape[0]} images but {len(seeds)} seeds; pass one seed per image")
    if images.shape[1] != spec.out_features:
        raise ValueError(
            f"fit_sirens: images have {images.shape[1]} channels but the SIREN outputs {spec.out_features}; "
            "set SIRENSpec.out_features to the channel count"
        )
    template, params = init_stacked(spec, seeds)
    coords = pixel_coords(images.shape[2], images.shape[3])
    targets = images_to_targets(images.float())

    def loss_one(p: dict[str, Tensor], target: Tensor) -> Tensor:
        return ((functional_call(template, p, (coords,)) - target) ** 2).mean()

    grad_all = vmap(grad(loss_one))
    loss_all = vmap(loss_one)
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2 = cfg.betas
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / cfg.steps))
        grads = grad_all(params, targets)
        c1, c2 = 1.0 - b1**step, 1.0 - b2**step
        for k in params:
            m[k].mul_(b1).add_(grads[k], alpha=1.0 - b1)
            v2[k].mul_(b2).addcmul_(grads[k], grads[k], value=1.0 - b2)
            params[k].sub_(lr * (m[k] / c1) / ((v2[k] / c2).sqrt() + cfg.eps))
    with torch.no_grad():
        mse = loss_all(params, targets)
    return params, mse
