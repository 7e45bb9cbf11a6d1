"""Recover accuracy lost to compression by fine-tuning with knowledge distillation.

The graph module (pruned, factored or quantised by earlier passes) is the student; the
original model is the teacher. The loss is ``α · CE(labels) + (1 − α) · T² · KL(teacher ‖
student)`` on temperature-softened outputs, just the KL term for unlabelled batches, plus
``feature_weight`` times the MSE between the outputs of the modules named in ``features``
(maths in ``graphopt.recovery.losses``). A feature whose shapes differ between teacher and
student (a pruned layer), or that has no single output in the graph, is refused with the
reason rather than projected: a learned projection would add parameters the deployed model
does not have, and the logit term already carries the teacher's knowledge.

Inputs from ``ctx.extras``: ``"teacher"`` (the original ``nn.Module``, required, never
modified), ``"train"`` (a re-iterable of ``(inputs, labels)``, required; labels may be None)
and ``"validate"``, else ``"evaluate"`` (optional ``callable(model) -> float | {name: float}``;
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

from collections.abc import Sequence

from torch import nn
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

    def __init__(
        self,
        *,
        steps: int | None = None,
        epochs: float | None = None,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        temperature: float = 4.0,
        alpha: float = 0.5,
        features: Sequence[str] = (),
        feature_weight: float = 1.0,
        metric: str | None = None,
        mode: str = "max",
        eval_every: int | None = None,
        bn: str = "train",
        seed: int = 0,
    ) -> None:
        config = DistillConfig(
            steps=steps,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            temperature=temperature,
            alpha=alpha,
            features=features,
            feature_weight=feature_weight,
            metric=metric,
            mode=mode,
            eval_every=eval_every,
            bn=bn,
            seed=seed,
        )
        self.steps = config.steps
        self.epochs = None if config.epochs is None else float(config.epochs)
        self.lr = float(config.lr)
        self.optimizer = config.optimizer
        self.weight_decay = float(config.weight_decay)
        self.temperature = float(config.temperature)
        self.alpha = float(config.alpha)
        self.features = config.features
        self.feature_weight = float(config.feature_weight)
        self.metric = config.metric
        self.mode = config.mode
        self.eval_every = config.eval_every
        self.bn = config.bn
        self.seed = config.seed

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        teacher = ctx.extras.get("teacher")
        if teacher is None:
            raise PassError(
                self.name,
                "needs the original model as ctx.extras['teacher'] (the runner sets it from the "
                "recipe's model); pass PassContext(inputs, extras={'teacher': model, ...})",
            )
        if not isinstance(teacher, nn.Module):
            raise PassError(
                self.name,
                f"ctx.extras['teacher'] must be a torch.nn.Module, got {type(teacher).__name__}",
            )
        if ctx.extras.get("train") is None:
            raise PassError(
                self.name,
                "needs training data as ctx.extras['train']: a re-iterable of (inputs, labels) "
                "batches (labels may be None); give a recipe `data:` whose TaskData has train",
            )
        evaluate = ctx.extras.get("validate") or ctx.extras.get("evaluate")
        if evaluate is not None and not callable(evaluate):
            raise PassError(
                self.name,
                f"ctx.extras['evaluate'] must be a callable(model) -> float | dict, got "
                f"{type(evaluate).__name__}",
            )

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        evaluate = ctx.extras.get("validate") or ctx.extras.get("evaluate")
        try:
            model, history = distill(
                gm,
                ctx.extras["teacher"],
                ctx.extras["train"],
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
        if ctx.extras.get("validate") is not None:  # say which data chose the checkpoint
            stats["criterion"] = str(stats["criterion"]).replace("evaluate", "validate", 1)
        return PassResult(model, modified=history.improved, stats=stats)
