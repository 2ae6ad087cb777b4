"""Intermediate learning signals (scalable-EP paper): closed-form forces, converged augmented dynamics,
Theorem 3.2 (C-EP -> d(L_EP + kappa sum L_Aug)/dtheta), and the kappa schedules of eq. 14."""

import math

import pytest
import torch

from eqprop import get_algorithm
from eqprop.core.nudging import one_hot
from eqprop.core.relaxation import relax
from eqprop.rules.backprop import implicit_gradient
from eqprop.rules.signals import (
    IntermediateSignal,
    KnowledgeDistillation,
    LocalError,
    WeightedKnowledgeDistillation,
    kappa_schedule,
    soft_target_loss,
)
from helpers import cosine, rel_error, small_conv, small_mlp


class StandInTeacher:
    """Input-dependent per-sample features of each signalled layer's shape (what a trained teacher provides)."""

    def __init__(self, shape):
        gen = torch.Generator().manual_seed(1)
        self.pattern = torch.randn(shape, generator=gen, dtype=torch.float64)

    def __call__(self, x):
        scale = x.flatten(1).mean(1).view(-1, *([1] * self.pattern.dim()))
        return 3.0 * scale * self.pattern


def formula_loss(sig, s, t):
    """L_Aug per sample from the paper's formulas (eqs. 7, 8, 13) with Hinton's tau^2, written independently of
    the library: tau^2 * CE(p, softmax(z / tau)), z the layer's (read-out or mapped) logits, p the target."""
    tau = sig.tau
    if isinstance(sig, LocalError):
        z = s.flatten(1) @ sig.readout.t()
        p = torch.softmax(t / tau, 1) if sig.soft_labels else t
    else:
        if isinstance(sig, WeightedKnowledgeDistillation):
            w = sig.w_map
            s = torch.einsum("oc,bchw->bohw", w, s) if s.dim() == 4 else s @ w.t()
        z, p = s.flatten(1), torch.softmax(t.flatten(1) / tau, 1)
    return -(tau**2) * (p * torch.log_softmax(z / tau, 1)).sum(1)


def test_signal_losses_follow_their_formulas():
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    s = net.init_state(x, "uniform")
    for kind in ("LE", "LE-hard", "KD", "KDW"):
        for sig in signals_for(net, kind):
            t = sig.target(x, y)
            assert torch.allclose(sig.loss(s[sig.layer], t), formula_loss(sig, s[sig.layer], t), atol=1e-12), kind


def signals_for(net, kind):
    shapes = {k: net.layers[k].shape for k in (1, 2)}
    if kind in ("LE", "LE-hard"):
        return [LocalError(k, shapes[k], 5, tau=4.0, soft_labels=kind == "LE").double() for k in (1, 2)]
    if kind == "KD":
        return [KnowledgeDistillation(k, StandInTeacher(shapes[k]), tau=2.0) for k in (1, 2)]
    sigs = [WeightedKnowledgeDistillation(k, shapes[k], StandInTeacher(shapes[k]), tau=2.0).double() for k in (1, 2)]
    with torch.no_grad():
        for sig in sigs:
            sig.w_map.add_(0.3 * torch.randn_like(sig.w_map))
    return sigs


@pytest.mark.parametrize("kind", ["LE", "LE-hard", "KD", "KDW"])
def test_closed_form_forces_match_autograd(kind):
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    s = net.init_state(x, "uniform")
    for sig in signals_for(net, kind):
        target = sig.target(x, y)
        auto = IntermediateSignal.grad(sig, s[sig.layer], target)  # the autograd default
        assert torch.allclose(sig.grad(s[sig.layer], target), auto, atol=1e-12)
        assert float(auto.abs().max()) > 0


def test_soft_target_loss_is_minimal_at_the_target_distribution():
    t = torch.randn(4, 7, dtype=torch.float64)
    at_target = soft_target_loss(t, t, 4.0)
    assert bool((soft_target_loss(t + 0.3 * torch.randn_like(t), t, 4.0) > at_target).all())
    assert bool((soft_target_loss(t + 5.0, t, 4.0) - at_target).abs().max() < 1e-12)  # softmax is shift-invariant


