"""Holomorphic EP (Laborieux & Zenke 2022): the mean over N nudged phases on the circle |beta| e^{2 pi i k/N} is
the exact gradient once N is large enough, at a finite |beta|, while centered EP keeps an O(beta^2) bias.

The oracle is implicit differentiation written in this file from the definitions: the fixed-point map
s = f(dPhi/ds) of a small dense net and of a small conv net with softmax pooling (own activation, own pooling),
its Jacobians by autograd, and a dense linear solve per sample; the library's RBP is not used as the reference.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from eqprop import dchn, get_algorithm, hopfield_mlp, one_hot
from eqprop.core.layers import ACTIVATIONS, get_activation, holomorphic_activations
from eqprop.core.nudging import EPNudge, get_cost
from eqprop.core.relaxation import relax
from eqprop.rules.holomorphic import circle
from helpers import rel_error

T, K = 200, 200  # iterations: plenty for the float64 fixed points of these small nets


def f_holo(z):
    """The paper's activation, written from its formula: (z/2) sigma(z) + (1 - z/2) sigma(z - 2)."""
    return 0.5 * z / (1 + torch.exp(-z)) + (1 - 0.5 * z) / (1 + torch.exp(-(z - 2)))


# ---- the independent oracle: implicit differentiation of a hand-written fixed-point map ------------------
def dense_map(params, x):
    """G(s) = f(dPhi/ds) of the net x -> s1 -> s2 (dense, biases) and its readout logits."""
    w1, b1, w2, b2, wr, br = params

    def g(s1, s2):
        return f_holo(x @ w1.t() + b1 + s2 @ w2), f_holo(s1 @ w2.t() + b2)

    return g, lambda s2: s2 @ wr.t() + br


def soft_pool(z):
    """2x2 softmax pooling written with unfold: sum_i z_i e^{z_i} / sum_i e^{z_i} per window."""
    b, c, h, w = z.shape
    win = F.unfold(z.reshape(b * c, 1, h, w), 2, stride=2).transpose(1, 2)  # (b*c, windows, 4)
    return (win * torch.softmax(win, -1)).sum(-1).view(b, c, h // 2, w // 2)


def conv_map(params, x):
    """G(s) = f(dPhi/ds) of x -> conv+softpool -> s1 -> conv+softpool -> s2, by autograd of Phi per layer."""
    w1, b1, w2, b2, wr, br = params

    def phi(s1, s2):
        return (s1 * (soft_pool(F.conv2d(x, w1, padding=1)) + b1.view(1, -1, 1, 1))).sum() + (
            s2 * (soft_pool(F.conv2d(s1, w2, padding=1)) + b2.view(1, -1, 1, 1))
        ).sum()

    def g(s1, s2):
        d1, d2 = torch.autograd.grad(phi(s1, s2), (s1, s2), create_graph=True)
        return f_holo(d1), f_holo(d2)

    def wrapped(s1, s2):
        with torch.enable_grad():
            s1 = s1 if s1.requires_grad else s1.detach().requires_grad_(True)
            s2 = s2 if s2.requires_grad else s2.detach().requires_grad_(True)
            return g(s1, s2)

    return wrapped, lambda s2: s2.flatten(1) @ wr.t() + br


def implicit_oracle(make_map, params, x, labels, shapes):
    """dL/dtheta of L = mean CE(readout(s2*)) at the fixed point s* = G(s*): solve (I - dG/ds)^T lam = dL/ds."""
    params = [p.detach().clone().requires_grad_(True) for p in params]
    g, read = make_map(params, x)
    b = x.shape[0]
    s = [torch.zeros(b, *sh, dtype=torch.float64) for sh in shapes]
    for _ in range(2000):
        s = [t.detach() for t in g(*s)]
    sizes = [math.prod(sh) for sh in shapes]

    def flat_map(v):  # the batch's states as one vector -> G of them
        parts = [t.view(b, *sh) for t, sh in zip(v.split([b * n for n in sizes]), shapes)]
        return torch.cat([t.reshape(-1) for t in g(*parts)])

    v = torch.cat([t.reshape(-1) for t in s]).requires_grad_(True)
    jac = torch.autograd.functional.jacobian(flat_map, v.detach())
    vs = v.split([b * n for n in sizes])
    s2 = vs[1].view(b, *shapes[1])
    (dl_ds,) = torch.autograd.grad(F.cross_entropy(read(s2), labels), v)
    direct = torch.autograd.grad(F.cross_entropy(read(s[1]), labels), params, allow_unused=True)
    lam = torch.linalg.solve((torch.eye(len(v), dtype=torch.float64) - jac).t(), dl_ds)
    out = flat_map(v)
    through = torch.autograd.grad(out, params, grad_outputs=lam, allow_unused=True)
    grads = [(a if a is not None else 0) + (c if c is not None else 0) for a, c in zip(through, direct)]
    return grads, s


def copy_into_library(net):
    """The library network's parameters in the oracle's order (w1, b1, w2, b2, wr, br)."""
    t = net.terms
    first, second = ("dense1", "dense2") if "dense1" in t else ("conv1", "conv2")
    return [t[first].weight, t["bias1"].bias, t[second].weight, t["bias2"].bias, net.readout.weight, net.readout.bias]


def library_grads(net, algorithm, x, labels):
    y = one_hot(labels, net.num_classes, torch.float64)
    free = algorithm.free_phase(net, x)
    named = dict(zip([id(p) for p in net.parameters()], algorithm.gradients(net, x, y, free)))
    return [named[id(p)] for p in copy_into_library(net)], free


@pytest.fixture(scope="module")
def dense_case():
    torch.manual_seed(3)
    net = hopfield_mlp([6, 8, 5, 3], gains=1.0, activation="holo_hard_sigmoid", readout=True).double()
    with torch.no_grad():
        net.terms["bias1"].bias.uniform_(-0.5, 0.5)
        net.terms["bias2"].bias.uniform_(-0.5, 0.5)
    x = torch.rand(4, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    oracle, states = implicit_oracle(dense_map, copy_into_library(net), x, labels, [(8,), (5,)])
    return net, x, labels, oracle, states


@pytest.fixture(scope="module")
def conv_case():
    torch.manual_seed(4)
    net = dchn(1, 3, 8, channels=[3, 4], activation="holo_hard_sigmoid", pooling="softmax", readout=True, gains=1.0)
    net = net.double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1])
    oracle, states = implicit_oracle(conv_map, copy_into_library(net), x, labels, [(3, 4, 4), (4, 2, 2)])
    return net, x, labels, oracle, states


