"""Low-rank decomposition of linear and conv2d layers, weight-based or data-driven.

Each matched ``aten.linear`` / ``aten.conv2d`` is replaced by a chain of thinner layers whose
composition approximates it (the maths of each method is in ``graphopt.lowrank.factorize``):

- ``svd``: two linears (``x ↦ W₁ x``, then ``W₂`` with the bias); for a conv, its ``k×k``
  kernel with ``r`` outputs then a 1×1 conv (channel SVD of ``C_out × C_in·k²``);
- ``tucker``: 1×1 reduce → ``k×k`` core (carrying stride, padding, dilation) → 1×1 restore;
- ``cp``: 1×1 → depthwise ``k×1`` → depthwise ``1×k`` → 1×1;
- ``spatial_svd``: ``k×1`` conv then ``1×k`` conv;
- ``pca``: output reconstruction on calibration data (Zhang et al. 2015): ``Vᵀ W`` then a
  1×1 conv / linear ``V`` with bias ``μ + V Vᵀ (b − μ)``, ``V`` the top principal directions of
  the layer's outputs. It minimises the output error on data like the calibration set, where
  weight SVD minimises the weight error.

``tucker``, ``cp`` and ``spatial_svd`` apply to ``k×k`` convs and fall back to ``svd`` for
linear layers and 1×1 convs (whose only structure is the channel matrix). Depthwise and
grouped convs are refused, with the reason.

Ranks: ``ratio`` (of the full rank, see ``graphopt.lowrank.plan``), ``energy`` (fraction of the
squared singular values, or of output variance for PCA), ``rank`` (an int, or ``"vbmf"`` for
EVBMF's automatic estimate), ``ranks`` per module path (an int, or ``(R_out, R_in)`` for
Tucker), computed ranks rounded up to a multiple of ``round_to``. A layer is replaced only
when its MACs *and* parameters drop and the MACs saving is at least ``min_macs_saving``;
otherwise it is a refusal with the numbers.

Calibration data for ``pca``: ``ctx.calibration``, an iterable of input tuples, else
the example inputs. Statistics are taken from the original model's responses in one pass
(not sequentially from the partly decomposed model). A layer with fewer output vectors on the
calibration data than its rank is refused: its covariance cannot determine the directions.

Stats: per decomposed layer its method, rank, full rank, MACs and parameters before and after
and the relative error (of the weight, or of the calibration outputs for PCA); totals of MACs
and parameters saved; refusals. Approximate (``exact = False``): the pass manager measures the
output error. Factor layers are marked, so a second run leaves them alone.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

import torch
from pydantic import BeforeValidator, Field, model_validator
from torch.fx import GraphModule

from graphopt.errors import PassError
from graphopt.ir import iter_ops, module_path
from graphopt.lowrank import factorize
from graphopt.lowrank.calibration import OutputStats, collect_output_stats, input_batches
from graphopt.lowrank.layers import LINEAR_OR_CONV, METHODS, Layer, read_layer
from graphopt.lowrank.plan import LayerPlan, RankRule, method_for, plan_layer
from graphopt.lowrank.rewrite import LOW_RANK_META, replace_layer
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass


def _pairs_as_tuples(ranks: object) -> object:
    """YAML writes a Tucker (R_out, R_in) pair as a list; the option holds a tuple."""
    if isinstance(ranks, dict):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in ranks.items()}
    return ranks


RankSpec = (
    Annotated[int, Field(gt=0)] | tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]
)

__all__ = ["LowRank"]


@register_pass
class LowRank(Pass):
    """Factor linear and conv layers into thinner ones: SVD, Tucker-2, CP, spatial SVD, PCA."""

    name = "low_rank"
    exact = False

    class Options(Options):
        method: Literal[tuple(METHODS)] = Field("svd", description="factorisation")
        ratio: float | None = Field(None, gt=0, le=1, description="rank as a fraction")
        energy: float | None = Field(
            None, gt=0, le=1, description="keep this share of the singular-value energy"
        )
        rank: Annotated[int, Field(gt=0)] | Literal["vbmf"] | None = Field(
            None, description="a fixed rank, or 'vbmf' (estimated)"
        )
        ranks: Annotated[dict[str, RankSpec], BeforeValidator(_pairs_as_tuples)] = Field(
            default_factory=dict, description="per-layer ranks by module path"
        )
        round_to: int = Field(1, ge=1, description="ranks a multiple of this")
        skip: Names = Field((), description="module paths left dense")
        min_macs_saving: float = Field(
            0.0, ge=0, lt=1, description="decompose only layers that save this share of MACs"
        )

        @model_validator(mode="after")
        def _one_rank_rule(self) -> LowRank.Options:
            _check_rank_rule(self.method, self.ratio, self.energy, self.rank, self.ranks)
            return self

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.method == "pca" and not ctx.example_inputs:
            ctx.require(self.name, "calibration", purpose="method='pca'")

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        self._check_names(gm)
        refused: list[Refusal] = []
        candidates = self._match(gm, refused)
        stats = self._calibrate(gm, ctx, candidates) if self.method == "pca" else {}
        rule = RankRule(self.ratio, self.energy, self.rank, self.round_to)
        layers = []
        for layer, method in candidates:
            plan = self._plan(layer, method, rule, stats.get(layer.node), refused)
            if plan is None:
                continue
            fact = self._factorize(plan, stats.get(layer.node))
            replace_layer(gm, layer, plan.stages, fact.weights, fact.bias, method=plan.method)
            layers.append(_layer_stats(plan, fact))
        return PassResult(
            gm,
            modified=bool(layers),
            stats={
                "method": self.method,
                "decomposed": len(layers),
                "macs_saved": sum(d["macs_before"] - d["macs_after"] for d in layers),
                "params_saved": sum(d["params_before"] - d["params_after"] for d in layers),
                "layers": layers,
                "refused": [asdict(r) for r in refused],
            },
        )

    # ---- match and check -----------------------------------------------------------------
    def _match(self, gm: GraphModule, refused: list[Refusal]) -> list[tuple[Layer, str]]:
        candidates = []
        for node in iter_ops(gm, LINEAR_OR_CONV):
            if LOW_RANK_META in node.meta:
                stage = node.meta[LOW_RANK_META]
                where = f"{module_path(node) or node.name}.{stage['stage']}"
                refused.append(Refusal(where, f"already a low-rank factor ({stage['method']})"))
                continue
            layer = read_layer(gm, node)
            if isinstance(layer, str):
                refused.append(Refusal(node.name, layer))
                continue
            if self._skipped(layer.path):
                refused.append(Refusal(layer.path, "in skip"))
                continue
            try:
                candidates.append((layer, method_for(layer, self.method)))
            except ValueError as exc:
                refused.append(Refusal(layer.path, str(exc)))
        return candidates

    def _check_names(self, gm: GraphModule) -> None:
        """Every ``skip`` and ``ranks`` entry must name a linear/conv layer (typos are errors)."""
        paths = {module_path(n) for n in iter_ops(gm, LINEAR_OR_CONV)}
        for option, names in (("skip", self.skip), ("ranks", tuple(self.ranks))):
            for name in names:
                inside = option == "skip" and any(p.startswith(name + ".") for p in paths)
                if name not in paths and not inside:
                    example = ", ".join(sorted(p for p in paths if p)[:5])
                    raise PassError(
                        self.name,
                        f"{option} entry {name!r} matches no linear/conv layer; layers are "
                        f"named like {example}",
                    )

    def _skipped(self, path: str) -> bool:
        return any(path == s or path.startswith(s + ".") for s in self.skip)

    def _calibrate(
        self, gm: GraphModule, ctx: PassContext, candidates: list[tuple[Layer, str]]
    ) -> dict:
        data = ctx.calibration
        batches = input_batches(data, graph=gm) if data is not None else [ctx.example_inputs]
        targets = {layer.node: (1 if layer.kind == "conv" else -1) for layer, _ in candidates}
        if not targets:
            return {}
        try:
            stats = collect_output_stats(gm, targets, batches)
        except TypeError as exc:
            raise PassError(self.name, f"calibration: {exc}") from exc
        if not stats:
            raise PassError(self.name, "calibration data yielded no batches; give at least one")
        return stats

    def _plan(
        self,
        layer: Layer,
        method: str,
        rule: RankRule,
        out_stats: OutputStats | None,
        refused: list[Refusal],
    ) -> LayerPlan | None:
        try:
            plan = plan_layer(
                layer,
                method,
                rule,
                explicit=self.ranks.get(layer.path),
                spectrum=(lambda: torch.linalg.eigvalsh(out_stats.covariance))
                if out_stats is not None
                else None,
            )
        except ValueError as exc:
            if self.ranks.get(layer.path) is not None:
                raise PassError(self.name, f"ranks[{layer.path!r}]: {exc}") from exc
            refused.append(Refusal(layer.path, str(exc)))
            return None
        saving = 1 - plan.macs_after / plan.macs_before if plan.macs_before else 0.0
        if not plan.saves or saving < self.min_macs_saving:
            refused.append(Refusal(layer.path, _cost_reason(plan, saving, self.min_macs_saving)))
            return None
        if method == "pca" and out_stats is not None and out_stats.count <= max(plan.rank, 1):
            refused.append(
                Refusal(
                    layer.path,
                    (
                        f"only {out_stats.count} output vectors on the calibration data for rank "
                        f"{plan.rank}: the covariance cannot determine the directions; give more "
                        "calibration data (ctx.calibration)"
                    ),
                )
            )
            return None
        return plan

    # ---- rewrite -------------------------------------------------------------------------
    @staticmethod
    def _factorize(plan: LayerPlan, out_stats: OutputStats | None) -> factorize.Factorization:
        weight = plan.layer.weight.detach()
        if plan.method == "svd":
            return factorize.svd(weight, plan.rank)
        if plan.method == "tucker":
            return factorize.tucker2(weight, plan.rank)
        if plan.method == "cp":
            return factorize.cp(weight, plan.rank)
        if plan.method == "spatial_svd":
            return factorize.spatial_svd(weight, plan.rank)
        bias = plan.layer.bias.detach() if plan.layer.bias is not None else None
        return factorize.pca(weight, bias, out_stats.mean, out_stats.covariance, plan.rank)


def _cost_reason(plan: LayerPlan, saving: float, minimum: float) -> str:
    what = (
        f"rank {plan.rank} (full {plan.full_rank}) with {plan.method}: MACs {plan.macs_before} → "
        f"{plan.macs_after}, params {plan.params_before} → {plan.params_after}"
    )
    if not plan.saves:
        return f"{what}; decomposing would not reduce both, kept as is"
    return f"{what}; saves {saving:.1%} of the layer's MACs, below min_macs_saving={minimum:g}"


def _layer_stats(plan: LayerPlan, fact: factorize.Factorization) -> dict:
    rank = list(plan.rank) if isinstance(plan.rank, tuple) else plan.rank
    full = list(plan.full_rank) if isinstance(plan.full_rank, tuple) else plan.full_rank
    return {
        "layer": plan.layer.path,
        "method": plan.method,
        "rank": rank,
        "full_rank": full,
        "macs_before": plan.macs_before,
        "macs_after": plan.macs_after,
        "params_before": plan.params_before,
        "params_after": plan.params_after,
        "error": fact.error,
        "error_of": fact.error_of,
    }


def _check_rank_rule(
    method: str, ratio: object, energy: object, rank: object, ranks: object
) -> None:
    """The rank options together: at most one rule, and one that fits the method."""
    rules = (("ratio", ratio), ("energy", energy), ("rank", rank))
    given = [name for name, value in rules if value is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of ratio, energy and rank, got {', '.join(given)}")
    if not given and not ranks:
        raise ValueError("give one of ratio, energy or rank, or per-layer ranks")
    if method == "cp" and energy is not None:
        raise ValueError(
            "energy is not defined for method='cp' (CP has no singular values); use ratio or rank"
        )
    if method in ("cp", "pca") and rank == "vbmf":
        raise ValueError(
            f"rank='vbmf' estimates matrix ranks (svd, tucker, spatial_svd), "
            f"not for method={method!r}; use ratio, energy or rank"
        )
