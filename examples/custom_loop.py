"""Your own training loop: a dense Hopfield network trained by centered EP on the digits, in plain PyTorch style.

    python examples/custom_loop.py            # about 10 s on one CPU core

Each step relaxes the network to its free equilibrium, then to the equilibria nudged by -beta and +beta, and
writes the EP estimate of the loss gradient into ``p.grad``; the optimiser step is PyTorch's own.
"""

import torch

import eqprop
from eqprop.training.data import load_digits


def main(epochs: int = 5) -> float:
    generator = eqprop.seed_everything(0)
    data = load_digits(image_size=8)
    x_train, y_train = data.normalized("train", flatten=True).tensors
    x_test, y_test = data.normalized("test", flatten=True).tensors

    net = eqprop.hopfield_mlp([64, 128, 10], gains=0.5)
    rule = eqprop.get_algorithm("CEP", beta=0.2, free_iterations=20, nudged_iterations=8)
    optimizer = eqprop.make_optimizer(net, lrs=0.05, momentum=0.9)

    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y_train), generator=generator)
        for batch in order.split(32):
            optimizer.zero_grad()
            rule.step(net, x_train[batch], y_train[batch])  # the EP estimate, in p.grad
            optimizer.step()
        with torch.no_grad():
            error = (net(x_test, iterations=20).argmax(1) != y_test).float().mean().item()
        print(f"epoch {epoch}: test error {100 * error:.2f}%")
    return error


if __name__ == "__main__":
    main()
