"""Rules shipped in the package: "adam" is exactly Adam; "default" (GMN) and "mlp" (the per-parameter
baseline) are meta-trained lr-scale rules that load, change the update and train; "lrfree_anchor", what
GMNOptimizer(model) runs, is the shipped lr-free mode with no rule, "lrfree_boost1" 0.10's, "lrfree_sf" the
schedule-free mode, and "lrfree" the GMN rule meta-trained in 0.5's mode; the names of earlier releases are
gone (those of 0.5-0.9's defaults refused with the call that runs them)."""

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from metaopt import GMNOptimizer
from metaopt.optim import RuleCheckpointError, RuleConfig, UpdateRule, core
from metaopt.optim import make_default
from metaopt.optim.make_default import LR_FREE_RULE_DIR, write_lr_free_rule
from metaopt.optim.rules import PRETRAINED_DIR, RETIRED_RULES, shipped_rules
from training_loop import train_losses


def _train(opt_fn, steps=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    opt = opt_fn(model)  # may draw random numbers (rule init): after the data
    return model, train_losses(model, opt, nn.functional.cross_entropy, x, y, steps)


def test_named_rules_are_listed():
    assert set(shipped_rules()) == {"default", "lrfree", "lrfree_boost1", "lrfree_anchor", "lrfree_soap",
                                   "lrfree_soap_1e4", "lrfree_sf", "adam", "mlp"}
    assert UpdateRule.from_pretrained(PRETRAINED_DIR / "mlp").config.kind == "mlp"


@pytest.mark.parametrize("name", ["gmn-cpu-v0", "mlp-cpu-v0", "mlp-cpu-v1"])
def test_removed_rule_names_are_refused(name):
    with pytest.raises(RuleCheckpointError, match="does not exist"):
        GMNOptimizer(nn.Linear(2, 2), rule=name)


def test_meta_trained_rules_load_and_change_the_update():
    adam, _ = _train(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, foreach=True))
    exact, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr=1e-2))
    for a, b in zip(adam.parameters(), exact.parameters()):
        assert torch.equal(a, b), 'rule="adam" is exactly Adam'
    for name in ("default", "mlp"):
        opts = []
        learned, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule=name, lr=1e-2)) or opts[-1])
        assert opts[0].rule_refreshes == 1 and opts[0].rule_fallbacks == 0  # refreshed on step 1 only (k = 100)
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0]
        diff = max((a - b).abs().max().item() for a, b in zip(adam.parameters(), learned.parameters()))
        assert diff > 1e-6, f"{name}: a meta-trained rule must differ from Adam"


SHIPPED_MODE = {"estimate_every": 10, "per_tensor": 0.7}  # lrfree_base's (0.5's default), the lr-free GMN rule's
LEAN_MODE = {**SHIPPED_MODE, "estimate_stride": 3, "shared_sums": True}  # GMNOptimizer(model)'s in 0.6
SETTLED_MODE = {**LEAN_MODE, "settled_growth_rate": 1.02}  # GMNOptimizer(model)'s in 0.7
PLATEAU_MODE = {**SETTLED_MODE, "plateau_block": 500}  # GMNOptimizer(model)'s in 0.8
BOOST_MODE = {**PLATEAU_MODE, "plateau_boost": True}  # ... in 0.9 (at most core.PLATEAU_BOOST_MAX = 2 doublings)
BOOST1_MODE = {**PLATEAU_MODE, "plateau_boost": 1}  # ... in 0.10 (one doubling)
ANCHOR_MODE = {**BOOST1_MODE, "plateau_anchor": True}  # ... since 0.11 (the doubling of the step at its grant)
DEFAULT_MODE = {**ANCHOR_MODE, "d0": 1e-4}  # ... since 0.17 (the estimate from 1e-4; its switch after 150 steps held)


