import pytest
import torch

from eqprop import ClampNudge, EPNudge, SquaredError, dchn, get_algorithm, one_hot, relax
from helpers import cosine, max_diff, rel_error, small_conv, small_mlp


@pytest.mark.parametrize("make", [small_mlp, small_conv])
@pytest.mark.parametrize("schedule", ["synchronous", "asynchronous"])
def test_free_state_is_a_fixed_point(make, schedule):
    net, x, _ = make()
    r = relax(net, net.init_state(x), 300, schedule=schedule)
    assert float(net.fixed_point_residual(r.states).max()) < 1e-10
    # and it is not trivially zero: some hidden units are strictly inside the box
    assert any(bool(((s > 0) & (s < 1)).any()) for s in r.states[1:-1])


@pytest.mark.parametrize("schedule", ["synchronous", "asynchronous"])
@pytest.mark.parametrize("first", ["even", "odd"])
@pytest.mark.parametrize("nudge_kind", [None, "ep", "clamp"])
def test_message_engine_matches_autograd_reference(schedule, first, nudge_kind):
    net, x, labels = small_conv()
    y = one_hot(labels, 5, torch.float64)
    start = net.init_state(x, "uniform")
    nudge = {None: None, "ep": EPNudge(SquaredError(), y, 0.3), "clamp": ClampNudge(y)}[nudge_kind]
    a = relax(net, start, 7, schedule=schedule, first=first, nudge=nudge, engine="messages")
    b = relax(net, start, 7, schedule=schedule, first=first, nudge=nudge, engine="autograd")
    assert max_diff(a.states, b.states) < 1e-12


def test_both_parity_orders_reach_the_same_fixed_point_but_differ_early():
    net, x, _ = small_mlp()
    even = relax(net, net.init_state(x), 300, first="even").states
    odd = relax(net, net.init_state(x), 300, first="odd").states
    assert max_diff(even, odd) < 1e-10
    assert (
        max_diff(
            relax(net, net.init_state(x), 2, first="even").states, relax(net, net.init_state(x), 2, first="odd").states
        )
        > 1e-3
    )


def _iterations_to(net, x, schedule, tol):
    r = relax(net, net.init_state(x), 500, schedule=schedule, record=True)
    hits = [i for i, res in enumerate(r.trajectory.residual, start=1) if res < tol]
    assert hits, f"{schedule} never reached residual {tol}"
    return hits[0]


def test_asynchronous_converges_in_fewer_iterations_than_synchronous_on_a_dchn():
    torch.manual_seed(3)
    net = dchn(1, 10, channel_multiplier=1 / 16)  # 32x32 input, 4 conv layers, Table 5 gains 0.5
    x = torch.randn(16, 1, 32, 32)
    n_sync = _iterations_to(net, x, "synchronous", 1e-4)
    n_async = _iterations_to(net, x, "asynchronous", 1e-4)
    assert n_async < n_sync


def test_tolerance_stops_early_and_reports_iterations():
    net, x, _ = small_mlp()
    r = relax(net, net.init_state(x), 500, tol=1e-9)
    assert 1 < r.iterations < 500
    assert float(net.fixed_point_residual(r.states).max()) < 1e-7


