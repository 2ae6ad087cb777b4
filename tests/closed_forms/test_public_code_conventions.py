"""The comparative study's public code, written out here as a reference, against the library set to its five
conventions (issue 19): C = 1/2 ||o - y||^2, odd layers relaxed first, each training free phase started from the
previous step's last nudged state, biases drawn from U(+-0.5/sqrt(fan_in)), and the nudged output iterated as
o <- dPhi/do - beta (o - y). The reference is a small DCHN whose Phi is written with conv2d / max_pool2d and
relaxed by a hand loop (dPhi/ds by autograd of that Phi), trained for three steps of each of the seven rules,
TBP and RBP in float64. As in the code, each rule's second phase is the state carried to the next step (N-EP and
N-CpL relax at -beta, then at 0; TBP carries the state after its K unrolled iterations, RBP the one synchronous
step its K Almeida-Pineda steps differentiate). Each convention switched back
to the library's default must break the agreement (negative controls)."""

import math

import pytest
import torch
import torch.nn.functional as F

from eqprop import dchn, get_algorithm
from eqprop.core.nudging import get_cost
from eqprop.errors import ConfigError
from eqprop.training.config import TrainConfig
from eqprop.training.data import ImageData
from eqprop.training.trainer import evaluate
from helpers import rel_error

F64 = torch.float64
BETA, T, K, LR = 0.3, 4, 3, 0.1
# the nudging values (beta_1, beta_2) of each rule (eqs. 3, 5, 6, 8, 9) in the code's order of the phases
# (training/sgd.py: "negative" is -beta then 0); CL clamps the output to y; TBP has no nudging
RULES = {
    "CEP": (-BETA, BETA),
    "PEP": (0.0, BETA),
    "NEP": (-BETA, 0.0),
    "CCpL": (-BETA, BETA),
    "PCpL": (0.0, BETA),
    "NCpL": (-BETA, 0.0),
    "CL": (0.0, 1.0),
    "TBP": None,
    "RBP": None,
}