@pytest.mark.parametrize("rule", [None, "lrfree"])
def test_nothing_passed_runs_the_lr_free_base_and_the_gmn_rule_runs_in_the_same_mode(rule):
    """GMNOptimizer(model): rule="lrfree_soap_1e4" (no learned rule, no refresh), lr-free with the options it
    records (lrfree_anchor's from d0=1e-4), the lr a multiplier of 1; rule="lrfree" (the GMN rule) in 0.5's mode
    (every entry, a sum per tensor), refreshed on step 1; the loss goes down and the estimate grows from d0."""
    opts = []
    _, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule=rule)) or opts[-1], steps=60)
    opt = opts[0]
    assert opt.rule.config.lr_free == (DEFAULT_MODE if rule is None else SHIPPED_MODE)
    assert opt.d0 == (1e-4 if rule is None else core.D0)
    assert opt.plateau_block == (500 if rule is None else 0) and opt.plateau_boost == (1 if rule is None else 0)
    assert opt.plateau_anchor == (rule is None)
    assert opt.rule.is_identity == (rule is None) and opt.rule.config.kind == ("none" if rule is None else "gmn")
    assert opt.lr_free and opt.param_groups[0]["lr"] == 1.0
    assert (opt.estimate_every, opt.estimate_stride, opt.per_tensor) == (10, 3 if rule is None else 1, 0.7)
    assert opt.shared_sums == (rule is None) and opt.settled_growth_rate == (1.02 if rule is None else math.inf)
    assert opt.distance > 10 * opt.d0 and opt.rule_fallbacks == 0 and opt.rule_refreshes == (rule is not None)
    assert losses[-1] < 0.5 * losses[0]


def test_an_lr_picks_the_fixed_lr_rule_and_explicit_choices_win():
    """With an lr and no rule: the fixed-lr GMN rule at that lr (as before the lr-free default);
    lr_free=False alone: that rule at its default lr; rule="adam": Adam; an option passed overrides the
    rule's mode; lr_free=False runs even the lr-free rule at a fixed lr, and options then are refused."""
    model = nn.Linear(4, 2)
    fixed = GMNOptimizer(model, lr=3e-3)
    assert not fixed.lr_free and fixed.rule.config.lr_free is None and fixed.param_groups[0]["lr"] == 3e-3
    assert fixed.rule.config.to_dict() == UpdateRule.default().config.to_dict()
    plain = GMNOptimizer(model, lr_free=False)
    assert not plain.lr_free and plain.param_groups[0]["lr"] == UpdateRule.default().config.default_lr
    assert not GMNOptimizer(model, rule="adam").lr_free
    own = GMNOptimizer(model, per_tensor=0.0, estimate_every=5)
    assert own.lr_free and (own.per_tensor, own.estimate_every, own.estimate_stride) == (0.0, 5, 3)
    assert not own.shared_sums  # the default's recorded shared sums: nothing to share without per-tensor estimates
    prodigy = GMNOptimizer(model, rule="adam", lr_free=True)  # a rule without a mode: plain Prodigy's options
    assert (prodigy.per_tensor, prodigy.estimate_every, prodigy.estimate_stride) == (0.0, 1, 1)
    at_lr = GMNOptimizer(model, rule="lrfree", lr_free=False, lr=1e-3)
    assert not at_lr.lr_free and at_lr.per_tensor == 0.0
    with pytest.raises(ValueError, match="pass lr_free=True"):
        GMNOptimizer(model, rule="lrfree", lr_free=False, per_tensor=0.7)
    with pytest.raises(TypeError, match="lr_free"):
        GMNOptimizer(model, lr_free="yes")


def test_an_lr_with_lr_free_scales_the_default_step():
    """GMNOptimizer(model, lr=0.25, lr_free=True): the lr-free default (rule="lrfree_soap_1e4", its mode) with the lr a
    multiplier of the estimated step, bit for bit the named rule at that lr; without lr_free=True an lr still
    picks the fixed-lr GMN rule."""
    opts = []
    scaled, losses = _train(lambda m: opts.append(GMNOptimizer(m, lr=0.25, lr_free=True)) or opts[-1], steps=40)
    named, _ = _train(lambda m: GMNOptimizer(m, rule="lrfree_soap_1e4", lr=0.25), steps=40)
    full, _ = _train(GMNOptimizer, steps=40)
    opt = opts[0]
    assert opt.lr_free and opt.rule.is_identity and opt.rule.config.lr_free == DEFAULT_MODE
    assert opt.param_groups[0]["lr"] == 0.25 and losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(scaled.parameters(), named.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(scaled.parameters(), full.parameters()))
    assert GMNOptimizer(nn.Linear(2, 2), lr=0.25).rule.config.kind == "gmn"