@pytest.mark.parametrize("make", [small_mlp, small_conv], ids=["dense", "conv"])
@pytest.mark.parametrize("kind", ["LE", "LE-hard", "KD", "KDW"])
def test_augmented_centered_ep_matches_implicit_differentiation(make, kind):
    """Theorem 3.2: with signals at layers 1 and 2, C-EP -> d(L_EP + kappa sum L_Aug)/dtheta at O(beta^2);
    for KDW the maps' EP update (appendix G) -> kappa dL_Aug/dw_map at the free state, too."""
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    sigs, kappa = signals_for(net, kind), 0.5
    errors = []
    for beta in (1e-2, 1e-3):
        alg = get_algorithm(
            "CEP",
            beta=beta,
            free_iterations=400,
            nudged_iterations=400,
            cost="cross_entropy",
            signals=sigs,
            kappa=kappa,
        )
        free = alg.free_phase(net, x)
        grads = alg.gradients(net, x, y, free)
        targets = [sig.target(x, y) for sig in sigs]

        def total(s, targets=targets):  # the losses from their formulas, not the library's
            signal_terms = sum(formula_loss(sig, s[sig.layer], t) for sig, t in zip(sigs, targets))
            return (-(y * torch.log_softmax(s[-1], 1)).sum(1) + kappa * signal_terms).mean()

        ref, _ = implicit_gradient(net, free.states, total)
        plain, _ = implicit_gradient(net, free.states, lambda s: -(y * torch.log_softmax(s[-1], 1)).sum(1).mean())
        maps = [p for sig in sigs for p in sig.parameters()]
        if maps:  # the maps do not move the free state: their gradient is the direct one
            grads = grads + [p.grad for p in maps]
            with torch.enable_grad():
                ref = ref + list(torch.autograd.grad(total(free.states), maps))
            plain = plain + [torch.zeros_like(p) for p in maps]
        errors.append(rel_error(grads, ref))
    assert min(cosine(g, r) for g, r in zip(grads, ref)) >= 0.99
    assert errors[-1] < 1e-4 and errors[0] / errors[1] > 50  # O(beta^2)
    assert rel_error(plain, ref) > 100 * errors[-1]  # the signals change the gradient: the check can fail


def test_augmented_nudged_phase_converges_to_a_fixed_point():
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    sigs = signals_for(net, "LE")
    alg = get_algorithm(
        "CEP", beta=0.5, free_iterations=200, nudged_iterations=200, cost="cross_entropy", signals=sigs, kappa=2.0
    )
    free = alg.free_phase(net, x)
    nudge = alg.nudge(0.5, y, free, [y, y])
    with torch.no_grad():
        res = relax(net, free.states, 300, nudge=nudge, record=True)
        plain = relax(net, free.states, 300, nudge=nudge.base).states
    assert res.trajectory.residual[-1] < 1e-10
    moved = float((res.states[1] - free.states[1]).detach().abs().max())
    assert float((res.states[1] - plain[1]).abs().max()) > 1e-3 * max(moved, 1e-12)  # the signal acts on layer 1


def test_kappa_schedules_follow_eq_14():
    assert kappa_schedule("constant", 7, 10, 0.3) == 0.3
    assert kappa_schedule("linear", 0, 10, 0.3) == pytest.approx(0.3)
    assert kappa_schedule("linear", 5, 10, 0.3) == pytest.approx(0.15)
    assert kappa_schedule("linear", 10, 10, 0.3) == pytest.approx(0.0)
    assert kappa_schedule("exponential", 4, 10, 0.3, gamma=0.2) == pytest.approx(0.3 * math.exp(-0.8))
    assert kappa_schedule("cosine", 0, 10, 0.3, 0.01) == pytest.approx(0.3)
    assert kappa_schedule("cosine", 5, 10, 0.3, 0.01) == pytest.approx(0.155)
    assert kappa_schedule("cosine", 10, 10, 0.3, 0.01) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown kappa schedule 'step'; valid ones are"):
        kappa_schedule("step", 0, 10, 0.3)


