"""Post-training pruning without fine-tuning: least-squares re-fit and BatchNorm re-estimation.

After surgery a layer that read pruned channels (a *consumer*: ``aten.linear`` or a dense,
non-transposed ``conv1d``/``conv2d``) computes its output from fewer inputs. Following He et
al. (2017, "Channel pruning for accelerating very deep neural networks") its weights are
re-fitted, on calibration inputs only (no labels), so that its output matches the unpruned
model's. Let ``X`` hold the consumer's inputs in the *pruned* model, one row per output
position (a linear's rows; a conv's im2col patches, ``F.unfold``, so a k×k conv is a linear
map on ``C·k²`` features and channel ``c`` owns features ``c·k² … (c+1)·k² − 1``), and ``Y``
the *unpruned* model's output of the same layer on the same data. The new weights ``Θ``
(``W'ᵀ``, with a bias row where there is an intercept) solve the ridge problem

    min ‖X Θ − Y‖² + λ ‖Θ − Θ₀‖²,   i.e.   (XᵀX + λI) Θ = XᵀY + λ Θ₀,

with ``Θ₀`` the sliced weights and ``λ = damping · mean(diag XᵀX)`` (scale-free; default
``damping = 0.01``, the 1 % dampening GPTQ and OBC use for the same normal equations). Why
ridge *towards the sliced weights* and not towards zero: with a few hundred calibration
images a 3×3 conv on 256 channels sees 4 096 patches for 2 304 features, so ``XᵀX`` is
ill-conditioned; directions the data does not pin down then keep their trained values
instead of shrinking, and the objective at ``Θ`` is never above that at ``Θ₀`` — the re-fit
never makes a layer's calibration error worse (tested). With nothing removed and ``Y = XΘ₀``
the solution is ``Θ₀`` exactly. The system is solved by Cholesky (positive definite for
``λ > 0``), ``torch.linalg.lstsq`` when ``λ = 0``.

``X`` comes from the pruned model with every earlier consumer already re-fitted: layers are
fitted in graph order, so a layer also corrects the error that reaches it from above (He et
al.'s sequential form). To that end the pruned graph and a copy of the unpruned one are run
*in lockstep*, node by node over all calibration batches at once (``Lockstep``): when the
pruned graph reaches a consumer, ``XᵀX`` and ``XᵀY`` are accumulated over the batches, the
weights are solved and written in place, and only then does the node run. Memory is that of
one batch of ``calibration_samples`` inputs per graph.

Intercept: a layer with a bias refits it (a column of ones in ``X``). A biasless conv whose
only user is an eval-mode BatchNorm gets one too: ``BN(Wx + c) = BN'(Wx)`` with the running
mean lowered by ``c``, exactly; otherwise there is none.

BatchNorm re-estimation (``recalibrate_bn``): pruning and re-fitting shift what the
BatchNorms after them see, so, in the same lockstep run, each eval-mode BatchNorm downstream
of a changed layer gets running mean and (unbiased) variance from its pooled calibration
inputs, in graph order, so a later BatchNorm sees earlier ones already re-estimated. Why by
hand and not ``aten.batch_norm`` in training mode (what ``recover``'s ``bn: train`` does):
training mode normalises each batch with its own statistics, so a later BatchNorm would see
activations normalised differently from eval mode, and its running averages follow a
momentum (0.1 in every captured graph) that 8 calibration batches do not wash out: the
captured statistics would still weigh 0.9⁸ = 43 %. Pooled statistics over all
calibration samples, with the earlier layers already in eval form, are what the pruned model
computes with afterwards. If BatchNorm was folded first (``fold_batchnorm`` before
``prune``) there is none left to re-estimate; the folded conv's bias is re-fitted instead.

Refused, with the reason: consumers of other kinds (``x @ W``, einsum, grouped, transposed or
3-d convs, a string padding) and layers whose weight another node also reads (a tied
embedding and LM head): their weights stay as sliced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node

from graphopt.ir import get_tensor, is_op, module_path, set_tensor
from graphopt.pruning.dependency import arg, op_name, val
from graphopt.pruning.groups import PruningGroup
from graphopt.pruning.surgery import removed_positions

__all__ = [
    "MAX_FEATURES",
    "Consumer",
    "Lockstep",
    "RefitReport",
    "consumer_of",
    "intercept_of",
    "is_eval_batch_norm",
    "refit_pruned",
    "solve_ridge",
]

aten = torch.ops.aten
_BN = (aten.batch_norm,)
MAX_FEATURES = 8192
"""A consumer's normal equations hold a features² float64 matrix: 8192² is 512 MiB (a
VGG classifier on 512 × 7 × 7 flattened features would need 4.8 GiB, so it is refused)."""


# --------------------------------------------------------------------------- consumers


@dataclass(frozen=True)
class Consumer:
    """A layer as a linear map on feature rows: a linear, or a conv through im2col.

    ``kernel`` is () for a linear; for a conv, its spatial kernel, stride, padding and
    dilation (1-d convs are run as 2-d ones of height 1).
    """

    node: str
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        """Features per input channel (k² for a k×k conv, 1 for a linear)."""
        return math.prod(self.kernel)

    def features(self, x: Tensor) -> Tensor:
        """``(rows, in·width)``: one row per output position."""
        if not self.kernel:
            return x.reshape(-1, x.shape[-1])
        if len(self.kernel) == 1:
            x, lift = x.unsqueeze(-2), (lambda t: (1, *t))
        else:
            lift = tuple
        cols = F.unfold(
            x,
            lift(self.kernel),
            dilation=lift(self.dilation),
            padding=(0, *self.padding) if len(self.kernel) == 1 else self.padding,
            stride=lift(self.stride),
        )
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def outputs(self, y: Tensor) -> Tensor:
        """``(rows, out)`` in the row order of ``features``."""
        if not self.kernel:
            return y.reshape(-1, y.shape[-1])
        return y.movedim(1, -1).reshape(-1, y.shape[1])

    def positions(self, channels: Sequence[int]) -> Tensor:
        """The feature columns that input channels ``channels`` own."""
        base = torch.as_tensor(list(channels), dtype=torch.long)[:, None] * self.width
        return (base + torch.arange(self.width)).flatten()


def consumer_of(node: Node) -> Consumer | str:
    """The node as a ``Consumer``, or why it cannot be one (a refusal reason)."""
    weight = val(node.args[1]) if len(node.args) > 1 else None
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        features = math.prod(int(s) for s in weight.shape[1:])
        if features > MAX_FEATURES:
            return f"{features} input features, over the {MAX_FEATURES} refit handles"
    packet = getattr(node.target, "overloadpacket", None)
    if packet is aten.linear:
        return Consumer(node.name)
    if packet not in (aten.conv1d, aten.conv2d, aten.convolution):
        return f"{op_name(node)} reads pruned channels; refit handles linear and dense conv1d/2d"
    if packet is aten.convolution:
        if arg(node, 6, "transposed", False):
            return "a transposed conv: refit handles dense conv1d/2d"
        groups = arg(node, 8, "groups", 1)
    else:
        groups = arg(node, 6, "groups", 1)
    weight = val(node.args[1])
    spatial = weight.dim() - 2 if isinstance(weight, Tensor) else 0
    padding = arg(node, 4, "padding", 0)
    if groups != 1 or spatial not in (1, 2) or isinstance(padding, str):
        what = f"groups={groups}" if groups != 1 else f"padding={padding!r}"
        what = what if spatial in (1, 2) else f"a {spatial}-d conv"
        return f"{op_name(node)} with {what}: refit handles dense conv1d/2d"

    def per_dim(value: object, default: int) -> tuple[int, ...]:
        value = default if value is None else value
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(int(v) for v in (items * spatial if len(items) == 1 else items))

    return Consumer(
        node.name,
        kernel=tuple(int(k) for k in weight.shape[2:]),
        stride=per_dim(arg(node, 3, "stride", 1), 1),
        padding=per_dim(padding, 0),
        dilation=per_dim(arg(node, 5, "dilation", 1), 1),
    )


def intercept_of(node: Node) -> str | None:
    """``"bias"``, ``"bn"`` (absorbed by the only user, an eval BatchNorm) or None."""
    if arg(node, 2, "bias") is not None:
        return "bias"
    users = list(node.users)
    if len(users) == 1 and is_eval_batch_norm(users[0]) and users[0].args[0] is node:
        return "bn"
    return None


def is_eval_batch_norm(node: Node) -> bool:
    """An ``aten.batch_norm`` in eval form with running statistics (what capture gives)."""
    return (
        is_op(node, _BN)
        and len(node.args) > 5
        and node.args[5] is False
        and isinstance(node.args[3], Node)
        and isinstance(node.args[4], Node)
    )


def _shared_weight(gm: GraphModule, node: Node) -> str | None:
    """Why this layer's weight cannot be re-fitted alone (a tie, a computed weight), or None."""
    attr = node.args[1]
    weight = get_tensor(gm, attr)
    if weight is None:
        return "its weight is computed, not a parameter"
    if any(user is not node for user in attr.users):
        return f"another node also reads its weight {attr.target}"
    for name, tensor in gm.named_parameters(remove_duplicate=False):
        if tensor is weight and name != str(attr.target):
            return f"its weight {attr.target} is tied to {name}"
    return None


