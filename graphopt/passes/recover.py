"""Recover accuracy lost to compression by fine-tuning with knowledge distillation.

The graph module (pruned, factored or quantised by earlier passes) is the student; the
original model is the teacher. The loss is ``α · CE(labels) + (1 − α) · T² · KL(teacher ‖
student)`` on temperature-softened outputs, just the KL term for unlabelled batches, plus
``feature_weight`` times the MSE between the outputs of the modules named in ``features``
(maths in ``graphopt.recovery.losses``). A feature whose shapes differ between teacher and
student (a pruned layer), or that has no single output in the graph, is refused with the
reason rather than projected: a learned projection would add parameters the deployed model
does not have, and the logit term already carries the teacher's knowledge.

Inputs from the context: ``ctx.teacher`` (the original ``nn.Module``, required, never
modified), ``ctx.train`` (a re-iterable of ``(inputs, labels)``, required; labels may be None)
and ``ctx.validate``, else ``ctx.evaluate`` (optional ``callable(model) -> float | {name: float}``;
a task's ``validate`` scores held-out non-test data, so choosing the best checkpoint never
optimises the test metric the report shows).

BatchNorm (``bn``): ``train`` (default) normalises with batch statistics while training and
re-estimates the running statistics that compression made stale (a pruned ResNet on digits
went from chance to 99% in 25 steps this way, to 29% in 40 with them frozen); ``frozen`` keeps
the captured ones. The result uses running statistics either way.

The best checkpoint is kept, by the task metric when ``evaluate`` is given (``metric`` picks
the key, ``mode`` the direction), else by the distillation loss on a held-out batch. The input
is scored before training and must be beaten strictly, so the pass never returns a worse model
by that criterion; ``modified`` is True only when a trained checkpoint won. Quantised graphs
are trained through ``graphopt.quant.qat`` when it is installed. Approximate (``exact =
False``): the pass manager measures how far the outputs moved.

Stats: the criterion, its value before (``baseline``) and after (``best``), the winning step,
steps run and planned, per-evaluation records, features used and refused, why training
stopped early (a non-finite loss), seconds.
"""

from __future__ import annotations

from torch.fx import GraphModule

from graphopt.errors import PassError
from graphopt.passes.base import Pass, PassContext, PassResult, register_pass
from graphopt.recovery.trainer import DistillConfig, distill

__all__ = ["Recover"]


@register_pass
class Recover(Pass):
    """Fine-tune with knowledge distillation from the original model, keeping the best state."""

    name = "recover"
    exact = False
    writes_in_place = True  # training updates the parameters in place (distill)

    Options = DistillConfig

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        ctx.require(self.name, "teacher", "train")
        if ctx.scorer is not None:
            ctx.require(self.name, "validate" if ctx.validate is not None else "evaluate")

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        evaluate = ctx.scorer
        try:
            model, history = distill(
                gm,
                ctx.teacher,
                ctx.train,
                evaluate=evaluate,
                **self.options(),
            )
        except (TypeError, ValueError) as exc:
            raise PassError(self.name, str(exc)) from exc
        if not isinstance(model, GraphModule):
            raise PassError(
                self.name,
                f"training returned a {type(model).__name__}, not a GraphModule; this is a bug "
                "in graphopt.quant.qat.to_deployable",
            )
        stats = history.as_dict()
        if ctx.validate is not None:  # say which data chose the checkpoint
            stats["criterion"] = str(stats["criterion"]).replace("evaluate", "validate", 1)
        return PassResult(model, modified=history.improved, stats=stats)
