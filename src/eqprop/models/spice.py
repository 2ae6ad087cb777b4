"""Deep resistive networks as SPICE circuits: netlist export and ngspice's DC operating point as an oracle.

The circuit (node names in brackets). Input i drives two voltage sources, input_gain * x_i [in{i}] and
-input_gain * x_i [in{n_in + i}] (the model's layer-0 nodes, in its order). Every nonzero conductance G_k[i, j]
is a resistor of R = 1/G between node i of layer k-1 and node j of layer k (G = 0: no element). Hidden unit j of
layer k is [h{k}_{j}], output j is [out{j}]. The bias b_k[j] is a DC current source that drives b_k[j] amperes into
its node (``I... 0 node DC b``: SPICE's current flows from its first node through the source to its second), which
is what the energy's -b . v means at a steady state (Kirchhoff: sum_i G_ij (v_i - v_j) + b_j = 0 at a free node).
The first half of each hidden layer is excitatory, v >= 0: a diode from ground (anode) to the node (cathode) conducts
when v < 0 and holds the node at 0 V; the second half is inhibitory, v <= 0: a diode from the node to ground.

Nudging. EP's beta * c/2 ||o - y||^2 adds, at output node j, a conductance c beta to a voltage source at y_j
[y{j}]: a resistor of 1/(c beta) from out{j} to y{j}. For beta < 0 that is a negative resistance, which ngspice
accepts as a linear element (in hardware, a negative-impedance converter); it is a valid circuit exactly when the
nudged energy is bounded (the model checks |c beta| < every output node's conductance sum). A clamped output (CpL)
is a voltage source on the output node. A node with no conductance at all has no defined voltage; eqprop holds it at
0 V, and the netlist grounds it with a 0 V source.

The diode models. ``IDEAL_DIODE`` (IS = 1e-14 A, N = 1e-4) is near-ideal: a conducting diode drops
N V_T ln(1 + I/IS) volts (V_T = kT/q = 25.85 mV at 27 C), so a node held at a bound sits within
N V_T ln(1 + I_max/IS) of it (1e-4 x 25.85 mV x ln(1e12 A / 1e-14 A ... ) about 0.1 mV for currents up to 1 A); a
blocking diode leaks at most IS, which moves a node by IS / (its conductance sum), below 1e-10 V here. The other
node voltages move by no more than these shifts propagated through the (contractive) resistive network.
``SMALL_SIGNAL_DIODE`` has the parameters of a 1N4148-like silicon diode from ngspice's examples (IS = 2.52 nA,
N = 1.752, RS = 0.568 ohm): it conducts only from about 0.3-0.6 V on, so it is what real diodes cost.

``netlist(net, x)`` writes the circuit with eqprop's own steady-state output voltages in its header
(``* eqprop: out3 = 0.0123456789``); ``ngspice_operating_point(text)`` runs ngspice in batch mode (``.op``, node
voltages read from an ASCII rawfile: no Python package is needed to drive it, and the rawfile keeps every digit)
and returns the node voltages.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.nudging import ClampNudge, EPNudge, Nudge
from ..errors import ConfigError
from .resistive import CoordinateDescentSolver, DeepResistiveNetwork

__all__ = [
    "SpiceCheck",
    "check_against_ngspice",
    "DiodeModel",
    "IDEAL_DIODE",
    "SMALL_SIGNAL_DIODE",
    "netlist",
    "ngspice_operating_point",
    "node_names",
    "spice_states",
    "SpiceError",
]


class SpiceError(RuntimeError):
    """ngspice is missing, failed, or did not converge; the message says which and where the netlist is."""


@dataclass(frozen=True)
class DiodeModel:
    """A SPICE junction-diode model: saturation current IS (A), emission coefficient N, series resistance RS."""

    name: str
    saturation_current: float
    emission: float
    series_resistance: float = 0.0

    def card(self) -> str:
        return (
            f".model {self.name} D(IS={self.saturation_current:.6g} N={self.emission:.6g} "
            f"RS={self.series_resistance:.6g})"
        )


IDEAL_DIODE = DiodeModel("DIDEAL", 1e-14, 1e-4)
SMALL_SIGNAL_DIODE = DiodeModel("D1N4148", 2.52e-9, 1.752, 0.568)
# ngspice's Newton iteration, tightened so that its tolerance is far below the diode model's own offset
SOLVER_OPTIONS = ".options reltol=1e-9 vntol=1e-12 abstol=1e-15 gmin=1e-15 itl1=1000"


def node_names(net: DeepResistiveNetwork) -> list[list[str]]:
    """The circuit's node names per layer: in0..in{2 n_in - 1}, h{k}_{j}, out0..out{n_out - 1}."""
    names = [[f"in{i}" for i in range(net.nodes[0])]]
    for k in range(1, net.depth):
        names.append([f"h{k}_{j}" for j in range(net.nodes[k])])
    names.append([f"out{j}" for j in range(net.nodes[-1])])
    return names