# --------------------------------------------------------------------------- lockstep runs


class Lockstep:
    """Runs a graph node by node on every calibration batch at once.

    One ``torch.fx.Interpreter`` per batch, advanced together: before a node runs, a caller
    can read its inputs on all batches and change parameters in place (the environments
    hold the same tensors, so the change is seen). Values are freed after their last use,
    as ``Interpreter.run`` does.
    """

    def __init__(self, gm: GraphModule, batches: Sequence[tuple[Tensor, ...]]) -> None:
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.position = 0
        self.runs = []
        for batch in batches:
            run = Interpreter(gm)
            run.env = {}
            run.args_iter = iter(gm.graph.process_inputs(*batch))
            self.runs.append(run)

    def values(self, node: object) -> list[object]:
        """``node``'s value on every batch (a constant stays a constant)."""
        if not isinstance(node, Node):
            return [node] * len(self.runs)
        return [run.env[node] for run in self.runs]

    def step(self) -> Node:
        """Run the next node on every batch; returns it."""
        node = self.nodes[self.position]
        self.position += 1
        for run in self.runs:
            run.env[node] = run.run_node(node)
        for run in self.runs:
            for dead in run.user_to_last_uses.get(node, []):
                del run.env[dead]
        return node

    def run_through(self, name: str) -> list[object]:
        """Run up to and including the node called ``name``; its fresh value per batch.

        Read at once: an in-place op further on (``relu_``) may overwrite it.
        """
        while True:
            node = self.nodes[self.position]
            if node.op == "output":
                raise KeyError(f"node {name!r} not found in the graph")
            self.step()
            if node.name == name:
                return self.values(node)