class PublicCodeReference:
    """A DCHN 3x8x8 -> 4x4x4 -> 6x2x2 -> 10 in the public code's conventions. The state lives in the object,
    as in the code: a training step relaxes from whatever state the previous step left."""

    def __init__(self, params):
        self.w1, self.b1, self.w2, self.b2, self.w3, self.b3 = [p.detach().clone() for p in params]
        self.state = None

    def params(self):
        return [self.w1, self.b1, self.w2, self.b2, self.w3, self.b3]

    def phi(self, x, s1, s2, o, params=None):
        w1, b1, w2, b2, w3, b3 = params or self.params()
        p1 = F.max_pool2d(F.conv2d(x, w1, padding=1), 2)
        p2 = F.max_pool2d(F.conv2d(s1, w2, padding=1), 2)
        return (
            (s1 * p1).flatten(1).sum(1)
            + (s1 * b1.view(1, -1, 1, 1)).flatten(1).sum(1)
            + (s2 * p2).flatten(1).sum(1)
            + (s2 * b2.view(1, -1, 1, 1)).flatten(1).sum(1)
            + ((s2.flatten(1) @ w3.t()) * o).sum(1)
            + (o * b3).sum(1)
        )

    def dphi(self, x, s, params=None):
        """dPhi/ds; with ``params`` (leaves requiring grad) differentiable in them and in ``s`` (for TBP): the
        partial derivatives by torch.func.grad, which treats the layers as independent inputs (autograd.grad
        at intermediate states would add the paths between them)."""
        if params is None:
            free = [t.detach().requires_grad_(True) for t in s]
            with torch.enable_grad():
                return torch.autograd.grad(self.phi(x, *free).sum(), free)
        with torch.enable_grad():
            return torch.func.grad(lambda *t: self.phi(x, *t, params=params).sum(), argnums=(0, 1, 2))(*s)

    def relax(self, x, s, iterations, beta=0.0, y=None, clamp=None, params=None):
        """Odd layers (s1 and the output) from the current state, then the even layer s2 from the fresh odd ones;
        hidden units clip(dPhi/ds, 0, 1), the output dPhi/do - beta (o - y) (dPhi/do in the free phase), or held
        at ``clamp`` (coupled and contrastive learning)."""
        s = list(s)
        if clamp is not None:
            s[2] = clamp
        for _ in range(iterations):
            g = self.dphi(x, s, params)
            s[0] = g[0].clamp(0, 1)
            if clamp is None:
                s[2] = g[2] if y is None else g[2] - beta * (s[2] - y)
            g = self.dphi(x, s, params)
            s[1] = g[1].clamp(0, 1)
        return s

    def dE_dtheta(self, x, s):
        params = [p.clone().requires_grad_(True) for p in self.params()]
        with torch.enable_grad():
            energy = 0.5 * sum(t.flatten(1).pow(2).sum(1) for t in s) - self.phi(x, *s, params=params)
            return torch.autograd.grad(energy.mean(), params)

    def zeros(self, n):
        return [torch.zeros(n, 4, 4, 4, dtype=F64), torch.zeros(n, 6, 2, 2, dtype=F64), torch.zeros(n, 10, dtype=F64)]

    def train_step(self, x, y, rule="CEP"):
        """Free phase from the carried state; the rule's two second phases from the free state (EP: nudged at
        beta_1 then beta_2; CpL and CL: output clamped to (1 - beta) o_* + beta y, hidden layers relaxed), the
        second of which stays in the network; the contrast (dE(s_2) - dE(s_1)) / (beta_2 - beta_1); a plain SGD
        step. Returns (free state, estimate)."""
        start = self.state if self.state is not None and self.state[0].shape[0] == len(x) else self.zeros(len(x))
        free = self.relax(x, start, T)
        if rule == "TBP":  # K more iterations from the free state, backprop through them; they stay in the network
            params = [p.clone().requires_grad_(True) for p in self.params()]
            with torch.enable_grad():
                s = self.relax(x, free, K, params=params)
                grads = torch.autograd.grad(0.5 * (s[2] - y).pow(2).sum(1).mean(), params)
            self.state = [t.detach() for t in s]
            for p, g in zip(self.params(), grads):
                p -= LR * g
            return free, grads
        if rule == "RBP":  # Almeida-Pineda: K vector-Jacobian products through one synchronous step from the free
            params = [p.clone().requires_grad_(True) for p in self.params()]  # state, summed; the step stays
            with torch.enable_grad():
                s = [t.clone().requires_grad_(True) for t in free]
                g = torch.autograd.grad(self.phi(x, *s, params=params).sum(), s, create_graph=True)
                step = [g[0].clamp(0, 1), g[1].clamp(0, 1), g[2]]
                v = [torch.zeros_like(s[0]), torch.zeros_like(s[1]), (s[2] - y).detach() / len(x)]  # dC/ds
                grads = [torch.zeros_like(p) for p in params]
                for _ in range(K):
                    back = torch.autograd.grad(step, s + params, grad_outputs=v, retain_graph=True)
                    v, grads = list(back[:3]), [a + b for a, b in zip(grads, back[3:])]
            self.state = [t.detach() for t in step]
            for p, g in zip(self.params(), grads):
                p -= LR * g
            return free, grads
        b1, b2 = RULES[rule]
        if rule.endswith("EP"):
            s1, s2 = (self.relax(x, free, K, b, y) for b in (b1, b2))
        else:
            s1, s2 = (self.relax(x, free, K, clamp=(1 - b) * free[2] + b * y) for b in (b1, b2))
        self.state = s2
        grads = [(a - b) / (b2 - b1) for a, b in zip(self.dE_dtheta(x, s2), self.dE_dtheta(x, s1))]
        for p, g in zip(self.params(), grads):
            p -= LR * g
        return free, grads

    def predict(self, x):
        return self.relax(x, self.zeros(len(x)), T)[2]