def rule(name, **kw):
    return get_algorithm(
        name, cost="cross_entropy", free_iterations=T, nudged_iterations=K, schedule="synchronous", **kw
    )


@pytest.mark.parametrize("case", ["dense_case", "conv_case"])
def test_hep_converges_to_the_implicit_gradient_as_n_grows_while_cep_keeps_its_bias(case, request):
    net, x, labels, oracle, states = request.getfixturevalue(case)
    grads, free = library_grads(net, rule("RBP"), x, labels)
    for a, b in zip(free.states[1:], states):  # the library relaxes to the oracle's fixed point
        assert float((a - b).abs().max()) < 1e-12
    errors = {
        n: rel_error(library_grads(net, rule("HEP", beta=0.5, points=n), x, labels)[0], oracle) for n in (2, 3, 4, 6, 8)
    }
    cep = rel_error(library_grads(net, rule("CEP", beta=0.5), x, labels)[0], oracle)
    # measured relative errors (dense / conv): N=2 2.5e-2 / 3.4e-2, N=3 1.3e-3 / 1.0e-3, N=4 1.2e-4 / 3.1e-5,
    # N=6 1.7e-6 / 2.6e-7, N=8 2.3e-8 / 6.1e-10, N=10 1.9e-10 / 3.6e-12: about a factor 10 per extra phase
    assert errors[2] == pytest.approx(cep, rel=1e-9)  # N = 2 is centered EP
    assert cep > 1e-3  # C-EP's bias at |beta| = 0.5 is visible
    ns = sorted(errors)
    assert all(errors[a] > 5 * errors[b] for a, b in zip(ns, ns[1:]))  # geometric decay in N
    assert errors[8] < 1e-7
    assert rel_error(grads, oracle) < 1e-7  # and the library's RBP agrees with the hand-written implicit gradient


def test_centered_ep_bias_is_second_order_in_beta(dense_case):
    net, x, labels, oracle, _ = dense_case
    errs = [rel_error(library_grads(net, rule("CEP", beta=b), x, labels)[0], oracle) for b in (0.4, 0.2, 0.1)]
    assert 3.2 < errs[0] / errs[1] < 4.8 and 3.2 < errs[1] / errs[2] < 4.8
    hep = [rel_error(library_grads(net, rule("HEP", beta=b, points=6), x, labels)[0], oracle) for b in (0.4, 0.2)]
    assert max(hep) < errs[2] / 100  # HEP at 4x C-EP's beta, two orders of magnitude closer


