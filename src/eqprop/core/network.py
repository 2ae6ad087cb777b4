"""The layered energy-based network E(theta, s) = 1/2 ||s||^2 - Phi(theta, s) (paper eqs. 18-19, 96-97).

A network is a list of :class:`~eqprop.layers.Layer` (layer 0 is the clamped input x = s_0) and a dict of
named :class:`~eqprop.interactions.Interaction` terms. States are lists ``[x, s_1, ..., s_L]`` so that
list index = layer index of the paper; the last layer is the output o, or, with a
:class:`~eqprop.core.readout.Readout`, the layer the readout's logits are read from (:meth:`output`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .interactions import Bias, Interaction, scaled_uniform_
from .layers import Layer
from .readout import Readout

__all__ = ["EnergyNetwork", "State"]

State = list[Tensor]


class EnergyNetwork(nn.Module):
    """An energy-based network; parameters are ordinary ``nn.Parameter``s named ``interactions.<name>.*``."""

    block_ends: list[int] | None = None  # VGG CRNNs: the last layer of each conv block (where KD/LE signals attach)

    def __init__(
        self, layers: Sequence[Layer], interactions: Mapping[str, Interaction], readout: Readout | None = None
    ) -> None:
        super().__init__()
        if len(layers) < 2:
            raise ValueError("a network needs an input layer and at least one free layer")
        if layers[0].activation is not None:
            raise ValueError(f"layer 0 ({layers[0].name!r}) is the input and must have activation=None")
        for k, layer in enumerate(layers[1:], start=1):
            if layer.activation is None:
                raise ValueError(f"layer {k} ({layer.name!r}) is free and needs an activation")
        self.layers = tuple(layers)
        self.interactions = nn.ModuleDict(dict(interactions))
        self.terms: dict[str, Interaction] = dict(interactions)  # the same modules, typed (Phi's terms by name)
        n = len(self.layers)
        self.into: list[list[str]] = [[] for _ in range(n)]  # interactions whose post is k
        self.out_of: list[list[str]] = [[] for _ in range(n)]  # interactions whose pre is k
        for name, inter in self.terms.items():
            if not (1 <= inter.post < n) or (inter.pre is not None and not (0 <= inter.pre < n)):
                raise ValueError(
                    f"interaction {name!r} connects layers ({inter.pre}, {inter.post}) "
                    f"but the network has layers 0..{n - 1}"
                )
            self.into[inter.post].append(name)
            if inter.pre is not None:
                self.out_of[inter.pre].append(name)
        if readout is not None and tuple(readout.in_shape) != self.layers[-1].shape:
            raise ValueError(
                f"the readout reads states of shape {readout.in_shape} but the last layer's shape is "
                f"{self.layers[-1].shape}"
            )
        self.readout = readout  # registered as a submodule when given: its parameters come last
        self._check_shapes()

    # ---- structure -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of layers including the input layer."""
        return len(self.layers)

    @property
    def output_index(self) -> int:
        return len(self.layers) - 1

    @property
    def num_classes(self) -> int:
        """Units of the output layer (classes of the readout, when there is one)."""
        return self.readout.num_classes if self.readout is not None else self.layers[-1].size

    def output(self, states: State) -> Tensor:
        """The prediction read from ``states``: the last layer's state, or the readout's logits of it."""
        return states[-1] if self.readout is None else self.readout(states[-1])

    def non_holomorphic(self) -> list[str]:
        """The parts whose dynamics have no complex extension (holomorphic EP cannot relax them), described."""
        bad = [
            f"layer {k} ({layer.name!r}) uses {layer.activation!r}"
            for k, layer in enumerate(self.layers[1:], 1)
            if not layer.sigma.holomorphic
        ]
        bad += [f"interaction {name!r} max-pools" for name, inter in self.terms.items() if not inter.holomorphic]
        return bad

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the input layer."""
        return self.layers[0].shape

    def _check_shapes(self) -> None:
        with torch.no_grad():
            states = [torch.zeros(1, *layer.shape) for layer in self.layers]
            for name, inter in self.terms.items():
                params = inter.relaxation_params()
                pre = None if inter.pre is None else states[inter.pre]
                msg, ctx = inter(pre, params)
                want = self.layers[inter.post].shape
                if msg.dim() != len(want) + 1 or any(a not in (1, b) for a, b in zip(msg.shape[1:], want)):
                    raise ValueError(
                        f"interaction {name!r} sends a message of shape {tuple(msg.shape[1:])} to "
                        f"layer {inter.post} whose shape is {want}"
                    )
                if inter.pre is not None:
                    back = inter.backward(states[inter.post], ctx, params)
                    if tuple(back.shape[1:]) != self.layers[inter.pre].shape:
                        raise ValueError(
                            f"interaction {name!r} sends a message of shape {tuple(back.shape[1:])} "
                            f"to layer {inter.pre} whose shape is {self.layers[inter.pre].shape}"
                        )

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """Parameters grouped by the layer they feed (weights into layer k and bias of k), for k = 1..L.

        These are the per-layer learning-rate groups of Table 5 ("lr conv-weight k & bias k").
        """
        groups: list[list[nn.Parameter]] = [[] for _ in range(self.num_layers - 1)]
        for name in self.interactions:
            inter = self.terms[name]
            groups[inter.post - 1].extend(inter.parameters())
        if self.readout is not None:  # the readout learns at its own rate, after the layers
            groups.append(list(self.readout.parameters()))
        return groups

    def uniform_biases_(self, scale: float = 0.5) -> None:
        """Draw every bias of layer k from U(-c, c), c = scale / sqrt(fan_in_k), fan_in_k the inputs per unit of
        the weights into k (the comparative study's public code: scale 0.5; our default init keeps zeros)."""
        for name, term in self.terms.items():
            if not isinstance(term, Bias):
                continue
            fans = [self.terms[n].fan_in for n in self.into[term.post]]
            fan_in = sum(f for f in fans if f is not None)
            if fan_in < 1:
                raise ValueError(f"bias {name!r} of layer {term.post} has no incoming weights to take a fan-in from")
            scaled_uniform_(term.bias, scale, fan_in)

    # ---- states ----------------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        want = self.layers[0].shape
        if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, want))})")

    def init_state(
        self, x: Tensor, mode: str = "zeros", dtype: torch.dtype | None = None, generator: torch.Generator | None = None
    ) -> State:
        """Initial state [x, s_1..s_L]: zeros, or uniform in [0, 1] for hidden layers (output starts at 0)."""
        self.check_input(x)
        dtype = dtype or x.dtype
        batch = x.shape[0]
        states = [x.to(dtype)]
        for k, layer in enumerate(self.layers[1:], start=1):
            if mode == "zeros" or k == self.output_index:
                states.append(torch.zeros(batch, *layer.shape, dtype=dtype, device=x.device))
            elif mode == "uniform":
                states.append(torch.rand(batch, *layer.shape, dtype=dtype, device=x.device, generator=generator))
            else:
                raise ValueError(f"unknown initial state mode {mode!r}; valid modes are ['uniform', 'zeros']")
        return states

    def free_phase(self, x: Tensor, solver: Any, iterations: int, init: str = "zeros") -> Any:
        """The free phase: ``iterations`` of ``solver`` (a :class:`~eqprop.core.relaxation.Solver`) from the
        initial state ``init`` without nudging; returns its :class:`~eqprop.core.relaxation.RelaxResult`."""
        return solver(self, self.init_state(x, init), iterations)

    def forward(self, x: Tensor, iterations: int = 60, **settings: Any) -> Tensor:
        """The prediction at the free equilibrium, as ``nn.Module`` users expect from ``net(x)``: ``iterations``
        relaxation steps from zeros with the library's default free phase (the message solver, asynchronous
        schedule, even layers first, T = 60 as a learning rule's ``free_iterations``; ``settings`` are
        :func:`~eqprop.core.relaxation.relax`'s keywords), without gradients; returns the readout's logits or the
        output layer. Training goes through a learning rule's ``step``."""
        from .relaxation import relax

        with torch.no_grad():
            result = relax(self, self.init_state(x), iterations, **settings)
        return self.output(result.states)

    # ---- energy ----------------------------------------------------------------------------------------
    def phi(self, states: State) -> Tensor:
        """Primitive function Phi(theta, s) per sample (eq. 97), through differentiable ops."""
        total = torch.zeros(states[0].shape[0], dtype=states[-1].dtype, device=states[0].device)
        for inter in self.terms.values():
            pre = None if inter.pre is None else states[inter.pre]
            total = total + inter.phi(pre, states[inter.post])
        return total

    def energy(self, states: State) -> Tensor:
        """Energy E = 1/2 sum_k ||s_k||^2 - Phi (eq. 96) per sample; the input layer is not counted."""
        sq = sum(s.flatten(1).pow(2).sum(1) for s in states[1:])
        return 0.5 * sq - self.phi(states)

    def grad_phi(self, states: State, create_graph: bool = False) -> list[Tensor]:
        """Partial derivatives dPhi/ds_k for k = 1..L by autograd (the reference for the explicit messages).

        With ``create_graph`` the result stays differentiable w.r.t. parameters and earlier states
        (``torch.func.grad`` keeps these partial, unlike autograd.grad on states linked to each other).
        """
        x = states[0]

        def total_phi(free: list[Tensor]) -> Tensor:
            return self.phi([x] + free).sum()

        if create_graph:
            return list(torch.func.grad(total_phi)(list(states[1:])))
        with torch.enable_grad():
            free = [s.detach().requires_grad_(True) for s in states[1:]]
            return list(torch.autograd.grad(total_phi(free), free))

    def messages(self, states: State, dtype: torch.dtype | None = None) -> list[Tensor | None]:
        """dPhi/ds_k for k = 1..L through the explicit messages of the interactions (index 0 is None)."""
        total: list[Tensor | None] = [None] * self.num_layers
        for inter in self.terms.values():
            params = inter.relaxation_params(dtype)
            pre = None if inter.pre is None else states[inter.pre]
            msg, ctx = inter(pre, params)
            have = total[inter.post]
            total[inter.post] = msg if have is None else have + msg
            if inter.pre is not None and inter.pre > 0:
                back = inter.backward(states[inter.post], ctx, params)
                have = total[inter.pre]
                total[inter.pre] = back if have is None else have + back
        return [None] + [m if m is None else m.expand_as(s) for m, s in zip(total[1:], states[1:])]

    def nudged_energy(self, states: State, nudge: Any = None) -> Tensor:
        """F = E + beta C (eq. 4) per sample, with a nudge's hidden-layer terms; E alone without a ``nudge``.
        Complex states give the holomorphic continuation of F."""
        e = self.energy(states)
        return e if nudge is None else e + nudge.extra_energy(states[-1]) + nudge.hidden_energy(states)

    def energy_param_grads(self, states: State, nudge: Any = None) -> list[Tensor]:
        """dE/dtheta at ``states`` (batch mean), in ``self.parameters()`` order; states are treated as constants.

        With a ``nudge``, dF/dtheta of the nudged energy: the term beta C depends on the parameters through a
        readout (the estimate for the readout's weights comes from it)."""
        params = list(self.parameters())
        fixed = [s.detach().to(params[0].dtype) for s in states]
        with torch.enable_grad():
            e = self.nudged_energy(fixed, nudge)
            return list(torch.autograd.grad(e.mean(), params, allow_unused=True))

    @torch.no_grad()
    def fixed_point_residual(self, states: State, nudge: Any = None) -> Tensor:
        """Per-sample ||s - sigma(dPhi/ds)|| over all free layers (with a ``nudge``: the nudged phase's update;
        complex states: the modulus): zero exactly at a fixed point (eq. 98)."""
        msgs = self.messages(states)
        sq = torch.zeros(states[0].shape[0], dtype=states[-1].real.dtype, device=states[0].device)
        for k in range(1, self.num_layers):
            m = msgs[k]
            assert m is not None, f"layer {k} receives no message"
            sigma = self.layers[k].sigma
            if nudge is not None and k == self.output_index:
                target = nudge.output_update(m, states[k], sigma)
            elif nudge is not None and k in nudge.hidden_layers:
                target = sigma.project(m - nudge.layer_force(k, states[k]))
            else:
                target = sigma.project(m)
            sq = sq + (states[k] - target).abs().flatten(1).pow(2).sum(1)
        return sq.sqrt()