# --------------------------------------------------------------------------- solving


def solve_ridge(gram: Tensor, cross: Tensor, start: Tensor, damping: float) -> Tensor:
    """``(G + λI)⁻¹ (C + λ Θ₀)`` with ``λ = damping · mean(diag G)`` (float64).

    ``lstsq`` for ``damping = 0`` (a singular ``G`` then gets the minimum-norm solution).
    """
    scale = float(gram.diagonal().mean()) if gram.numel() else 0.0
    lam = damping * (scale if scale > 0 else 1.0)
    if lam <= 0:
        return torch.linalg.lstsq(gram, cross, driver="gelsd").solution
    system = gram + lam * torch.eye(len(gram), dtype=gram.dtype)
    rhs = cross + lam * start
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(system, rhs, driver="gelsd").solution


@dataclass
class _Fit:
    """What the normal equations of one consumer accumulate over the calibration batches."""

    consumer: Consumer
    keep_out: Tensor
    intercept: str | None
    gram: Tensor | None = None
    cross: Tensor | None = None
    energy: float = 0.0

    def add(self, x: Tensor, y: Tensor) -> None:
        rows = self.consumer.features(x)
        if self.intercept is not None:
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], 1)
        target = self.consumer.outputs(y)[:, self.keep_out].to(rows.dtype)
        # float32 products accumulated in float64. Measured on a MiniLM FFN input (8 192 ×
        # 1 536, one thread): 3.0 s against 6.8 s in float64, max deviation 4e-7 of the
        # largest entry, far below the 1e-2 damping
        gram, cross = (rows.T @ rows).double(), (rows.T @ target).double()
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.energy += float(target.double().square().sum())

    def error(self, theta: Tensor) -> float:
        """Relative squared error ``‖XΘ − Y‖² / ‖Y‖²`` from the accumulated sums."""
        value = (theta * (self.gram @ theta)).sum() - 2 * (theta * self.cross).sum()
        return max(float(value) + self.energy, 0.0) / max(self.energy, 1e-300)


