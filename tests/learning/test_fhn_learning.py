"""FitzHugh-Nagumo networks learn the offline digits with every rule they take."""

import math

from eqprop.training.config import parse_overrides
from eqprop.training.trainer import Trainer


def test_every_rule_runs_and_cep_learns_the_digits():
    """The defaults of model=fhn (exact solver, C-EP) learn the offline digits: 3 epochs reach under 15% test
    error (chance 90%); P-EP, REP (a drawn sign per step), TBP and RBP each lower the training loss from the
    first epoch to the second."""
    history = Trainer(parse_overrides(["model=fhn", "epochs=3", "progress=false"]), log=lambda m: None).fit()
    assert history[-1]["test_error"] < 0.15, history[-1]
    for rule in ("PEP", "REP", "TBP", "RBP"):
        cfg = parse_overrides(["model=fhn", f"algorithm={rule}", "epochs=2", "progress=false"])
        trainer = Trainer(cfg, log=lambda m: None)
        before = trainer.train_epoch(1)["train_loss"]
        after = trainer.train_epoch(2)["train_loss"]
        assert math.isfinite(after) and after < before, (rule, before, after)