def _steady_state(net: DeepResistiveNetwork, x: Tensor, nudge: Nudge | None, iterations: int) -> list[Tensor]:
    with torch.no_grad():
        solver = CoordinateDescentSolver(schedule="asynchronous")
        return solver(net, net.init_state(x), iterations, nudge).states


def netlist(
    net: Any,
    x: Tensor,
    nudge: Nudge | None = None,
    diode: DiodeModel = IDEAL_DIODE,
    title: str = "eqprop deep resistive network",
    iterations: int = 500,
) -> str:
    """The SPICE netlist of ``net`` driven by one input ``x`` (shape (n_in,) or (1, n_in)), optionally nudged
    (``EPNudge`` with a quadratic cost, or ``ClampNudge``), with eqprop's steady-state output voltages (exact
    solver, ``iterations`` sweeps) in its header."""
    if not isinstance(net, DeepResistiveNetwork):
        raise ConfigError(
            f"a SPICE netlist is written for a deep resistive network (model=drn), got {type(net).__name__}"
        )
    x = x.detach().reshape(1, -1).to(net.conductance(1).dtype)
    if x.shape[1] != net.sizes[0]:
        raise ConfigError(f"the input has {x.shape[1]} values; this network takes {net.sizes[0]}")
    states = _steady_state(net, x, nudge, iterations)
    names = node_names(net)
    lines = [f"* {title}", "* nodes: in{i} input sources, h{layer}_{unit} hidden units, out{j} outputs"]
    lines += [f"* eqprop: {name} = {float(v):.10f}" for name, v in zip(names[-1], states[-1][0])]
    sources = net.sources(x)[0]
    for i, v in enumerate(sources):
        lines.append(f"V{names[0][i]} {names[0][i]} 0 DC {float(v):.12g}")
    for k in range(1, net.depth + 1):
        g = net.conductance(k).detach()
        rows, cols = torch.nonzero(g > 0, as_tuple=True)
        for i, j in zip(rows.tolist(), cols.tolist()):
            lines.append(f"R{k}_{i}_{j} {names[k - 1][i]} {names[k][j]} {1.0 / float(g[i, j]):.12g}")
        for j, b in enumerate(net.bias(k).detach().tolist()):
            if b != 0.0:
                lines.append(f"I{k}_{j} 0 {names[k][j]} DC {b:.12g}")
    if net.output_leak:
        lines += [f"Rleak{j} {name} 0 {1.0 / net.output_leak:.12g}" for j, name in enumerate(names[-1])]
    for k in range(1, net.depth):
        half = net.nodes[k] // 2
        for j in range(net.nodes[k]):
            anode, cathode = ("0", names[k][j]) if j < half else (names[k][j], "0")
            lines.append(f"D{k}_{j} {anode} {cathode} {diode.name}")
    lines += _nudge_elements(net, names[-1], nudge)
    lines += _grounded_nodes(net, names, nudge)
    lines += [diode.card(), SOLVER_OPTIONS, ".op", ".end"]
    return "\n".join(lines) + "\n"


