"""Oracle: the scalable-EP paper's Theorem 3.2: with intermediate signals, C-EP -> d(L_EP + kappa sum L_Aug)/dtheta."""

import pytest
import torch

from eqprop import get_algorithm
from eqprop.core.nudging import one_hot
from eqprop.rules.backprop import implicit_gradient
from helpers import cosine, formula_loss, rel_error, signals_for, small_conv, small_mlp


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