def _library(
    cost="half_squared_error", nudged_output="iterate", first="odd", init="persistent", rule="CEP", adjoint=None
):
    torch.manual_seed(3)
    net = dchn(3, 10, input_size=8, channels=(4, 6), gains=(1.0, 1.0, 0.9)).double()
    net.uniform_biases_(0.5)
    options = {"CL": {}, "TBP": {}, "RBP": {"adjoint": adjoint or "almeida-pineda"}}.get(rule, {"beta": BETA})
    rule = get_algorithm(
        rule,
        cost=get_cost(cost, nudged_output),
        **options,
        free_iterations=T,
        nudged_iterations=K,
        schedule="asynchronous",
        first=first,
        init=init,
    )
    return net, rule


def _batches():
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(6, 3, 8, 8, generator=gen, dtype=F64) for _ in range(3)]
    labels = [torch.randint(0, 10, (6,), generator=gen) for _ in range(3)]
    return xs, labels


def _train(net, rule, reference=None, between=None):
    """Three steps with plain SGD; the library's and (if given) the reference's free states and estimates."""
    xs, labels = _batches()
    net.train()
    out = []
    for x, lab in zip(xs, labels):
        result = rule.step(net, x, lab)
        grads = [p.grad.clone() for p in net.parameters()]
        with torch.no_grad():
            for p in net.parameters():
                p -= LR * p.grad
        ref = reference.train_step(x, F.one_hot(lab, 10).to(F64), rule.name) if reference is not None else None
        out.append((result.free.states[1:], grads, ref))
        if between is not None:
            between()
    return out


@pytest.mark.parametrize("name", list(RULES))
def test_the_library_in_the_public_code_conventions_follows_the_reference_step_by_step(name):
    net, rule = _library(rule=name)
    reference = PublicCodeReference(list(net.parameters()))
    steps = _train(net, rule, reference)
    for i, (free, grads, (ref_free, ref_grads)) in enumerate(steps):
        assert max(float((a - b).abs().max()) for a, b in zip(free, ref_free)) < 1e-12, f"free state, step {i}"
        assert rel_error(grads, ref_grads) < 1e-10, f"{name} estimate, step {i}"
    # the carried start mattered: step 2's free phase from zeros lands elsewhere after T = 4 iterations
    x2 = _batches()[0][1]
    from_zeros = reference.relax(x2, reference.zeros(6), T)
    assert max(float((a - b).abs().max()) for a, b in zip(steps[1][0], from_zeros)) > 1e-3
    # evaluation starts from zeros in both
    net.eval()
    x = torch.randn(5, 3, 8, 8, dtype=F64)
    assert float((rule.free_phase(net, x).states[-1] - reference.predict(x)).abs().max()) < 1e-12