def test_n2_gives_the_same_numbers_as_centered_ep():
    torch.manual_seed(0)
    for net in (
        hopfield_mlp([5, 7, 4], gains=1.0).double(),  # hard sigmoid, output state: N = 2 needs no complex phase
        hopfield_mlp([5, 7, 4, 3], gains=1.0, activation="tanh", readout=True).double(),
    ):
        x, y = torch.rand(6, 5, dtype=torch.float64), one_hot(torch.arange(6) % net.num_classes, net.num_classes)
        cep, hep = rule("CEP", beta=0.3), rule("HEP", beta=0.3, points=2)
        free = cep.free_phase(net, x)
        for a, b in zip(cep.gradients(net, x, y.double(), free), hep.gradients(net, x, y.double(), free)):
            assert torch.equal(a, b)


def test_complex_relaxation_reaches_a_fixed_point_conjugate_to_the_conjugate_phase(dense_case):
    net, x, labels, _, states = dense_case
    y = one_hot(labels, 3, torch.float64)
    beta = circle(0.5, 6)[1]
    start = [x] + [s.to(torch.complex128) for s in states]
    nudge = EPNudge(get_cost("cross_entropy"), y, beta, net.readout)
    with torch.no_grad():
        s = relax(net, start, 300, nudge=nudge, schedule="synchronous").states
    assert s[1].is_complex() and float(s[1].imag.abs().max()) > 1e-3  # genuinely complex
    assert float(net.fixed_point_residual(s, nudge).max()) < 1e-10
    # the same residual from the hand-written map: s = f(dPhi/ds - beta W_r^T (softmax(W_r s2 + b_r) - y))
    w1, b1, w2, b2, wr, br = (p.detach().to(torch.complex128) for p in copy_into_library(net))
    p = torch.exp(s[2] @ wr.t() + br)
    p = p / p.sum(1, keepdim=True)
    r1 = s[1] - f_holo(x.to(torch.complex128) @ w1.t() + b1 + s[2] @ w2)
    r2 = s[2] - f_holo(s[1] @ w2.t() + b2 - beta * (p - y) @ wr)
    assert max(float(r1.abs().max()), float(r2.abs().max())) < 1e-10
    with torch.no_grad():
        nudge = EPNudge(get_cost("cross_entropy"), y, beta.conjugate(), net.readout)
        conj = relax(net, start, 300, nudge=nudge, schedule="synchronous").states
    assert max(float((a - b.conj()).abs().max()) for a, b in zip(conj[1:], s[1:])) < 1e-10


# ---- the online variant: beta turns, each phase continues from the previous one -------------------------------
def online_reference(net, x, labels, free_states, beta, points, periods, k):
    """The online estimate written from its definition on the hand-written nudged map of the dense net (as in the
    fixed-point test above): synchronous s <- G_beta(s), K steps per phase, phases in turn from the free state;
    the mean over phases of Re(dF/dtheta(s, beta_k) / beta_k) with F = -Phi + beta CE(W_r s2 + b_r, y)."""
    c = torch.complex128
    params = [p.detach().clone().requires_grad_(True) for p in copy_into_library(net)]
    w1, b1, w2, b2, wr, br = (p.detach().to(c) for p in params)
    y, xc = one_hot(labels, 3, torch.float64), x.to(c)
    s1, s2 = (t.to(c) for t in free_states)
    total = None
    for _ in range(periods):
        for b in circle(beta, points):
            for _ in range(k):
                p = torch.exp(s2 @ wr.t() + br)
                p = p / p.sum(1, keepdim=True)
                s1, s2 = f_holo(xc @ w1.t() + b1 + s2 @ w2), f_holo(s1 @ w2.t() + b2 - b * (p - y) @ wr)
            q1, qb1, q2, qb2, qr, qbr = (t.to(c) for t in params)
            phi = (s1 * (xc @ q1.t() + qb1)).sum(1) + (s2 * (s1 @ q2.t() + qb2)).sum(1)
            z = s2 @ qr.t() + qbr
            ce = torch.log(torch.exp(z).sum(1)) - (y * z).sum(1)
            term = ((-phi + b * ce) / b).real.mean()
            g = torch.autograd.grad(term, params)
            total = g if total is None else [a + u for a, u in zip(total, g)]
    return [t / (points * periods) for t in total]