@dataclass
class RefitReport:
    """Rows per re-fitted layer, refusals, and how many BatchNorms were re-estimated."""

    rows: list[dict[str, object]] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)
    batchnorms: int = 0


def refit_pruned(
    student: GraphModule,
    teacher: GraphModule | None,
    groups: Iterable[PruningGroup],
    removals: Mapping[str, Sequence[int]],
    batches: Sequence[tuple[Tensor, ...]],
    *,
    damping: float = 0.01,
    recalibrate_bn: bool = False,
) -> RefitReport:
    """Re-fit ``student``'s consumers of removed channels (``teacher``: the graph before the
    surgery; None: no re-fit) and re-estimate its BatchNorms, in place, in one lockstep run.
    """
    report = RefitReport()
    removed = removed_positions(groups, removals)
    nodes = {n.name: n for n in student.graph.nodes}
    fits = _fits(student, removed, report) if teacher is not None else {}
    changed = {name for (name, _), (_, _, gone) in removed.items() if gone}
    norms = _downstream_batchnorms(student, changed) if recalibrate_bn else set()
    if not fits and not norms:
        return report
    _own_written_tensors(student, nodes, fits, norms)
    run = Lockstep(student, batches)
    reference = Lockstep(teacher, batches) if fits else None
    with torch.no_grad():
        while run.position < len(run.nodes):
            node = run.nodes[run.position]
            if node.name in fits:
                fit = fits[node.name]
                for x, y in zip(
                    run.values(node.args[0]), reference.run_through(node.name), strict=True
                ):
                    fit.add(x, y)
                report.rows.append(_apply(student, nodes[node.name], fit, damping))
            elif node in norms:
                _recalibrate(student, node, run.values(node.args[0]))
                report.batchnorms += 1
            run.step()
    return report


def _own_written_tensors(
    gm: GraphModule, nodes: Mapping[str, Node], fits: Mapping[str, _Fit], norms: set[Node]
) -> None:
    """Give ``gm`` private copies of the tensors the lockstep run writes in place.

    Why: the pass manager's graphs share unchanged tensors with the original
    (``graphopt.sharing``); a BatchNorm after a re-fitted layer whose own channels were not
    pruned still holds the original's buffers, and writing into them would change the
    original too. Copying before the run (not replacing while it runs) keeps the
    interpreters' environments, which hold the ``get_attr`` values, pointing at what is
    written.
    """
    attrs = []
    for name, fit in fits.items():
        node = nodes[name]
        attrs.append(node.args[1])
        if fit.intercept == "bias":
            attrs.append(node.args[2])
        elif fit.intercept == "bn":
            attrs.append(next(iter(node.users)).args[3])
    for norm in norms:
        attrs.extend((norm.args[3], norm.args[4]))
    for attr in attrs:
        tensor = get_tensor(gm, attr)
        if tensor is not None:
            set_tensor(gm, str(attr.target), tensor, parameter=isinstance(tensor, nn.Parameter))


