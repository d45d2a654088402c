"""torchvision's model *definitions*, for tests and benchmarks only (the runtime never imports it).

Why this loader: `import torchvision` runs `torchvision/__init__.py`, which loads the C++ ops
library and registers fake kernels for `torchvision::nms` & co. PyPI's torchvision wheel is a CUDA
build, so against a CPU torch the library fails to load and the registration raises
(`operator torchvision::nms does not exist`). The model definitions (resnet, convnext, vit, ...)
are pure Python and never call those ops, so we import the `torchvision.models` subpackage under
an empty parent package: the package's files, none of its native start-up. Where torchvision
imports normally (a matching build), the normal import is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def load_models() -> Any | None:
    """The `torchvision.models` module, or None when torchvision is not installed."""
    spec = importlib.util.find_spec("torchvision")  # finds the package without running it
    if spec is None or spec.submodule_search_locations is None:
        return None
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    try:
        return importlib.import_module("torchvision.models")
    except Exception:  # the native start-up failed: retry without it
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    parent = types.ModuleType("torchvision")
    parent.__path__ = list(spec.submodule_search_locations)
    parent.__spec__ = spec
    parent.__file__ = spec.origin
    sys.modules["torchvision"] = parent
    return importlib.import_module("torchvision.models")


# Named definitions small enough for the default suite (full list: `all_names`, slow tests).
SMALL = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "mnasnet0_5",
         "efficientnet_b0", "regnet_x_400mf", "googlenet"]


def all_names(models: Any) -> list[str]:
    """Every classification model definition torchvision ships."""
    return sorted(models.list_models(module=models))


def input_size(name: str) -> int:
    """The smallest image side the definition accepts (its asserts and pooling fix some)."""
    if name.startswith(("vit_", "maxvit")):
        return 224  # an image-size assert (vit) / fixed partition grid (maxvit)
    if name == "inception_v3":
        return 299
    if name.startswith(("swin", "googlenet", "alexnet", "squeezenet")):
        return 64
    return 32


def build(models: Any, name: str, num_classes: int = 10) -> Any:
    """An initialised model (definitions only: no weights are downloaded)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    return models.get_model(name, weights=None, **kwargs)


MAX_PARAMS = 350e6  # a 630M-parameter graph needs ~15 GB: more than a 24 GB machine can spare


def count_params(models: Any, name: str) -> int:
    """Parameters of a definition, counted on the meta device where its constructor allows."""
    import torch

    try:
        with torch.device("meta"):  # no memory for the 600M-parameter definitions
            return sum(p.numel() for p in build(models, name).parameters())
    except Exception:  # constructors computing with tensors (RegNet's widths) need real ones
        return sum(p.numel() for p in build(models, name).parameters())


def small_configs(models: Any) -> dict[str, tuple[Any, int]]:
    """Tiny instances of the transformer / channels-last definitions: (model, image side)."""
    from torchvision.models.convnext import CNBlockConfig

    return {
        "vit_tiny": (models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                              hidden_dim=32, mlp_dim=64, num_classes=10), 32),
        "convnext_tiny_cfg": (models.ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 1)],
                                              num_classes=10), 32),
        "swin_tiny_cfg": (models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2],
                                                 num_heads=[2, 4], window_size=[4, 4], num_classes=10), 32),
    }