@pytest.mark.parametrize("points, k", [(4, 3), (5, 7), (2, 4)])
def test_online_hep_follows_the_written_out_online_loop(dense_case, points, k):
    """Short phases that do not settle, so every phase's start matters: the library's online estimate equals
    the reference loop's (N = 2: real phases)."""
    net, x, labels, _, _ = dense_case
    online = rule("HEP", beta=0.6, points=points, periods=3)
    online.phases = type(online.phases)(**{**online.phases.__dict__, "nudged_iterations": k})
    grads, free = library_grads(net, online, x, labels)
    reference = online_reference(net, x, labels, free.states[1:], 0.6, points, 3, k)
    assert rel_error(grads, reference) < 1e-10


def test_online_hep_with_settled_phases_is_the_static_estimate_and_short_phases_are_not(dense_case):
    """Once K iterations settle every phase, where a phase starts no longer matters: online = static HEP (and
    so the implicit gradient up to HEP's aliasing error). With K = 3 the states lag the turning beta."""
    net, x, labels, oracle, _ = dense_case
    static, _ = library_grads(net, rule("HEP", beta=0.5, points=6), x, labels)
    online, _ = library_grads(net, rule("HEP", beta=0.5, points=6, periods=2), x, labels)
    assert rel_error(online, static) < 1e-9
    assert rel_error(online, oracle) < 1e-5  # N = 6 at |beta| = 0.5: measured 1.7e-6 for the static rule
    lagging = rule("HEP", beta=0.5, points=6, periods=2)
    lagging.phases = type(lagging.phases)(**{**lagging.phases.__dict__, "nudged_iterations": 3})
    short, _ = library_grads(net, lagging, x, labels)
    assert rel_error(short, static) > 1e-3


def test_online_hep_refuses_negative_periods():
    with pytest.raises(ValueError, match="periods must be 0"):
        rule("HEP", points=4, periods=-1)


def test_batched_complex_phases_equal_phases_relaxed_one_by_one(conv_case):
    net, x, labels, _, _ = conv_case
    batched, one_by_one = rule("HEP", beta=0.7, points=7), rule("HEP", beta=0.7, points=7, batch_phases=False)
    a, _ = library_grads(net, batched, x, labels)
    b, _ = library_grads(net, one_by_one, x, labels)
    assert max(float((u - v).abs().max()) for u, v in zip(a, b)) < 1e-12


# ---- fallback: a sample whose complex phases have not settled uses its real phases -----------------------------
def short(name, k, **kw):
    """A rule whose nudged phases run only ``k`` iterations (the free phase still settles)."""
    return get_algorithm(
        name, cost="cross_entropy", free_iterations=T, nudged_iterations=k, schedule="synchronous", **kw
    )


def by_hand(net, x, labels, rules):
    """The batch mean of each sample's estimate by its own rule, every sample relaxed alone."""
    per_sample = [library_grads(net, r, x[i : i + 1], labels[i : i + 1])[0] for i, r in enumerate(rules)]
    return [torch.stack(g).mean(0) for g in zip(*per_sample)]


def test_a_fallback_that_drops_no_sample_leaves_the_estimate_unchanged(dense_case):
    net, x, labels, _, _ = dense_case
    plain, _ = library_grads(net, rule("HEP", beta=0.5, points=4), x, labels)
    guarded = rule("HEP", beta=0.5, points=4, fallback_tol=math.inf)
    same, _ = library_grads(net, guarded, x, labels)
    assert guarded.last_fallbacks == 0 and guarded.last_residual.shape == (len(labels),)
    assert float(guarded.last_residual.max()) < 1e-12  # 200 iterations: every complex phase sits at its fixed point
    assert all(torch.equal(a, b) for a, b in zip(plain, same))