def test_a_small_lr_for_the_lr_free_rule_warns_and_spike_guard_needs_per_tensor_off():
    """rule="lrfree" with lr=1e-3 (likely meant as Adam's lr) runs lr-free at a 1000x smaller step and
    says so; a multiplier near 1 or an explicit lr_free=True does not warn. GMNOptimizer(model, lr=3) runs the
    fixed-lr rule at lr 3 (blowing up) and says how to scale the default's step instead. The spike guard does not go
    with per-tensor estimates: the error names the rule's mode and the way out."""
    model = nn.Linear(4, 2)
    with pytest.warns(UserWarning, match="lr multiplies the estimated step"):
        opt = GMNOptimizer(model, rule="lrfree", lr=1e-3)
    assert opt.lr_free and opt.param_groups[0]["lr"] == 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GMNOptimizer(model, rule="lrfree", lr=0.5)
        GMNOptimizer(model, rule="lrfree", lr=1e-3, lr_free=True)
    with pytest.warns(UserWarning, match="pass lr_free=True"):  # meant as a multiplier of GMNOptimizer(model)'s step
        assert not GMNOptimizer(model, lr=3.0).lr_free
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GMNOptimizer(model, lr=1e-2)  # an Adam-sized lr for the fixed-lr rule
        GMNOptimizer(model, lr=3.0, lr_free=True)
        GMNOptimizer(model, lr=3.0, lr_free=False)  # asked for in so many words
    with pytest.raises(ValueError, match="rule's lr-free mode.*per_tensor=0"):
        GMNOptimizer(model, spike_guard=3.0)
    assert GMNOptimizer(model, spike_guard=3.0, per_tensor=0.0).spike_guard == 3.0


def test_the_mode_round_trips_and_bad_modes_are_refused(tmp_path):
    """RuleConfig.lr_free is stored in config.json and read back; a rule saved without it is a fixed-lr
    rule; unknown option names are refused. The shipped lr-free rule is its source rule's weights with
    the mode recorded (make_default's writer reproduces it)."""
    rule = UpdateRule(RuleConfig(kind="mlp", hidden=4)).with_lr_free({"estimate_every": 4})
    back = UpdateRule.from_pretrained(rule.save_pretrained(tmp_path / "r"))
    assert back.config.lr_free == {"estimate_every": 4}
    assert UpdateRule.from_pretrained(PRETRAINED_DIR / "mlp").config.lr_free is None
    with pytest.raises(ValueError, match="lr_free"):
        RuleConfig(lr_free={"lr": 1.0})
    shipped = UpdateRule.from_pretrained(LR_FREE_RULE_DIR)
    source = tmp_path / "source"
    shipped.with_lr_free(None).save_pretrained(source)
    shutil.copy2(LR_FREE_RULE_DIR / "train_config.json", source / "train_config.json")
    out = write_lr_free_rule(source, SHIPPED_MODE, tmp_path / "lrfree")
    again = UpdateRule.from_pretrained(out)
    assert again.config.to_dict() == shipped.config.to_dict() and (out / "train_config.json").is_file()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(ValueError, match="options"):
        write_lr_free_rule(source, {}, tmp_path / "empty")


def test_lrfree_sf_is_the_default_mode_schedule_free(tmp_path):
    """rule="lrfree_sf": the default's lr-free mode run schedule-free, i.e. GMNOptimizer(model, rule="adam",
    lr_free=True, estimate_every=10, per_tensor=0.7, schedule_free=True) bit for bit; make_default's command
    line (--schedule-free) reproduces the directory from the "adam" rule."""
    opts = []
    named, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule="lrfree_sf")) or opts[-1], steps=40)
    explicit, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr_free=True, schedule_free=True, **SHIPPED_MODE),
                         steps=40)
    opt = opts[0]
    assert opt.schedule_free and opt.lr_free and opt.estimate_every == 10 and opt.per_tensor == 0.7
    assert losses[-1] < losses[0]
    for a, b in zip(named.parameters(), explicit.parameters()):
        assert torch.equal(a, b)
    make_default.main(["--lr-free-from", str(PRETRAINED_DIR / "adam"), "--estimate-every", "10", "--per-tensor", "0.7",
                       "--schedule-free", "--out", str(tmp_path / "sf")])
    written, shipped = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "sf", PRETRAINED_DIR / "lrfree_sf"))
    assert {**written, "metaopt_version": None} == {**shipped, "metaopt_version": None}


