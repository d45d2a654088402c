"""Update rules: the shipped default is a meta-trained GMN rule and "adam" the untrained residual;
checkpoints round-trip and
every kind of corruption or mismatch raises RuleCheckpointError before anything is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from metaopt.optim import GMNOptimizer, RuleCheckpointError, RuleConfig, UpdateRule
from metaopt.optim.rules import ADAM_RULE_DIR, DEFAULT_RULE_DIR
from test_optim_common import mlp, to_graph


def test_shipped_default_is_meta_trained_and_adam_is_the_untrained_residual():
    rule = UpdateRule.default()
    assert rule.config.kind == "gmn" and not rule.is_identity and rule.config.residual_scale == "adam"
    assert rule.features.momentum_decays == (0.99,)  # optimizer state 3x the parameters
    assert (DEFAULT_RULE_DIR / "train_config.json").is_file()  # how it was trained ships with it
    assert GMNOptimizer(mlp()).rule.config.kind == "gmn"
    meta = json.loads((ADAM_RULE_DIR / "config.json").read_text())
    assert meta["rule"]["alpha"] == 0.0
    assert GMNOptimizer(mlp(), rule="adam").rule.is_identity


def _saved(tmp_path, **kw):
    rule = UpdateRule(RuleConfig(kind="none", alpha=0.25, **kw))
    rule.save_pretrained(tmp_path)
    return rule


def test_round_trip_keeps_config_and_weights(tmp_path):
    rule = _saved(tmp_path, beta=0.2)
    back = UpdateRule.from_pretrained(tmp_path)
    assert back.config.to_dict() == rule.config.to_dict()
    assert float(back.alpha.detach()) == 0.25 and back.net is None and back.is_identity
    opt = GMNOptimizer.from_pretrained(tmp_path, mlp(), lr=3e-3)
    assert float(opt.rule.alpha.detach()) == 0.25 and opt.param_groups[0]["lr"] == 3e-3


def _rewrite_config(tmp_path, fn):
    cfg = json.loads((tmp_path / "config.json").read_text())
    fn(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))


def _resave_weights(tmp_path, tensors):
    import hashlib

    save_file(tensors, str(tmp_path / "rule.safetensors"))
    digest = hashlib.sha256((tmp_path / "rule.safetensors").read_bytes()).hexdigest()
    _rewrite_config(tmp_path, lambda c: c.__setitem__("sha256", digest))


CORRUPTIONS = {
    "missing weights": (lambda p: (p / "rule.safetensors").unlink(), "does not exist"),
    "missing dir": (lambda p: [f.unlink() for f in p.iterdir()], "does not exist"),
    "bad json": (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    "wrong format": (lambda p: _rewrite_config(p, lambda c: c.__setitem__("format", "x")), "not a metaopt"),
    "future version": (lambda p: _rewrite_config(p, lambda c: c.__setitem__("rule_version", 99)), "rule_version 99"),
    "unknown kind": (lambda p: _rewrite_config(p, lambda c: c["rule"].__setitem__("kind", "lstm")), "kind must be"),
    "feature version": (
        lambda p: _rewrite_config(p, lambda c: c["rule"]["features"].__setitem__("version", 0)),
        "feature version",
    ),
    "feature names": (
        lambda p: _rewrite_config(p, lambda c: c["rule"]["features"]["names"]["edge"].reverse()),
        "wrong inputs",
    ),
    "flipped byte": (
        lambda p: (p / "rule.safetensors").write_bytes(
            (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]))((p / "rule.safetensors").read_bytes())
        ),
        "checksum",
    ),
    "truncated weights": (
        lambda p: _resave_weights_raw(p, (p / "rule.safetensors").read_bytes()[:20]),
        "cannot read",
    ),
    "extra tensor": (
        lambda p: _resave_weights(p, {"alpha": torch.tensor(0.1), "net.w": torch.zeros(2)}),
        "unexpected \\['net.w'\\]",
    ),
    "wrong shape": (lambda p: _resave_weights(p, {"alpha": torch.zeros(2)}), "wrong shape"),
}


def _resave_weights_raw(tmp_path, data):
    import hashlib

    (tmp_path / "rule.safetensors").write_bytes(data)
    _rewrite_config(tmp_path, lambda c: c.__setitem__("sha256", hashlib.sha256(data).hexdigest()))


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_or_mismatched_checkpoint_raises_clearly(tmp_path, name):
    _saved(tmp_path)
    corrupt, message = CORRUPTIONS[name]
    corrupt(tmp_path)
    with pytest.raises(RuleCheckpointError, match=message):
        UpdateRule.from_pretrained(tmp_path)
    with pytest.raises(RuleCheckpointError):
        GMNOptimizer.from_pretrained(tmp_path, mlp())


def test_state_dict_of_a_rule_with_other_momenta_is_refused():
    torch.manual_seed(0)
    model = mlp()
    opt = GMNOptimizer(model, rule="adam")
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    other = GMNOptimizer(
        model, rule=UpdateRule(RuleConfig(kind="none", features={"momentum_decays": [0.9]})), graph=to_graph(model)
    )
    with pytest.raises(ValueError, match="decays"):
        other.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("kind", ["gmn", "mlp"])
def test_network_rules_round_trip_bit_exactly(tmp_path, kind):
    rule = UpdateRule(RuleConfig(kind=kind, hidden=16, layers=2, alpha=0.1))
    rule.save_pretrained(tmp_path)
    back = UpdateRule.from_pretrained(tmp_path)
    sd, sd2 = rule.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    _rewrite_config(tmp_path, lambda c: c["rule"].__setitem__("hidden", 8))
    with pytest.raises(RuleCheckpointError, match="wrong shape"):
        UpdateRule.from_pretrained(tmp_path)