def _grounded_nodes(net: DeepResistiveNetwork, names: list[list[str]], nudge: Nudge | None) -> list[str]:
    """A node with no conductance (nor a nudging one) has no defined voltage; eqprop holds it at 0 V, and so does
    the netlist, with a 0 V source (a floating node would make the circuit singular)."""
    lines = []
    cb = 0.0
    if (
        isinstance(nudge, EPNudge)
        and nudge.cost.curvature is not None
        and not isinstance(nudge.beta, (complex, Tensor))
    ):
        cb = nudge.cost.curvature * float(nudge.beta)
    for k in range(1, net.depth + 1):
        if k == net.depth and isinstance(nudge, ClampNudge):
            continue
        a = net.conductance(k).detach().sum(0)
        if k < net.depth:
            a = a + net.conductance(k + 1).detach().sum(1)
        else:
            a = a + cb + net.output_leak
        for j in torch.nonzero(a <= 0).flatten().tolist():
            lines.append(f"* {names[k][j]} has no conductance: eqprop holds it at 0 V (grounded)")
            lines.append(f"Vground_{names[k][j]} {names[k][j]} 0 DC 0")
    return lines


def _nudge_elements(net: DeepResistiveNetwork, outputs: list[str], nudge: Nudge | None) -> list[str]:
    if nudge is None:
        return []
    if isinstance(nudge, ClampNudge):
        target = nudge.target.reshape(-1)
        return [f"Vclamp{j} {name} 0 DC {float(target[j]):.12g}" for j, name in enumerate(outputs)]
    if not isinstance(nudge, EPNudge) or nudge.cost.curvature is None or isinstance(nudge.beta, (complex, Tensor)):
        raise ConfigError("a SPICE netlist takes EP nudging with a squared-error cost and a real beta, or a clamp")
    cb = nudge.cost.curvature * float(nudge.beta)
    if cb == 0.0:
        return []
    y = nudge.y.reshape(-1)
    lines = []
    for j, name in enumerate(outputs):
        lines.append(f"Vy{j} y{j} 0 DC {float(y[j]):.12g}")
        lines.append(f"Rnudge{j} {name} y{j} {1.0 / cb:.12g}")
    return lines