RETIRED_DIR = Path(__file__).resolve().parents[1] / "docs" / "figures" / "optim" / "retired_rules"
LEAN_ARGS = ["--estimate-every", "10", "--per-tensor", "0.7", "--estimate-stride", "3", "--shared-sums"]
# The defaults of 0.5-0.9, retired as rule names in 0.12: their options, make_default's command line for their
# directory (kept in the repository), and whether their first 60 steps must be GMNOptimizer(model)'s (the
# plateau decay acts from step 1,000 on, so 0.7's mode and every later one agree before it).
RETIRED = {
    "lrfree_base": (SHIPPED_MODE, ["--estimate-every", "10", "--per-tensor", "0.7"], False),
    "lrfree_lean": (LEAN_MODE, LEAN_ARGS, False),
    "lrfree_settled": (SETTLED_MODE, [*LEAN_ARGS, "--settled-growth-rate", "1.02"], True),
    "lrfree_plateau": (PLATEAU_MODE, [*LEAN_ARGS, "--settled-growth-rate", "1.02", "--plateau-block", "500"], True),
    "lrfree_boost": (BOOST_MODE, [*LEAN_ARGS, "--settled-growth-rate", "1.02", "--plateau-block", "500",
                                  "--plateau-boost"], True),
}


def test_the_retired_names_are_the_ones_listed():
    assert set(RETIRED_RULES) == set(RETIRED) and not set(RETIRED) & set(shipped_rules())
    assert sorted(p.name for p in RETIRED_DIR.iterdir()) == sorted(RETIRED)


@pytest.mark.parametrize("name", sorted(RETIRED))
def test_a_retired_name_is_refused_with_the_call_that_runs_it(name, tmp_path):
    """rule="lrfree_plateau" and the other defaults of 0.5-0.9 raise a ValueError that gives the call running
    the same optimizer; that call (rule="adam" with RETIRED_RULES[name].options) runs the retired directory,
    kept in the repository, bit for bit (as the name did), and make_default's command line reproduces the
    directory from the "adam" rule."""
    mode, args, as_default = RETIRED[name]
    retired = RETIRED_RULES[name]
    assert retired.options == mode and retired.kwargs(plateau_block=7)["plateau_block"] == 7
    with pytest.raises(TypeError):
        retired.options["estimate_every"] = 1  # the shared table is read-only
    with pytest.raises(ValueError, match=f"removed in 0.12.*{re.escape(retired.call())}"):
        GMNOptimizer(nn.Linear(2, 2), rule=name)
    opts = []
    stored, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule=RETIRED_DIR / name)) or opts[-1], steps=60)
    called, _ = _train(lambda m: eval(retired.call(), {"GMNOptimizer": GMNOptimizer, "model": m}), steps=60)
    default, _ = _train(lambda m: GMNOptimizer(m, d0=1e-6), steps=60)  # the estimate's start of 0.5-0.16
    assert opts[0].rule.is_identity and opts[0].rule_refreshes == 0 and losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(stored.parameters(), called.parameters()))
    if as_default:
        assert all(torch.equal(a, c) for a, c in zip(stored.parameters(), default.parameters()))
    make_default.main(["--lr-free-from", str(PRETRAINED_DIR / "adam"), *args, "--out", str(tmp_path / name)])
    written, kept = (json.loads((d / "config.json").read_text()) for d in (tmp_path / name, RETIRED_DIR / name))
    assert {**written, "metaopt_version": None} == {**kept, "metaopt_version": None}


