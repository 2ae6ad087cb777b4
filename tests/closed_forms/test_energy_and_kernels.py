"""Oracle: closed forms. The energy (eq. 96), the init (eq. 102), the fused pooling kernels against
max_pool2d, conjugate gradient, the cosine and kappa schedules (eq. 14), the signal losses' formulas."""

import math

import pytest
import torch

from eqprop import (
    dchn,
    get_algorithm,
    hopfield_mlp,
    make_optimizer,
    make_scheduler,
)
from eqprop.core.nudging import one_hot
from eqprop.rules.backprop import conjugate_gradient
from eqprop.rules.signals import (
    kappa_schedule,
    soft_target_loss,
)
from helpers import formula_loss, signals_for, small_conv


def test_energy_is_half_norm_minus_phi():
    net, x, _ = small_conv()
    s = net.init_state(x, "uniform")
    e = net.energy(s)
    manual = 0.5 * sum(t.flatten(1).pow(2).sum(1) for t in s[1:]) - net.phi(s)
    assert torch.allclose(e, manual)
    # Phi by hand for the conv + pool + dense + bias terms (eq. 97)
    w1, w2 = net.interactions["conv1"].weight, net.interactions["conv2"].weight
    w3 = net.interactions["dense3"].weight
    pooled1 = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(s[0], w1, padding=1), 2)
    pooled2 = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(s[1], w2, padding=1), 2)
    phi = (
        (s[1] * pooled1).flatten(1).sum(1)
        + (s[2] * pooled2).flatten(1).sum(1)
        + ((s[2].flatten(1) @ w3.t()) * s[3]).sum(1)
        + sum(
            (s[k] * net.interactions[f"bias{k}"].bias.view(1, -1, *([1] * (s[k].dim() - 2)))).flatten(1).sum(1)
            for k in (1, 2, 3)
        )
    )
    assert torch.allclose(net.phi(s), phi)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_int8_coded_pooling_equals_max_pool_and_its_backward(dtype, channels_last):
    # the plain-torch form of the fused kernels; ties (first position wins) as in max_pool2d
    from eqprop.core.kernels import max_pool2x2_code, max_unpool2x2_code

    z = torch.randn(3, 4, 8, 6).to(dtype)
    z[0, 0, :2, :2] = 0.5  # a four-way tie
    z[1, 2, 2:4, 2:4] = torch.tensor([[0.1, 0.7], [0.7, 0.2]], dtype=dtype)  # a two-way tie
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    pooled, idx = torch.nn.functional.max_pool2d(z, 2, return_indices=True)
    m, code = max_pool2x2_code(z)
    assert code.dtype == torch.int8 and torch.equal(m, pooled)
    post = torch.randn_like(pooled)
    ref = torch.ops.aten.max_pool2d_with_indices_backward(post, z, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
    out = max_unpool2x2_code(post, code)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_init_is_kaiming_uniform_scaled_by_gain():
    net = dchn(3, 10, gains=(0.4, 0.7, 0.6, 0.3, 0.4))
    for name, gain, fan_in in [("conv1", 0.4, 27), ("conv2", 0.7, 128 * 9), ("dense5", 0.4, 2048)]:
        w = net.interactions[name].weight.detach()
        bound = gain / math.sqrt(fan_in)
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.95 * bound  # many draws: the max is close to the bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound


def test_conjugate_gradient_solves_spd_system():
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64)
    a = m @ m.t() + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    (x,), its = conjugate_gradient(lambda v: [a @ v[0]], [b], tol=1e-12)
    assert torch.allclose(a @ x, b, atol=1e-9) and its <= 6


def test_optimizer_groups_and_cosine_schedule():
    net = hopfield_mlp((4, 3, 2))
    opt = make_optimizer(net, [0.1, 0.01], momentum=0.9, weight_decay=3e-4)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    sched = make_scheduler(opt, t_max=10, eta_min=2e-6)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-6)
    with pytest.raises(ValueError, match="expected 2 learning rates"):
        make_optimizer(net, [0.1, 0.1, 0.1])


