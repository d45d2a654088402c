"""outer_train.evaluate with the plateau boost's spike check on every step while a doubling is granted (a probe:
monkeypatches GMNOptimizer._decay_on_plateau; the sampled steps and the blocks are the package's)."""
import math, sys, torch
from metaopt.optim import core as _core
from metaopt.optim import optimizer as _om
_orig = _om.GMNOptimizer._decay_on_plateau
def _dec(self, step, grads):
    if int(self.state["plateau_boosts"]) > 0 and not _core.plateau_due(step, self.plateau_block):
        sq = float(sum(n ** 2 for n in torch._foreach_norm(grads, dtype=torch.float32)))
        if not sq < math.inf or (sq > 0 and math.log(sq) >= float(self.state["plateau_previous"]) + math.log(_core.PLATEAU_SPIKE)):
            self.state["plateau_boosts"] = 0.0; self.state["plateau_ramp"] = 0.0
            self.state["plateau_spiked"] = 1.0; self.state["plateau_anchor"] = 0.0
    return _orig(self, step, grads)
_om.GMNOptimizer._decay_on_plateau = _dec
from outer_train.evaluate import main
sys.exit(main(sys.argv[1:]))