def ngspice_operating_point(text: str, keep: str | Path | None = None, timeout: float = 300.0) -> dict[str, float]:
    """Node voltages of a netlist's DC operating point by ngspice in batch mode. ``keep``: where to leave the
    netlist (and ngspice's log) when it fails."""
    exe = shutil.which("ngspice")
    if exe is None:
        raise SpiceError(
            "ngspice is not installed: install the Debian/Ubuntu package (apt-get install ngspice) or your "
            "system's ngspice, then run again"
        )
    with tempfile.TemporaryDirectory() as tmp:
        circuit, raw = Path(tmp) / "circuit.cir", Path(tmp) / "op.raw"
        body = text.replace("\n.op\n.end\n", "\n")
        control = f".control\nset filetype=ascii\nop\nwrite {raw} all\n.endc\n.end\n"
        circuit.write_text(body + control)
        try:
            done = subprocess.run([exe, "-b", str(circuit)], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SpiceError(_failed(text, keep, f"ngspice ran past {timeout:g} s", "")) from None
        if not raw.exists():  # batch mode exits 1 after a .control block even when the analysis ran
            raise SpiceError(
                _failed(text, keep, f"ngspice exited with code {done.returncode}", done.stdout + done.stderr)
            )
        return _read_ascii_raw(raw.read_text())


def _failed(text: str, keep: str | Path | None, what: str, log: str) -> str:
    where = ""
    if keep is not None:
        Path(keep).write_text(text)
        Path(str(keep) + ".log").write_text(log)
        where = f"; the netlist is kept in {keep} and ngspice's output in {keep}.log"
    problem = next((line.strip() for line in log.splitlines() if "rror" in line or "singular" in line.lower()), "")
    return f"{what}{': ' + problem if problem else ''}{where}"


def _read_ascii_raw(content: str) -> dict[str, float]:
    """The variables and the single point of an ASCII rawfile (``v(node)`` names become ``node``)."""
    lines = content.splitlines()
    start = lines.index("Variables:")
    stop = next(i for i in range(start, len(lines)) if lines[i].startswith("Values:"))
    names = []
    for line in lines[start + 1 : stop]:
        parts = line.split()
        if len(parts) >= 2:
            name = parts[1]
            names.append(name[2:-1] if name.lower().startswith("v(") else name)
    values = []
    for line in lines[stop + 1 :]:
        for token in line.split():
            try:
                values.append(float(token))
            except ValueError:
                continue
    # the first token of the values block is the point's index
    values = values[1 : 1 + len(names)] if len(values) > len(names) else values
    return {name.lower(): value for name, value in zip(names, values)}


def spice_states(net: DeepResistiveNetwork, x: Tensor, nudge: Nudge | None = None, **options: Any) -> list[Tensor]:
    """ngspice's steady state arranged as eqprop's states [x, v_1, ..., v_L] (float64)."""
    voltages = ngspice_operating_point(netlist(net, x, nudge, **options))
    names = node_names(net)
    out = [x.detach().reshape(1, -1).double()]
    for k in range(1, net.depth + 1):
        missing = [n for n in names[k] if n not in voltages]
        if missing:
            raise SpiceError(f"ngspice's result has no voltage for node {missing[0]}")
        out.append(torch.tensor([[voltages[n] for n in names[k]]], dtype=torch.float64))
    return out


def diode_offset_bound(diode: DiodeModel, max_current: float = 1.0, temperature: float = 300.15) -> float:
    """How far a conducting diode holds its node from the ideal bound: N V_T ln(1 + I_max / IS)."""
    thermal = 1.380649e-23 * temperature / 1.602176634e-19
    return diode.emission * thermal * math.log1p(max_current / diode.saturation_current)


@dataclass
class SpiceCheck:
    """Test images of a DRN through eqprop and ngspice: labels, eqprop's predictions at its steady state, ngspice's
    predictions and largest node-voltage differences per diode model."""

    labels: list[int]
    eqprop: list[int]
    ngspice: dict[str, list[int]]
    max_dv: dict[str, list[float]]

    def summary(self) -> list[str]:
        n = len(self.labels)
        acc = sum(p == y for p, y in zip(self.eqprop, self.labels)) / n
        lines = [f"{n} test images; eqprop (exact steady state): accuracy {100 * acc:.2f}%"]
        for name, preds in self.ngspice.items():
            agree = sum(a == b for a, b in zip(preds, self.eqprop)) / n
            acc = sum(p == y for p, y in zip(preds, self.labels)) / n
            lines.append(
                f"ngspice, {name} diode: accuracy {100 * acc:.2f}%, same prediction as eqprop {100 * agree:.2f}%, "
                f"max |dv| {max(self.max_dv[name]):.3g} V (median {sorted(self.max_dv[name])[n // 2]:.3g} V)"
            )
        return lines


def check_against_ngspice(
    net: DeepResistiveNetwork,
    images: Tensor,
    labels: Tensor,
    diodes: dict[str, DiodeModel],
    iterations: int = 500,
    jobs: int = 1,
    keep_dir: str | Path | None = None,
) -> SpiceCheck:
    """Each image's steady state by eqprop's exact solver and by ngspice with each diode model (``jobs`` ngspice
    processes at once): predictions and the largest node-voltage difference. A netlist ngspice fails on is kept in
    ``keep_dir`` (``spice_failed_{image}_{diode}.cir``, with ngspice's output beside it)."""
    from concurrent.futures import ThreadPoolExecutor

    net = net.double()
    names = node_names(net)
    texts, ours = {}, []
    for i in range(len(images)):
        x = images[i : i + 1].double()
        ours.append(_steady_state(net, x, None, iterations))
        for name, diode in diodes.items():
            texts[(i, name)] = netlist(net, x, diode=diode, iterations=iterations)

    def solve(item: tuple[tuple[int, str], str]) -> dict[str, float]:
        (i, name), text = item
        keep = None if keep_dir is None else Path(keep_dir) / f"spice_failed_{i}_{name}.cir"
        return ngspice_operating_point(text, keep=keep)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # the work is in the ngspice processes
        results = dict(zip(texts, pool.map(solve, texts.items())))
    preds: dict[str, list[int]] = {name: [] for name in diodes}
    dv: dict[str, list[float]] = {name: [] for name in diodes}
    for (i, name), volts in results.items():
        worst = 0.0
        for k in range(1, net.depth + 1):
            theirs = torch.tensor([volts[n] for n in names[k]], dtype=torch.float64)
            worst = max(worst, float((theirs - ours[i][k][0]).abs().max()))
            if k == net.depth:
                preds[name].append(int(theirs.argmax()))
        dv[name].append(worst)
    return SpiceCheck([int(y) for y in labels], [int(s[-1].argmax()) for s in ours], preds, dv)