def test_the_reference_tbp_gradient_is_the_finite_difference_of_its_own_loss():
    """The reference's TBP (autograd through its own K iterations, torch.func partials) checked by central
    differences of the loss after K hand iterations, on a few coordinates of every parameter."""
    net, _ = _library(rule="TBP")
    ref = PublicCodeReference(list(net.parameters()))
    xs, labels = _batches()
    x, y = xs[0], F.one_hot(labels[0], 10).to(F64)
    free = ref.relax(x, ref.zeros(6), T)

    def loss(params):
        saved = ref.params()
        ref.w1, ref.b1, ref.w2, ref.b2, ref.w3, ref.b3 = params
        s = ref.relax(x, free, K)
        ref.w1, ref.b1, ref.w2, ref.b2, ref.w3, ref.b3 = saved
        return float(0.5 * (s[2] - y).pow(2).sum(1).mean())

    params = [p.clone().requires_grad_(True) for p in ref.params()]
    with torch.enable_grad():
        s = ref.relax(x, free, K, params=params)
        grads = torch.autograd.grad(0.5 * (s[2] - y).pow(2).sum(1).mean(), params)
    eps, worst = 1e-6, 0.0
    for i, p in enumerate(ref.params()):
        for j in range(0, p.numel(), max(1, p.numel() // 4)):
            plus, minus = [q.clone() for q in ref.params()], [q.clone() for q in ref.params()]
            plus[i].view(-1)[j] += eps
            minus[i].view(-1)[j] -= eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            worst = max(worst, abs(fd - float(grads[i].view(-1)[j])))
    assert worst < 1e-7, worst


def test_evaluation_between_steps_leaves_the_carried_state_alone():
    net, rule = _library()
    reference = PublicCodeReference(list(net.parameters()))
    xs, labels = _batches()
    data = ImageData("probe", xs[0].float(), labels[0], xs[2].float(), labels[2], (0.0,), (1.0,), 10)
    steps = _train(net, rule, reference, between=lambda: evaluate(net, rule, data, torch.device("cpu"), dtype=F64))
    assert net.training
    for free, grads, (ref_free, ref_grads) in steps:
        assert max(float((a - b).abs().max()) for a, b in zip(free, ref_free)) < 1e-12
        assert rel_error(grads, ref_grads) < 1e-10


def test_evaluation_reports_the_reference_loss_and_error_in_float64():
    """The test pass relaxes from zeros and reports the mean cost and the top-1 error of the reference's
    prediction; a float64 network's loss keeps float64 precision (a float32 cast would be off by ~1e-8)."""
    net, rule = _library()
    reference = PublicCodeReference(list(net.parameters()))
    xs, labels = _batches()
    _train(net, rule, reference)
    images = xs[2].float()  # what ImageData holds; it hands the network float32 images cast to its dtype
    data = ImageData("probe", xs[0].float(), labels[0], images, labels[2], (0.0,), (1.0,), 10)
    metrics = evaluate(net, rule, data, torch.device("cpu"), batch_size=4, dtype=F64)
    o = reference.predict(images.double())
    loss = float(0.5 * (o - F.one_hot(labels[2], 10).to(F64)).pow(2).sum(1).mean())
    error = float((o.argmax(1) != labels[2]).double().mean())
    assert abs(metrics["loss"] - loss) < 1e-13 * loss, (metrics["loss"], loss)
    assert metrics["error"] == error


@pytest.mark.parametrize(
    "default",
    [{"cost": "squared_error"}, {"first": "even"}, {"init": "zeros"}, {"nudged_output": "exact"}],
    ids=["cost", "order", "start", "output"],
)
def test_each_convention_at_the_library_default_breaks_the_agreement(default):
    net, rule = _library(**default)
    reference = PublicCodeReference(list(net.parameters()))
    steps = _train(net, rule, reference)
    worst = max(rel_error(grads, ref_grads) for _, grads, (_, ref_grads) in steps)
    assert worst > 1e-4, default


def test_rbp_by_conjugate_gradient_is_not_the_code_s_truncated_recursion():
    """The negative control of RBP: the library's default adjoint (CG to tolerance) differs from the code's K = 3
    Almeida-Pineda steps off a fixed point (T = 4), so the reference test above tells the two apart."""
    net, rule = _library(rule="RBP", adjoint="cg")
    reference = PublicCodeReference(list(net.parameters()))
    steps = _train(net, rule, reference)
    assert max(rel_error(grads, ref_grads) for _, grads, (_, ref_grads) in steps) > 1e-4


def test_uniform_biases_are_drawn_within_half_over_sqrt_fan_in():
    torch.manual_seed(0)
    net = dchn(3, 10)  # Table 5's widths
    assert all(float(p.detach().abs().max()) == 0 for n, p in net.named_parameters() if n.endswith("bias"))
    net.uniform_biases_(0.5)
    fans = {1: 3 * 9, 2: 128 * 9, 3: 256 * 9, 4: 512 * 9, 5: 512 * 2 * 2}
    for k, fan in fans.items():
        b = net.interactions[f"bias{k}"].bias.detach()
        bound = 0.5 / math.sqrt(fan)
        assert float(b.abs().max()) <= bound
        if b.numel() >= 128:  # P(max |b| < 0.9 bound) = 0.9^128 < 2e-6
            assert float(b.abs().max()) > 0.9 * bound
            assert abs(float(b.mean())) < 4 * bound / math.sqrt(3 * b.numel())
        assert float(b.std()) > 0.3 * bound  # U(-c, c) has std c / sqrt(3) = 0.58 c
    cfg = TrainConfig(bias_init="uniform", bias_scale=0.25)
    assert cfg.model.bias_init == "uniform" and cfg.model.bias_scale == 0.25


@pytest.mark.parametrize("cost", ["squared_error", "half_squared_error"])
@torch.no_grad()
def test_iterated_and_exact_nudged_outputs_reach_the_same_fixed_point(cost):
    """Same fixed points, different paths: on a dense net (unique equilibrium) both output updates end at one
    state, a fixed point of the nudged dynamics; after one iteration they still differ."""
    from eqprop import EPNudge, hopfield_mlp, relax

    torch.manual_seed(1)
    net = hopfield_mlp((12, 9, 5), gains=(0.6, 0.6)).double()
    x = torch.rand(4, 12, dtype=F64)
    y = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).to(F64)
    free = relax(net, net.init_state(x), 200).states
    ends = {}
    for mode in ("exact", "iterate"):
        nudge = EPNudge(get_cost(cost, mode), y, 0.4)
        one = relax(net, free, 1, nudge=nudge).states
        ends[mode] = (one, relax(net, free, 400, nudge=nudge).states)
        assert float(net.fixed_point_residual(ends[mode][1], nudge).max()) < 1e-10
    assert max(float((a - b).abs().max()) for a, b in zip(ends["exact"][1], ends["iterate"][1])) < 1e-10
    assert max(float((a - b).abs().max()) for a, b in zip(ends["exact"][0], ends["iterate"][0])) > 1e-3


def test_iterated_output_refuses_a_beta_it_cannot_converge_at():
    from eqprop import EPNudge, hopfield_mlp, relax

    net = hopfield_mlp((6, 4, 3)).double()
    x = torch.rand(2, 6, dtype=F64)
    y = F.one_hot(torch.tensor([0, 1]), 3).to(F64)
    with pytest.raises(ValueError, match="needs \\|beta\\| < 1.*nudged_output='exact'"):
        relax(net, net.init_state(x), 3, nudge=EPNudge(get_cost("half_squared_error", "iterate"), y, 1.5))
    with pytest.raises(ValueError, match="needs \\|beta\\| < 0.5"):
        relax(net, net.init_state(x), 3, nudge=EPNudge(get_cost("squared_error", "iterate"), y, 0.5))
    with pytest.raises(ValueError, match="valid values are \\['exact', 'iterate'\\]"):
        get_cost("squared_error", "jump")
    with pytest.raises(ConfigError, match="config key 'beta'.*needs \\|beta\\| < 0.5"):
        TrainConfig(nudged_output="iterate", beta=0.6)
    assert TrainConfig(nudged_output="iterate", beta=0.6, cost="half_squared_error").beta == 0.6


@torch.no_grad()
def test_the_two_asynchronous_orders_settle_in_different_exact_fixed_points():
    """Even-first and odd-first relaxations of one DCHN from zeros both end at exact fixed points (residual by
    autograd of Phi below 1e-12) that differ by far more than rounding: the order picks the equilibrium, it does not
    only change the early iterates (issue 19's finding, which corrected our docs)."""
    from eqprop import relax

    torch.manual_seed(0)
    net = dchn(3, 10, input_size=16, channels=(16, 32), gains=(1.2, 1.2, 1.0)).double()
    net.uniform_biases_(0.5)
    x = torch.randn(16, 3, 16, 16, dtype=F64)
    ends = {first: relax(net, net.init_state(x), 300, first=first).states for first in ("even", "odd")}
    for states in ends.values():
        grads = net.grad_phi(states)  # autograd of Phi, not the explicit messages
        residual = [s - (g if k == len(grads) else g.clamp(0, 1)) for k, (s, g) in enumerate(zip(states[1:], grads), 1)]
        assert max(float(r.abs().max()) for r in residual) < 1e-12
    assert max(float((a - b).abs().max()) for a, b in zip(ends["even"][1:], ends["odd"][1:])) > 0.1