def test_a_cosine_ending_at_a_fraction_of_each_rate_is_torchs_cosine_per_group():
    """Oracle: torch's CosineAnnealingLR run separately for each group with eta_min = r lr_g (its recursive
    form, not our closed one); every epoch's rates agree."""
    net, r, rates = hopfield_mlp((4, 3, 2)), 1e-3, [0.1, 0.01]
    ours = make_optimizer(net, rates, momentum=0.9)
    sched = make_scheduler(ours, t_max=7, eta_min=0.5, eta_min_ratio=r)  # eta_min is ignored
    theirs = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr) for lr in rates]
    refs = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=r * lr) for o, lr in zip(theirs, rates)]
    for _ in range(7):
        for opt in (ours, *theirs):
            opt.step()
        sched.step()
        for ref in refs:
            ref.step()
        for group, o in zip(ours.param_groups, theirs):
            assert group["lr"] == pytest.approx(o.param_groups[0]["lr"], rel=1e-10)
    assert [g["lr"] for g in ours.param_groups] == pytest.approx([r * lr for lr in rates], rel=1e-12)
    with pytest.raises(ValueError, match="eta_min_ratio"):
        make_scheduler(ours, t_max=7, eta_min_ratio=2.0)


def test_soft_target_loss_is_minimal_at_the_target_distribution():
    t = torch.randn(4, 7, dtype=torch.float64)
    at_target = soft_target_loss(t, t, 4.0)
    assert bool((soft_target_loss(t + 0.3 * torch.randn_like(t), t, 4.0) > at_target).all())
    assert bool((soft_target_loss(t + 5.0, t, 4.0) - at_target).abs().max() < 1e-12)  # softmax is shift-invariant


def test_signal_losses_follow_their_formulas():
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    s = net.init_state(x, "uniform")
    for kind in ("LE", "LE-hard", "KD", "KDW"):
        for sig in signals_for(net, kind):
            t = sig.target(x, y)
            assert torch.allclose(sig.loss(s[sig.layer], t), formula_loss(sig, s[sig.layer], t), atol=1e-12), kind


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


PUBLIC_CODE = dict(cost=("half_squared_error", "iterate"), first="odd", init="persistent")


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{"schedule": "asynchronous"}, {"schedule": "synchronous"}, {"schedule": "asynchronous", **PUBLIC_CODE}],
    ids=["asynchronous", "synchronous", "public-code"],
)
def test_the_compiled_relaxation_on_the_cpu_is_the_native_one(monkeypatch, options):
    """The fused path (compiled pooling, unpooling and layer updates) run on the CPU, where torch.compile's
    C++ backend builds it: the same free states and C-EP updates as the native kernels, over two steps (the
    second starts from the first's carried state with the public code's conventions, as in headline run 1).
    The CUDA twin is in tests/gpu; this one runs without a GPU, so a logic error in the fused path shows in CI."""
    from eqprop import set_fused_kernels
    from eqprop.core import interactions, kernels, relaxation
    from eqprop.core.nudging import get_cost

    monkeypatch.setattr(kernels, "FUSED_DEVICE_TYPES", {"cuda", "cpu"})
    calls: list[str] = []

    def counting(name, activation=None):
        calls.append(name)
        return kernels.compiled(name, activation)

    monkeypatch.setattr(interactions, "compiled", counting)
    monkeypatch.setattr(relaxation, "compiled", counting)
    torch.manual_seed(0)
    net = dchn(3, 10, input_size=16, channels=(4, 6, 8), gains=(1.0, 1.0, 1.0, 0.9))
    net.uniform_biases_(0.5)
    batches = [(torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))) for _ in range(2)]
    kw = dict(options, free_iterations=12, nudged_iterations=5, beta=0.25)
    if "cost" in kw:
        kw["cost"] = get_cost(*kw["cost"])

    def two_steps():
        rule = get_algorithm("CEP", **kw)
        net.train()
        return [rule.step(net, x, y) for x, y in batches]

    native = two_steps()
    assert not calls
    set_fused_kernels(net)
    fused = two_steps()
    set_fused_kernels(net, False)
    assert {"pool", "unpool", "update"} <= set(calls)
    for n, f in zip(native, fused):
        for a, b in zip(n.free.states[1:], f.free.states[1:]):
            assert float((a - b).abs().max()) < 1e-6
        for a, b in zip(n.grads, f.grads):
            assert float((a - b).norm()) <= 1e-5 * float(a.norm())
