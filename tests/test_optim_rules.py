"""Update rules: the shipped default is a meta-trained GMN lr-scale rule and "adam" the untrained
rule (alpha = 0); checkpoints round-trip; every kind of corruption or mismatch (a version-1
checkpoint included) raises RuleCheckpointError before anything is loaded; the rule-kind registry
takes new kinds end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from metaopt.optim import GMNOptimizer, RuleCheckpointError, RuleConfig, UpdateRule
from metaopt.optim.rules import ADAM_RULE_DIR, DEFAULT_RULE_DIR, RETIRED_RULES
from test_optim_common import mlp, to_graph


def test_shipped_default_is_meta_trained_and_adam_is_the_untrained_rule():
    rule = UpdateRule.default()
    assert rule.config.kind == "gmn" and not rule.is_identity and rule.net is not None
    assert rule.features.version == 2 and rule.features.edge_names()[-1] == "log_lr_scale"
    assert (DEFAULT_RULE_DIR / "train_config.json").is_file()  # how it was trained ships with it
    assert GMNOptimizer(mlp(), lr=1e-3).rule.config.kind == "gmn"  # an lr and no rule: the fixed-lr GMN rule
    meta = json.loads((ADAM_RULE_DIR / "config.json").read_text())
    assert meta["rule"]["alpha"] == 0.0
    assert GMNOptimizer(mlp(), rule="adam").rule.is_identity


@pytest.mark.parametrize("kwargs,keys,times", [
    ({"lr": 1e-3}, ["exp_avg", "exp_avg_sq", "lr_scale"], 3),  # the fixed-lr GMN rule
    ({"rule": "lrfree"}, ["exp_avg", "exp_avg_sq", "grad_sum", "lr_scale", "start", "tensor_grad_sum"], 6),
    ({"rule": "adam", "lr": 1e-3}, ["exp_avg", "exp_avg_sq"], 2),  # exactly Adam: Adam's state
    (RETIRED_RULES["lrfree_base"].kwargs(), ["exp_avg", "exp_avg_sq", "grad_sum", "start", "tensor_grad_sum"], 5),  # 0.5's default
    ({}, ["exp_avg", "exp_avg_sq", "grad_sum", "start"], 4),  # GMNOptimizer(model): lrfree_anchor (mlp()'s tensors all read)
])
def test_optimizer_state_in_parameters(kwargs, keys, times):
    """3x at a fixed lr, 6x lr-free with per-tensor estimates; an identity rule keeps no scale (1x less);
    GMNOptimizer(model) keeps no per-tensor sum (shared sums: 4x where every entry is read)."""
    torch.manual_seed(0)
    model = mlp()
    opt = GMNOptimizer(model, **kwargs)
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    assert sorted(opt._buffers) == sorted([*keys, "step"])
    assert sum(v.numel() for k, v in opt._buffers.items() if k != "step") == times * n
    assert opt.rule_refreshes == (0 if opt.rule.is_identity else 1)
    assert sorted(opt.state_dict()["state"][0]) == sorted([*keys, "step"])


def _alpha_switched_run(alpha_at_construction: float, steps: int = 8, switch_at: int = 3):
    """A linear rule that is the identity (alpha 0) for the first ``switch_at`` steps and 0.5 after."""
    from test_optim_common import linear_rule

    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    rule = linear_rule(alpha=alpha_at_construction, refresh_every=2)
    opt = GMNOptimizer(model, rule=rule, lr=1e-2, graph=to_graph(model))
    with torch.no_grad():
        rule.alpha.fill_(0.0)
    for t in range(steps):
        if t == switch_at:
            with torch.no_grad():
                rule.alpha.fill_(0.5)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_identity_rule_allocates_its_scale_when_it_stops_being_the_identity():
    """Built with an identity rule (no scale buffer), then alpha changes: the scale is allocated as
    ones and the run is bit for bit the one whose optimizer held the scale from the start."""
    lazy_model, lazy = _alpha_switched_run(0.0)
    eager_model, eager = _alpha_switched_run(0.5)
    assert "lr_scale" in lazy._buffers and lazy.rule_refreshes == eager.rule_refreshes > 0
    for p, q in zip(lazy_model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
    torch.testing.assert_close(lazy._buffers["lr_scale"], eager._buffers["lr_scale"], rtol=0, atol=0)
    p0 = next(lazy_model.parameters())
    assert lazy.state[p0]["lr_scale"].untyped_storage().data_ptr() == lazy._buffers["lr_scale"].untyped_storage().data_ptr()


def test_state_saved_with_an_identity_rule_loads_into_a_learned_rule_with_scale_one():
    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    adam = GMNOptimizer(model, rule="adam", lr=1e-2)
    for _ in range(3):
        adam.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        adam.step()
    saved = adam.state_dict()
    assert "lr_scale" not in saved["state"][0]
    learned = GMNOptimizer(model, lr=1e-2)  # the fixed-lr GMN rule
    learned.load_state_dict(saved)
    assert torch.equal(learned._buffers["lr_scale"], torch.ones_like(learned._buffers["exp_avg"]))
    torch.testing.assert_close(learned._buffers["exp_avg_sq"], adam._buffers["exp_avg_sq"], rtol=0, atol=0)
    back = GMNOptimizer(model, rule="adam", lr=1e-2)
    back.load_state_dict(learned.state_dict())  # the scale is dropped: an identity rule has none
    assert "lr_scale" not in back._buffers


def _saved(tmp_path, **kw):
    rule = UpdateRule(RuleConfig(kind="none", alpha=0.25, **kw))
    rule.save_pretrained(tmp_path)
    return rule


def test_round_trip_keeps_config_and_weights(tmp_path):
    rule = _saved(tmp_path, bound=1.5, refresh_every=7)
    back = UpdateRule.from_pretrained(tmp_path)
    assert back.config.to_dict() == rule.config.to_dict()
    assert float(back.alpha.detach()) == 0.25 and back.net is None and back.is_identity
    assert back.config.bound == 1.5 and back.config.refresh_every == 7
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
    "version 1 (residual rule)": (
        lambda p: _rewrite_config(p, lambda c: c.__setitem__("rule_version", 1)),
        "rule_version 1.*version 1 was the per-step residual rule",
    ),
    "bad refresh_every": (lambda p: _rewrite_config(p, lambda c: c["rule"].__setitem__("refresh_every", 0)), "refresh_every"),
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


def test_optimizer_state_of_another_shape_is_refused():
    torch.manual_seed(0)
    model = mlp()
    opt = GMNOptimizer(model, rule="adam")
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg_sq"] = torch.ones(3)
    other = GMNOptimizer(model, rule="adam", graph=to_graph(model))
    with pytest.raises(ValueError, match="exp_avg_sq"):
        other.load_state_dict(sd)


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


# ---- the rule-kind registry --------------------------------------------------------------------
class _PerEdgeNet(torch.nn.Module):
    """A toy rule network: one linear map of each edge's features (no graph structure)."""

    def __init__(self, edge_in: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(edge_in, 1)

    def forward(self, graph, edge_values=None, node_values=None, graph_values=None):
        from types import SimpleNamespace

        return SimpleNamespace(edge=self.lin(edge_values), node=None, graph=None)


def test_registered_rule_kind_works_end_to_end(tmp_path):
    from metaopt.optim import RULE_KINDS, register_rule_kind

    name = "toy_per_edge"
    assert name not in RULE_KINDS
    try:
        register_rule_kind(name)(lambda cfg: _PerEdgeNet(cfg.features.edge_dim))
        with pytest.raises(ValueError, match="already registered"):
            register_rule_kind(name)(lambda cfg: None)
        with pytest.raises(ValueError, match="already registered"):
            register_rule_kind("gmn")(lambda cfg: None)
        torch.manual_seed(0)
        rule = UpdateRule(RuleConfig(kind=name, alpha=0.5))
        assert isinstance(rule.net, _PerEdgeNet) and not rule.is_identity
        model, twin = mlp(), mlp()
        twin.load_state_dict(model.state_dict())
        x = torch.randn(4, 64)
        opt, adam = GMNOptimizer(model, rule=rule, lr=1e-2), GMNOptimizer(twin, rule="adam", lr=1e-2)
        for m, o in ((model, opt), (twin, adam)):
            m(x).pow(2).mean().backward()
            o.step()
        assert opt.rule_refreshes == 1 and opt.rule_fallbacks == 0
        delta = max((p - q).abs().max().item() for p, q in zip(model.parameters(), twin.parameters()))
        assert delta > 1e-5  # the toy network's scale changed the step
        rule.save_pretrained(tmp_path)
        back = UpdateRule.from_pretrained(tmp_path)
        assert back.config.kind == name and torch.equal(back.net.lin.weight, rule.net.lin.weight)
    finally:
        RULE_KINDS.pop(name, None)
    with pytest.raises(ValueError, match="registered rule kind"):
        RuleConfig(kind=name)


def test_a_network_with_the_wrong_output_shape_is_refused():
    from metaopt.optim import RULE_KINDS, register_rule_kind

    class TwoOutputs(_PerEdgeNet):
        def forward(self, graph, edge_values=None, node_values=None, graph_values=None):
            out = super().forward(graph, edge_values)
            out.edge = out.edge.repeat(1, 2)
            return out

    try:
        register_rule_kind("toy_two_outputs")(lambda cfg: TwoOutputs(cfg.features.edge_dim))
        model = mlp()
        opt = GMNOptimizer(model, rule=UpdateRule(RuleConfig(kind="toy_two_outputs", alpha=0.5)))
        model(torch.randn(4, 64)).sum().backward()
        with pytest.raises(RuntimeError, match="expected"):
            opt.step()
    finally:
        RULE_KINDS.pop("toy_two_outputs", None)


def test_relative_lr_rule_reads_each_param_groups_current_lr():
    """With the relative-lr feature the optimizer gives the rule each tensor's group lr as it is at
    the refresh (a scheduler's change counts): a per-parameter rule's scale changes exactly on the
    tensors whose lr changed."""
    from metaopt.optim import FeatureConfig

    def scales(lr_first: float, lr_rest: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = mlp()
        torch.manual_seed(1)
        rule = UpdateRule(RuleConfig(kind="mlp", hidden=8, alpha=0.5, features=FeatureConfig(relative_lr=True)))
        params = list(model.parameters())
        opt = GMNOptimizer(model, rule=rule, lr=1.0,
                           params=[{"params": params[:2], "lr": 1e-3}, {"params": params[2:], "lr": lr_rest}])
        opt.param_groups[0]["lr"] = lr_first  # set after construction, as a scheduler would
        model(torch.randn(2, 64, generator=torch.Generator().manual_seed(2))).sum().backward()
        opt.step()
        return [opt.state[p]["lr_scale"].clone() for p in params]

    base, other = scales(1e-3, 1e-3), scales(1e-1, 1e-3)
    assert not torch.equal(base[0], other[0]) and not torch.equal(base[1], other[1])
    assert all(torch.equal(a, b) for a, b in zip(base[2:], other[2:]))
    assert not torch.equal(scales(1e-3, 1e-2)[2], base[2])


def test_with_features_adds_the_relative_lr_input_without_changing_the_rule():
    """A trained rule continued with the relative-lr feature (rule.init_from + relative_lr) starts out
    computing exactly the scales it computed before, whatever the new column holds; the new column
    is trainable and a feature set that reorders the old inputs is refused."""
    from metaopt.optim import FeatureConfig

    def run(rule: UpdateRule, lr: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = mlp()
        opt = GMNOptimizer(model, rule=rule, lr=lr)
        model(torch.randn(2, 64, generator=torch.Generator().manual_seed(2))).sum().backward()
        opt.step()
        return [opt.state[p]["lr_scale"].clone() for p in model.parameters()]

    old = UpdateRule.default()
    new = old.with_features(FeatureConfig(relative_lr=True))
    assert new.features.edge_names() == old.features.edge_names() + ["log10_lr_over_param_rms"]
    assert new.net.edge_in_proj.weight.shape[1] == old.net.edge_in_proj.weight.shape[1] + 1
    before = run(old, 1e-3)
    for lr in (1e-3, 1e-1):  # the lr moves the new feature, not the scales
        assert all(torch.equal(a, b) for a, b in zip(before, run(new, lr)))
    with torch.no_grad():
        new.net.edge_in_proj.weight[:, -1] = 1.0  # once trained, the new input matters
    assert not all(torch.equal(a, b) for a, b in zip(run(new, 1e-3), run(new, 1e-1)))
    with pytest.raises(ValueError, match="do not start with"):
        new.with_features(FeatureConfig())  # dropping a column is not a widening
    both = new.with_features(FeatureConfig(relative_lr=True, snr=True))  # the snr columns append after it
    assert both.features.edge_names()[-3:] == ["log10_lr_over_param_rms", "adam_ratio", "adam_ratio_tensor_rms"]
    assert all(torch.equal(a, b) for a, b in zip(run(new, 1e-3), run(both, 1e-3)))


def test_meta_training_can_continue_a_rule_with_the_relative_lr_feature(tmp_path):
    from outer_train.config import TrainConfig
    from outer_train.train import build_rule

    cfg = TrainConfig()
    cfg.rule.init_from, cfg.rule.relative_lr = str(DEFAULT_RULE_DIR), True
    rule = build_rule(cfg)
    assert rule.features.relative_lr and rule.config.hidden == UpdateRule.default().config.hidden
    cfg.rule.relative_lr = False  # without the flag the stored rule is taken as it is
    assert not build_rule(cfg).features.relative_lr and build_rule(cfg).config.global_bound == 0.0
    cfg.rule.global_bound = 2.0  # a correction of the lr-free estimate, starting at 0
    rule = build_rule(cfg)
    assert rule.config.global_bound == 2.0 and float(rule.global_gate) == float(rule.global_offset) == 0.0


def test_the_optimizer_takes_the_rules_default_lr_unless_given(tmp_path):
    rule = UpdateRule(RuleConfig(kind="gmn", hidden=4, default_lr=3e-3))
    rule.save_pretrained(tmp_path / "r")
    loaded = UpdateRule.from_pretrained(tmp_path / "r")
    assert loaded.config.default_lr == 3e-3
    assert GMNOptimizer(mlp(), rule=tmp_path / "r").defaults["lr"] == 3e-3
    assert GMNOptimizer(mlp(), rule=loaded, lr=1e-4).defaults["lr"] == 1e-4  # an explicit lr wins
    assert GMNOptimizer(mlp(), rule="adam").defaults["lr"] == 1e-3  # exactly torch Adam's default
    meta = json.loads((tmp_path / "r" / "config.json").read_text())
    del meta["rule"]["default_lr"]  # a rule saved before default_lr existed: Adam's 1e-3
    (tmp_path / "r" / "config.json").write_text(json.dumps(meta))
    assert UpdateRule.from_pretrained(tmp_path / "r").config.default_lr == 1e-3
    with pytest.raises(ValueError, match="default_lr"):
        RuleConfig(default_lr=0.0)


def test_horizon_rule_reads_the_optimizers_total_steps():
    """With the horizon features the optimizer gives the rule the fraction of ``total_steps`` done: a
    trained rule widened with them computes exactly what it did (new columns at zero) whatever the
    total; once those columns carry weight the total changes the scale; state_dict keeps the total."""
    from metaopt.optim import FeatureConfig

    def run(rule: UpdateRule, total: int | None) -> tuple[list[torch.Tensor], GMNOptimizer]:
        torch.manual_seed(0)
        model = mlp()
        opt = GMNOptimizer(model, rule=rule, total_steps=total)
        model(torch.randn(2, 64, generator=torch.Generator().manual_seed(2))).sum().backward()
        opt.step()
        return [opt.state[p]["lr_scale"].clone() for p in model.parameters()], opt

    old = UpdateRule.default()
    new = old.with_features(FeatureConfig(horizon=True))
    assert new.features.graph_names() == old.features.graph_names() + ["training_fraction", "horizon_known"]
    before, _ = run(old, None)
    for total in (None, 2, 1000):
        assert all(torch.equal(a, b) for a, b in zip(before, run(new, total)[0]))
    with torch.no_grad():
        new.net.graph_proj.weight[:, -2:] = 1.0
    short, opt = run(new, 2)
    assert not all(torch.equal(a, b) for a, b in zip(short, run(new, 1000)[0]))
    assert not all(torch.equal(a, b) for a, b in zip(short, run(new, None)[0]))
    assert opt.total_steps == 2
    resumed = GMNOptimizer(mlp(), rule=new)
    assert resumed.total_steps == 0
    resumed.load_state_dict(opt.state_dict())
    assert resumed.total_steps == 2


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_total_steps_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        GMNOptimizer(mlp(), total_steps=bad)


def test_meta_training_can_continue_a_rule_with_the_horizon_features():
    from outer_train.config import TrainConfig
    from outer_train.train import build_rule

    cfg = TrainConfig()
    cfg.rule.init_from, cfg.rule.horizon = str(DEFAULT_RULE_DIR), True
    rule = build_rule(cfg)
    assert rule.features.horizon and not rule.features.relative_lr
    cfg.rule.relative_lr = True
    both = build_rule(cfg)
    assert both.features.horizon and both.features.relative_lr


def test_meta_training_can_continue_a_rule_with_the_snr_features():
    """rule.snr with rule.init_from: the stored rule gains the two snr columns (zero weights, so it
    computes what it did), and meta.train = 'new_inputs' trains exactly those columns."""
    from outer_train.config import TrainConfig
    from outer_train.train import build_rule, trainable_mask

    cfg = TrainConfig()
    cfg.rule.init_from, cfg.rule.snr, cfg.meta.train = str(DEFAULT_RULE_DIR), True, "new_inputs"
    rule = build_rule(cfg)
    assert rule.features.snr and rule.features.edge_names()[-2:] == ["adam_ratio", "adam_ratio_tensor_rms"]
    mask = trainable_mask(cfg, rule)
    assert int(mask.sum()) == 2 * rule.net.edge_in_proj.weight.shape[0]
    assert torch.equal(rule.net.edge_in_proj.weight[:, -2:], torch.zeros_like(rule.net.edge_in_proj.weight[:, -2:]))