def test_asynchronous_block_updates_never_increase_energy_on_dense_net():
    net, x, labels = small_mlp()
    y = one_hot(labels, 5, torch.float64)
    r = relax(net, net.init_state(x, "uniform"), 40, nudge=EPNudge(SquaredError(), y, 0.5), record=True)
    e = r.trajectory.energy
    assert all(b <= a + 1e-12 for a, b in zip(e, e[1:]))
    assert e[0] > e[-1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_relaxation_is_real_and_close_to_fp32(dtype):
    net = dchn(1, 10, input_size=16, channels=(8, 16, 16))
    x = torch.randn(4, 1, 16, 16)
    low = relax(net, net.init_state(x), 30, dtype=dtype)
    ref = relax(net, net.init_state(x), 30)
    assert all(s.dtype == dtype for s in low.states)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # rounding only: every state within 2 ulps of its dtype (states in [0, 1]; measured 1.02 ulp for bf16 and
    # 0.99 ulp for fp16 after 30 iterations), the input within half an ulp of its own magnitude
    eps = torch.finfo(dtype).eps
    assert max_diff([s.float() for s in low.states[1:]], ref.states[1:]) < 2 * eps
    assert bool(((low.states[0].float() - x).abs() <= 0.5 * eps * x.abs()).all())


def test_bad_relaxation_arguments():
    net, x, _ = small_mlp()
    with pytest.raises(ValueError, match="valid schedules"):
        relax(net, net.init_state(x), 3, schedule="random")
    with pytest.raises(ValueError, match="valid engines"):
        relax(net, net.init_state(x), 3, engine="jax")
    with pytest.raises(ValueError, match="valid dtypes"):
        relax(net, net.init_state(x), 3, dtype="float8")
    with pytest.raises(ValueError, match="beta > -0.5"):
        y = torch.zeros(8, 5, dtype=torch.float64)
        relax(net, net.init_state(x), 3, nudge=EPNudge(SquaredError(), y, -0.6))


def test_nudges_describe_what_a_captured_phase_bakes_in():
    y = torch.eye(3)
    ep = EPNudge(SquaredError(), y, 0.25)
    assert ep.capture_key() != EPNudge(SquaredError(), y, -0.25).capture_key()  # beta is baked into a graph
    assert ep.capture_key() == EPNudge(SquaredError(), 2 * y, 0.25).capture_key()  # the target is copied in
    buf = torch.zeros(3, 3)
    assert ep.with_tensor(buf).tensor is buf and ep.with_tensor(buf).beta == 0.25
    clamp = ClampNudge(y)
    assert clamp.with_tensor(buf).tensor is buf and clamp.capture_key() != ep.capture_key()


@pytest.mark.parametrize("make", [small_mlp, small_conv])
@pytest.mark.parametrize("nudge_kind", ["ep", "clamp"])
@pytest.mark.parametrize("schedule", ["synchronous", "asynchronous"])
def test_deviation_mode_in_full_precision_is_the_same_relaxation(make, nudge_kind, schedule):
    # s = s0 + d with P(A s0 + A d) and A^T(P^T s - P^T s0) + A^T P^T s0 is an exact rewriting of the messages
    net, x, labels = make()
    y = one_hot(labels, 5, torch.float64)
    free = relax(net, net.init_state(x), 40, schedule=schedule).states
    nudge = EPNudge(SquaredError(), y, 0.3) if nudge_kind == "ep" else ClampNudge(y)
    plain = relax(net, free, 12, nudge=nudge, schedule=schedule).states
    dev = relax(net, free, 12, nudge=nudge, schedule=schedule, deviation=True).states
    assert max_diff(plain, dev) < 1e-12
    assert max_diff(plain, free) > 1e-3  # the nudged phase did move


def test_deviation_mode_keeps_the_contrast_that_16bit_states_lose():
    # From the same bf16 free state, nudged phases in deviation mode (fp32 states, bf16 convolutions of s - s0)
    # give the C-EP update of fp32 nudged phases; bf16 nudged phases lose the first layers' contrast.
    torch.manual_seed(0)
    net = dchn(3, 10, channel_multiplier=0.125)
    x, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    y = one_hot(labels, 10)
    free = relax(net, net.init_state(x), 60, dtype="bfloat16").states

    def update(**kw):
        s = [relax(net, free, 15, nudge=EPNudge(SquaredError(), y, b), **kw).states for b in (-0.25, 0.25)]
        assert all(
            t.dtype == (torch.bfloat16 if kw.get("dtype") == "bfloat16" and not kw.get("deviation") else torch.float32)
            for t in s[0]
        )
        g = [net.energy_param_grads(t) for t in s]
        return [(a - b) / 0.5 for a, b in zip(g[1], g[0])]

    full = update(dtype="float32")
    dev = update(dtype="bfloat16", deviation=True)
    same = update(dtype="bfloat16")
    assert min(cosine(a, b) for a, b in zip(dev, full)) > 0.999
    assert min(cosine(a, b) for a, b in zip(same, full)) < 0.9  # the test can tell the two apart


def test_deviation_mode_needs_the_message_engine():
    net, x, _ = small_mlp()
    with pytest.raises(ValueError, match="deviation mode needs engine='messages'"):
        relax(net, net.init_state(x), 3, engine="autograd", deviation=True)


@pytest.mark.parametrize("name", ["CL", "PEP", "CEP", "CCpL", "TBP"])
def test_fast_engine_gives_the_autograd_reference_updates_in_fp32(name):
    # the learning rules' updates, not only the states, are the same on both engines in single precision
    net, x, labels = small_conv()
    net = net.float()
    x = x.float()
    kw = dict(free_iterations=30, nudged_iterations=8, **({} if name == "TBP" else {"beta": 0.2}))
    a = get_algorithm(name, engine="messages", **kw).step(net, x, labels).grads
    b = get_algorithm(name, engine="autograd", **kw).step(net, x, labels).grads
    assert all(g.dtype == torch.float32 for g in a)
    assert rel_error(a, b) < 1e-5  # measured 1e-7 to 3e-6 (fp32 rounding divided by beta)
    assert all(float(g.norm()) > 1e-2 for g in b)  # every layer gets a real update
