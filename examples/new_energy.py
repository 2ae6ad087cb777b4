"""A new energy term in a few lines: a low-rank dense coupling s_post^T U V^T s_pre between two layers.

    python examples/new_energy.py

An interaction gives its value phi(pre, post) and its linear map A pre with the transpose A^T u; the relaxation
solvers and every learning rule then use it. The script checks the messages the solver uses against autograd of
phi, then trains a network that couples its input to its hidden layer through the new term.
"""

import math

import torch
from torch import Tensor, nn

import eqprop
from eqprop import Bias, Dense, EnergyNetwork, Interaction, Layer, register_interaction
from eqprop.training.data import load_digits


@register_interaction("low_rank")
class LowRank(Interaction):
    """s_post^T U V^T s_pre with U (post x r) and V (pre x r): a dense coupling of rank r."""

    def __init__(self, pre: int, post: int, pre_size: int, post_size: int, rank: int, gain: float = 0.5) -> None:
        super().__init__(pre, post)
        self.u = nn.Parameter(torch.empty(post_size, rank).uniform_(-1, 1) * gain / math.sqrt(rank))
        self.v = nn.Parameter(torch.empty(pre_size, rank).uniform_(-1, 1) * gain / math.sqrt(pre_size))

    @property
    def fan_in(self) -> int:
        return self.v.shape[0]

    def phi(self, pre: Tensor | None, post: Tensor) -> Tensor:
        assert pre is not None
        return ((post @ self.u) * (pre @ self.v)).sum(1)

    def linear(self, pre: Tensor | None, params: tuple[Tensor, ...]) -> Tensor:
        u, v = params
        return (pre @ v) @ u.t()

    def linear_t(self, grad_post: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        u, v = params
        return (grad_post @ u) @ v.t()


def network(rank: int = 16) -> EnergyNetwork:
    layers = [Layer("x", (64,), None), Layer("h", (128,), "hard_sigmoid"), Layer("o", (10,), "identity")]
    terms = {
        "in": LowRank(0, 1, 64, 128, rank),
        "out": Dense(1, 2, (128,), (10,)),
        "b1": Bias(1, (128,)),
        "b2": Bias(2, (10,)),
    }
    return EnergyNetwork(layers, terms)


def main(epochs: int = 5) -> float:
    generator = eqprop.seed_everything(0)
    net = network()
    # the messages the solver uses equal autograd of Phi at a random state
    states = [torch.rand(4, 64), torch.rand(4, 128), torch.rand(4, 10)]
    by_messages = net.messages(states)
    by_autograd = net.grad_phi(states)
    for k in (1, 2):
        assert torch.allclose(by_messages[k], by_autograd[k - 1], atol=1e-5), k
    print("messages = autograd of Phi: ok")

    data = load_digits(image_size=8)
    x_train, y_train = data.normalized("train", flatten=True).tensors
    x_test, y_test = data.normalized("test", flatten=True).tensors
    rule = eqprop.get_algorithm("CEP", beta=0.2, free_iterations=20, nudged_iterations=8)
    optimizer = eqprop.make_optimizer(net, lrs=0.05, momentum=0.9)
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(y_train), generator=generator).split(32):
            optimizer.zero_grad()
            rule.step(net, x_train[batch], y_train[batch])
            optimizer.step()
        error = (net(x_test, iterations=20).argmax(1) != y_test).float().mean().item()
        print(f"epoch {epoch}: test error {100 * error:.2f}%")
    return error


if __name__ == "__main__":
    main()