@pytest.mark.parametrize("points, real_rule", [(4, "CEP"), (6, "CEP"), (3, "PEP"), (5, "PEP")])
def test_samples_whose_complex_phases_have_not_settled_fall_back_to_their_real_phases(dense_case, points, real_rule):
    """Even N falls back to centered EP at +-|beta|, odd N to positive EP at |beta| (its one real phase and the
    free state); the oracle relaxes each sample alone by the plain rule it should get and averages by hand."""
    net, x, labels, _, _ = dense_case
    k, beta = 4, 0.5  # short nudged phases: the samples' residuals differ
    probe = short("HEP", k, beta=beta, points=points, fallback_tol=math.inf)
    library_grads(net, probe, x, labels)
    residual = probe.last_residual
    tol = float(residual.sort().values[len(labels) // 2 - 1])  # keeps the better half
    guarded = short("HEP", k, beta=beta, points=points, fallback_tol=tol)
    grads, _ = library_grads(net, guarded, x, labels)
    dropped = (residual > tol).tolist()
    assert guarded.last_fallbacks == sum(dropped) == len(labels) // 2
    expected = by_hand(
        net,
        x,
        labels,
        [short(real_rule, k, beta=beta) if d else short("HEP", k, beta=beta, points=points) for d in dropped],
    )
    assert rel_error(grads, expected) < 1e-12
    plain, _ = library_grads(net, short("HEP", k, beta=beta, points=points), x, labels)
    assert rel_error(grads, plain) > 1e-4  # the fallback changed the estimate


def test_a_complex_phase_that_blows_up_drops_its_sample_not_the_batch(dense_case, monkeypatch):
    net, x, labels, _, _ = dense_case
    guarded = rule("HEP", beta=0.5, points=4, fallback_tol=1e-9)
    relax_phase = guarded.nudged_phase

    def blown_up(model, y, free, beta):  # the complex phase (beta = i |beta|) of sample 1 goes to nan
        result = relax_phase(model, y, free, beta)
        if isinstance(beta, complex):
            result.states[-1][1] = complex("nan")
        return result

    monkeypatch.setattr(guarded, "nudged_phase", blown_up)
    grads, _ = library_grads(net, guarded, x, labels)
    assert guarded.last_fallbacks == 1 and math.isinf(float(guarded.last_residual[1]))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    expected = by_hand(
        net, x, labels, [rule("CEP", beta=0.5) if i == 1 else rule("HEP", beta=0.5, points=4) for i in range(4)]
    )
    assert rel_error(grads, expected) < 1e-12


def test_the_fallback_refuses_a_tolerance_it_cannot_use():
    with pytest.raises(ValueError, match="fallback_tol must be None"):
        rule("HEP", points=4, fallback_tol=0.0)
    with pytest.raises(ValueError, match="static phases"):
        rule("HEP", points=4, periods=2, fallback_tol=1e-6)


def test_dynamics_without_complex_extension_are_refused_with_what_to_change():
    hard = hopfield_mlp([5, 7, 4], gains=1.0).double()
    with pytest.raises(ValueError, match=r"hard_sigmoid.*holo_hard_sigmoid.*points=2"):
        rule("HEP", points=3).check_model(hard)
    rule("HEP", points=2).check_model(hard)  # real phases only: allowed
    pooled = dchn(1, 3, 8, channels=[2, 2], activation="tanh").double()
    with pytest.raises(ValueError, match="max-pools.*pooling='softmax'"):
        rule("HEP", points=4).check_model(pooled)
    with pytest.raises(ValueError, match="points >= 2"):
        rule("HEP", points=1)
    with pytest.raises(ValueError, match="readout"):
        net = hopfield_mlp([5, 7, 4, 3], activation="tanh", readout=True).double()
        cl = get_algorithm("CL")
        x = torch.rand(2, 5, dtype=torch.float64)
        cl.gradients(net, x, one_hot(torch.tensor([0, 1]), 3, torch.float64), cl.free_phase(net, x))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_slopes_and_holomorphy(name):
    act = get_activation(name)
    m = torch.linspace(-3, 3, 61, dtype=torch.float64)[1::2].requires_grad_(True)  # avoids the kinks 0 and 1
    (auto,) = torch.autograd.grad(act.project(m).sum(), m)
    assert torch.allclose(act.slope(m.detach()), auto, atol=1e-12)
    if name in holomorphic_activations():  # Cauchy-Riemann: the derivative along i equals the one along 1
        z, h = torch.complex(m.detach(), 0.3 * torch.ones_like(m.detach())), 1e-6
        along_i = (act.project(z + 1j * h) - act.project(z - 1j * h)) / (2j * h)
        along_1 = (act.project(z + h) - act.project(z - h)) / (2 * h)
        assert float((along_i - along_1).abs().max()) < 1e-8