def test_the_lean_state():
    """0.6's estimate (kept by every later default): the tensors' estimates read the network's gradient sum and
    x_0, and the sum holds every 3rd entry of each large tensor; the state is at most 2x + 2/3x the parameters
    on large tensors (4x where every tensor is read whole)."""
    opts = []
    named, _ = _train(lambda m: opts.append(GMNOptimizer(m, rule="adam", lr_free=True, **LEAN_MODE)) or opts[-1])
    numel = sum(p.numel() for p in named.parameters())
    assert sum(v.numel() for k, v in opts[0]._buffers.items() if k != "step") == 4 * numel  # tensors < 1,024
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))  # weights read every 3rd entry
    lean = GMNOptimizer(big)
    big(torch.randn(4, 128)).sum().backward()
    lean.step()
    sizes = [p.numel() for p in big.parameters()]
    sampled = sum(-(-n // k) for n, k in zip(sizes, core.tensor_strides(tuple(sizes), 3, True)))
    state = sum(v.numel() for k, v in lean._buffers.items() if k != "step")
    assert state == 2 * sum(sizes) + 2 * sampled and state / sum(sizes) < 2.0 + 2.0 / 3.0 + 0.02


def test_lrfree_boost1_is_the_boost_with_one_doubling(tmp_path):
    """rule="lrfree_boost1" (GMNOptimizer(model) in 0.10): 0.9's mode with plateau_boost=1, i.e.
    GMNOptimizer(model, rule="adam", lr_free=True, ..., plateau_boost=1) bit for bit, and 0.9's bit for bit
    before a second doubling can come (step 1,500); make_default's command line reproduces the directory."""
    opts = []
    named, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule="lrfree_boost1")) or opts[-1], steps=60)
    explicit, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr_free=True, **BOOST1_MODE), steps=60)
    twice, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr_free=True, **BOOST_MODE), steps=60)
    assert opts[0].plateau_boost == 1 and losses[-1] < losses[0]
    for a, b, c in zip(named.parameters(), explicit.parameters(), twice.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    make_default.main(["--lr-free-from", str(PRETRAINED_DIR / "adam"), "--estimate-every", "10", "--per-tensor", "0.7",
                       "--estimate-stride", "3", "--shared-sums", "--settled-growth-rate", "1.02",
                       "--plateau-block", "500", "--plateau-boost", "1", "--out", str(tmp_path / "boost1")])
    written, shipped = (json.loads((d / "config.json").read_text())
                        for d in (tmp_path / "boost1", PRETRAINED_DIR / "lrfree_boost1"))
    assert {**written, "metaopt_version": None} == {**shipped, "metaopt_version": None}


def test_lrfree_anchor_is_the_boost_once_anchored(tmp_path):
    """rule="lrfree_anchor" (GMNOptimizer(model) since 0.11): lrfree_boost1's mode with plateau_anchor=True, i.e. GMNOptimizer(model, rule="adam",
    lr_free=True, ..., plateau_boost=1, plateau_anchor=True) bit for bit, and lrfree_boost1 bit for bit before a
    doubling is granted (the anchor changes only a granted doubling); make_default's command line reproduces it."""
    opts = []
    named, losses = _train(lambda m: opts.append(GMNOptimizer(m, rule="lrfree_anchor")) or opts[-1], steps=60)
    explicit, _ = _train(lambda m: GMNOptimizer(m, rule="adam", lr_free=True, **ANCHOR_MODE), steps=60)
    once, _ = _train(lambda m: GMNOptimizer(m, rule="lrfree_boost1"), steps=60)
    assert opts[0].rule.config.lr_free == ANCHOR_MODE and opts[0].plateau_anchor and losses[-1] < losses[0]
    for a, b, c in zip(named.parameters(), explicit.parameters(), once.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    make_default.main(["--lr-free-from", str(PRETRAINED_DIR / "adam"), "--estimate-every", "10", "--per-tensor", "0.7",
                       "--estimate-stride", "3", "--shared-sums", "--settled-growth-rate", "1.02",
                       "--plateau-block", "500", "--plateau-boost", "1", "--plateau-anchor",
                       "--out", str(tmp_path / "anchor")])
    written, shipped = (json.loads((d / "config.json").read_text())
                        for d in (tmp_path / "anchor", PRETRAINED_DIR / "lrfree_anchor"))
    assert {**written, "metaopt_version": None} == {**shipped, "metaopt_version": None}