def _fits(student: GraphModule, removed: Mapping, report: RefitReport) -> dict[str, _Fit]:
    nodes = {n.name: n for n in student.graph.nodes}
    fits = {}
    for (name, role), (_, _, gone) in removed.items():
        if role != "in" or not gone:
            continue
        node = nodes[name]
        found = consumer_of(node)
        tie = _shared_weight(student, node) if not isinstance(found, str) else None
        if isinstance(found, str) or tie is not None:
            reason = found if isinstance(found, str) else tie
            report.refusals.append((name, f"not re-fitted: {reason}"))
            continue
        out = removed.get((name, "out"))
        size = int(get_tensor(student, node.args[1]).shape[0])
        keep = sorted(set(range(out[0])) - out[2]) if out else range(size)
        fits[name] = _Fit(found, torch.tensor(list(keep), dtype=torch.long), intercept_of(node))
    return fits


def _apply(gm: GraphModule, node: Node, fit: _Fit, damping: float) -> dict[str, object]:
    """Solve one consumer's normal equations and write the weights (and intercept)."""
    weight = get_tensor(gm, node.args[1])
    matrix = weight.detach().reshape(len(weight), -1).double()
    start = matrix.T
    if fit.intercept == "bias":
        start = torch.cat([start, get_tensor(gm, node.args[2]).detach().double()[None]], 0)
    elif fit.intercept == "bn":
        start = torch.cat([start, start.new_zeros(1, start.shape[1])], 0)
    theta = solve_ridge(fit.gram, fit.cross, start, damping)
    before, after = fit.error(start), fit.error(theta)
    if not after <= before:  # rounding only: the ridge objective cannot rise; keep the slice
        theta, after = start, before
    features = matrix.shape[1]
    weight.data.copy_(theta[:features].T.reshape(weight.shape).to(weight.dtype))
    if fit.intercept == "bias":
        bias = get_tensor(gm, node.args[2])
        bias.data.copy_(theta[features].to(bias.dtype))
    elif fit.intercept == "bn":
        mean = get_tensor(gm, next(iter(node.users)).args[3])
        mean.data.sub_(theta[features].to(mean.dtype))
    return {
        "layer": module_path(node) or node.name,
        "inputs": features,
        "outputs": len(fit.keep_out),
        "intercept": fit.intercept or "none",
        "error_sliced": round(before, 6),
        "error_refit": round(after, 6),
    }


def _downstream_batchnorms(gm: GraphModule, changed: set[str]) -> set[Node]:
    """Eval-mode BatchNorms that are, or come after, a node whose channels changed."""
    seen: set[Node] = set()
    todo = [n for n in gm.graph.nodes if n.name in changed]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(node.users)
    return {n for n in seen if is_eval_batch_norm(n)}


def _recalibrate(gm: GraphModule, node: Node, inputs: Sequence[Tensor]) -> None:
    """Running mean and unbiased variance from the pooled inputs (channels on dim 1)."""
    total = squares = None
    count = 0
    for x in inputs:
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.detach().double()
        s, q = x64.sum(dims), x64.square().sum(dims)
        total = s if total is None else total + s
        squares = q if squares is None else squares + q
        count += x.numel() // x.shape[1]
    if count < 2:
        return
    mean = total / count
    var = (squares - count * mean.square()).clamp_min(0) / (count - 1)
    for attr, value in ((node.args[3], mean), (node.args[4], var)):
        buffer = get_tensor(gm, attr)
        buffer.data.copy_(value.to(buffer.dtype))
