"""Model builders: plain nn.Modules that metaopt.to_graph converts, each rebuilt from a JSON-able spec."""

from .cnn import ConvNet, ResidualConvBlock
from .deepsets import DeepSets
from .layers import ACTIVATIONS, CONV_NORMS, Sine, make_activation
from .mlp import MLP
from .resnet import BasicBlock, ResNet
from .siren import SIREN
from .specs import (
    MODEL_REGISTRY,
    CNNSpec,
    DeepSetsSpec,
    MLPSpec,
    ModelSpec,
    ResNetSpec,
    SIRENSpec,
    TransformerLMSpec,
    ViTSpec,
    build_model,
    count_params,
    resnet18_spec,
    spec_from_dict,
    spec_from_json,
    spec_to_dict,
    spec_to_json,
)
from .transformer_lm import TransformerLM
from .vit import ViT

__all__ = [
    "ACTIVATIONS", "BasicBlock", "CNNSpec", "CONV_NORMS", "ConvNet", "DeepSets", "DeepSetsSpec", "MLP", "MLPSpec",
    "MODEL_REGISTRY", "ModelSpec", "ResNet", "ResNetSpec", "ResidualConvBlock", "SIREN", "SIRENSpec", "Sine",
    "TransformerLM", "TransformerLMSpec", "ViT", "ViTSpec", "build_model", "count_params", "make_activation",
    "resnet18_spec", "spec_from_dict", "spec_from_json", "spec_to_dict", "spec_to_json",
]