def test_signals_need_ep_nudging():
    net, _, _ = small_mlp()
    with pytest.raises(ValueError, match="need EP nudging"):
        get_algorithm("CCpL", signals=signals_for(net, "LE"))


TINY = [
    "model=vgg",
    "blocks=[[4],[8],[8]]",
    "hidden=[16]",
    "lrs=[0.05]",
    "gains=[1.0]",
    "free_iterations=10",
    "nudged_iterations=4",
    "epochs=2",
    "limit_train=128",
    "limit_test=64",
    "progress=false",
    "tensorboard=false",
    "teacher_epochs=1",
]


def test_vgg_crnn_has_the_table_4_layer_counts():
    from eqprop.models import VGG_ARCHS, vgg_crnn

    for name, (blocks, fc) in VGG_ARCHS.items():
        net = vgg_crnn(3, 100, 32, blocks, fc)
        assert net.num_layers - 1 == int(name[3:])
        widths = [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]
        if name == "vgg5":  # 128-256-512-512, each conv pooled
            widths = [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
        assert [net.layers[k].shape for k in net.block_ends] == widths
    with pytest.raises(ValueError, match=r"divisible by 2\*\*5"):
        vgg_crnn(1, 10, 16, VGG_ARCHS["vgg7"][0])


@pytest.mark.parametrize("signals", ["le", "kd", "kdw"])
def test_signals_run_end_to_end_with_kappa_schedule_and_diagnostics(tmp_path, signals):
    from eqprop.training.config import load_config
    from eqprop.training.results import read_diagnostics
    from eqprop.training.trainer import Trainer

    cfg = load_config(
        None,
        TINY + [f"signals={signals}", "kappa=0.8", "kappa_schedule=linear", "diagnostics=true", f"out_dir={tmp_path}"],
    )
    trainer = Trainer(cfg, log=lambda s: None)
    assert [s.layer for s in trainer.signals] == ([2, 3] if signals == "le" else [1, 2, 3])
    history = trainer.fit()
    assert [row["kappa"] for row in history] == [pytest.approx(0.8), pytest.approx(0.4)]  # eq. 14, linear
    diags = read_diagnostics(tmp_path)
    assert len(diags) == 2 and len(diags[0]["mean_activation"]) == trainer.network.num_layers - 1
    assert all(g > 0 for g in diags[0]["grad_norm"])
    assert (tmp_path / "diagnostics.png").stat().st_size > 0
    if signals != "le":
        assert (tmp_path / "teacher.pt").exists()
    if signals == "kdw":  # the maps learned, and a resumed run gets them back
        maps = [s.w_map.detach().clone() for s in trainer.signals]
        assert any(not torch.equal(m, torch.eye(m.shape[0])) for m in maps)
        again = Trainer.resume(tmp_path, log=lambda s: None)
        assert all(torch.equal(a.w_map, m) for a, m in zip(again.signals, maps))


def test_signal_configs_reject_what_cannot_work():
    from eqprop.training.config import ConfigError, load_config
    from eqprop.training.trainer import Trainer

    with pytest.raises(ConfigError, match="need EP nudging"):
        load_config(None, TINY + ["signals=le", "algorithm=CCpL"])
    with pytest.raises(ConfigError, match="use model=vgg"):
        load_config(None, ["signals=kd"])
    with pytest.raises(ConfigError, match="signal_layers \\[9\\]"):
        Trainer(load_config(None, TINY + ["signals=le", "signal_layers=[9]"]), log=lambda s: None)
    with pytest.raises(ConfigError, match="KD signals attach to block ends"):
        Trainer(load_config(None, TINY + ["signals=kd", "blocks=[[4,4],[8]]", "signal_layers=[1]"]), log=lambda s: None)
