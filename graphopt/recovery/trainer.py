"""Fine-tune a compressed model with knowledge distillation, keeping the best checkpoint.

``distill(student, teacher, train, ...)`` trains ``student`` in place for a budget of steps or
epochs (Adam or SGD with Nesterov momentum, cosine learning-rate decay to 0) on the loss of
``graphopt.recovery.losses``, and returns the best state it saw with a ``DistillHistory``.

What "best" means: with ``evaluate`` (``callable(model) -> float | {name: float}``), the task
metric (``metric`` names the key; else the first value; ``mode`` says whether higher or lower
is better). Without it, the distillation loss on a held-out batch: the first batch of
``train``, and training skips the first batch of every pass. For a list that is a true
hold-out; a shuffling ``train`` yields a different first batch each pass, so there it is a
fixed monitoring batch whose samples are also trained on (as with a single batch in all).
The model is scored *before* training too and a checkpoint must beat it strictly, so
recovery never returns a model worse than its input by that criterion; a run whose loss
becomes non-finite stops there and keeps the best checkpoint.

Models: ``student`` is an ``nn.Module`` or the GraphModule of ``torch.export`` (all its float
parameters are trained). With ``bn="train"`` (default) its BatchNorm normalises with batch
statistics while training and re-estimates its running statistics, which compression made
stale (``graphopt.recovery.batchnorm``); evaluation and the result use running statistics.
``bn="frozen"`` keeps the captured statistics. Other mode flags are left as they are. Quantised
graphs (``graphopt.quant.qat.is_quantized``) are trained through ``to_trainable`` on a copy and
converted back with ``to_deployable``. The teacher runs without gradients in inference mode
(flags restored afterwards) and is never modified; it may not share parameters with the
student.

Constraints of earlier passes hold while training: sparsity masks stored on the graph
(``graphopt.sparsity.masks``, by ``sparsify`` and ``cluster``) keep pruned weights at exactly
zero — re-applied after every optimizer step — and dense-form codebooks
(``graphopt.codebook.training``) train their centroids instead of the weights they share. A
constraint that no longer fits the graph is refused with the reason in ``constraints``.

This module is the training loop; what it checks (models, ``train``, each batch's inputs and
labels) is ``graphopt.recovery.checks``, how it walks ``train`` ``graphopt.recovery.batching``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from graphopt.codebook.training import tie_codebooks
from graphopt.metrics import inference_flags
from graphopt.options import parse_options
from graphopt.progress import counted
from graphopt.quant.qat import is_quantized, to_deployable, to_trainable
from graphopt.recovery.batching import count_batches, cycle, split_batch
from graphopt.recovery.batchnorm import BatchNormSwitch
from graphopt.recovery.checks import check_inputs, check_labels, check_models, check_train
from graphopt.recovery.config import DistillConfig
from graphopt.recovery.features import FeatureTap, first_tensor, make_tap, probe
from graphopt.recovery.losses import LossParts, distillation_loss
from graphopt.sparsity.masks import MaskGuard, graph_masks

__all__ = ["DistillConfig", "DistillHistory", "distill"]

Evaluate = Callable[[nn.Module], float | Mapping[str, float]]


@dataclass(frozen=True)
class DistillHistory:
    """What a run did: the criterion, its value before training and at the best checkpoint."""

    criterion: str
    mode: str
    baseline: float
    best: float
    best_step: int
    steps: int
    planned_steps: int
    records: tuple[dict[str, float], ...] = ()
    features: tuple[str, ...] = ()
    refused: tuple[dict[str, str], ...] = ()
    stopped: str | None = None
    seconds: float = 0.0
    quantized: bool = False
    masked: int = 0  # parameters whose pruned entries were held at zero
    codebooks: int = 0  # dense-form codebooks whose centroids were trained
    constraints: tuple[dict[str, str], ...] = ()  # masks/codebooks refused, with the reason

    @property
    def improved(self) -> bool:
        """True when a trained checkpoint beat the input (so the returned model differs)."""
        return self.best_step > 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "improved": self.improved}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: Iterable[tuple[Any, Tensor | None]],
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
    evaluate: Evaluate | None = None,
    metric: str | None = None,
    mode: str = "max",
    eval_every: int | None = None,
    bn: str = "train",
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, DistillHistory]:
    """Fine-tune ``student`` against ``teacher`` on ``train``; return the best model and history.

    ``train`` is re-iterable, yielding ``(inputs, labels)`` with inputs a tensor or a tuple of
    tensors and labels a tensor or None. Without ``steps`` or ``epochs`` the budget is one
    epoch; ``eval_every`` defaults to once per epoch (and always after the last step). The
    student is updated in place and returned, except for quantised graphs (a new module).
    Bad options raise ``ValueError`` naming the option; bad data ``TypeError``/``ValueError``.
    """
    config = parse_options(  # OptionError naming the option, as the recover pass's
        DistillConfig,
        dict(
            steps=steps,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            temperature=temperature,
            alpha=alpha,
            features=tuple(features) if not isinstance(features, str) else features,
            feature_weight=feature_weight,
            metric=metric,
            mode=mode,
            eval_every=eval_every,
            bn=bn,
            seed=seed,
        ),
    )
    check_models(student, teacher)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a callable(model) -> float | dict, got {evaluate!r}")
    quantized = bool(is_quantized(student))
    model = to_trainable(copy.deepcopy(student)) if quantized else student
    tied = tie_codebooks(model)
    try:
        guard = MaskGuard(model, {**graph_masks(model), **tied.masks}, covered=tied.weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            run = _Run(model, teacher, train, config, evaluate, progress, quantized, guard)
            history = run.run()
    finally:
        tied.release()
    history = dataclasses.replace(
        history,
        masked=len(guard),
        codebooks=len(tied),
        constraints=tuple(guard.refused + tied.refused),
    )
    if not history.improved:
        return student, history
    return (to_deployable(model) if quantized else model), history


class _Run:
    """One training run; ``run()`` leaves the model holding the best checkpoint's state."""

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module,
        train: Iterable,
        config: DistillConfig,
        evaluate: Evaluate | None,
        progress: bool,
        quantized: bool,
        guard: MaskGuard | None = None,
    ) -> None:
        check_train(train)
        self.guard = guard
        self.model, self.teacher, self.train = model, teacher, train
        self.config, self.evaluate, self.progress = config, evaluate, progress
        self.mode = config.mode if evaluate is not None else "min"
        self.quantized = quantized
        per_pass = count_batches(train)
        first = split_batch(next(iter(train)))
        self.holdout = first if evaluate is None else None
        self.skip_first = evaluate is None and per_pass >= 2
        self.per_epoch = per_pass - 1 if self.skip_first else per_pass
        self.total = config.steps or max(1, math.ceil((config.epochs or 1.0) * self.per_epoch))
        self.eval_every = config.eval_every or self.per_epoch
        self.refused: dict[str, str] = {}
        check_inputs(first[0], 0)
        self.student_tap, self.teacher_tap = self._taps(first[0])
        check_labels(first[1], self.classes, 0)

    def run(self) -> DistillHistory:
        start = time.perf_counter()
        restore_teacher = inference_flags(self.teacher)
        restore_grads = _trainable(self.model)
        self.batchnorm = BatchNormSwitch(self.model, enabled=self.config.bn == "train")
        try:
            return self._train(start)
        finally:
            self.batchnorm.restore()
            restore_grads()
            restore_teacher()

    def _train(self, start: float) -> DistillHistory:
        baseline = self._score()
        best, best_step, best_state = baseline, 0, _snapshot(self.model)
        optimizer, schedule = self._optimizer()
        records, losses, stopped, step = [], [], None, 0
        data = cycle(self.train, self.skip_first)
        with counted("recover", self.total, enabled=self.progress) as advance:
            for step in range(1, self.total + 1):
                self.batchnorm.use_batch_stats(True)
                index, batch = next(data)
                inputs, labels = split_batch(batch)
                check_inputs(inputs, index)
                check_labels(labels, self.classes, index)
                loss = self._loss(inputs, labels).total
                if not torch.isfinite(loss):
                    stopped = f"loss became {loss.item()} at step {step}; lower lr"
                    step -= 1
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if self.guard is not None:
                    self.guard.after_step()
                schedule.step()
                losses.append(loss.item())
                advance(f"loss {losses[-1]:.4f}")
                if step % self.eval_every == 0 or step == self.total:
                    score = self._score()
                    lr = optimizer.param_groups[0]["lr"]
                    records.append(
                        {
                            "step": step,
                            "train_loss": sum(losses) / len(losses),
                            "score": score,
                            "lr": lr,
                        }
                    )
                    losses = []
                    if _better(score, best, self.mode):
                        best, best_step, best_state = score, step, _snapshot(self.model)
        self.model.load_state_dict(best_state)
        return DistillHistory(
            criterion=self._criterion(),
            mode=self.mode,
            baseline=baseline,
            best=best,
            best_step=best_step,
            steps=step,
            planned_steps=self.total,
            records=tuple(records),
            features=self.student_tap.names,
            refused=tuple({"feature": k, "reason": v} for k, v in self.refused.items()),
            stopped=stopped,
            seconds=round(time.perf_counter() - start, 3),
            quantized=self.quantized,
        )

    # ---- pieces ----------------------------------------------------------------------------
    def _taps(self, inputs: tuple[Tensor, ...]) -> tuple[FeatureTap, FeatureTap]:
        """Resolve ``features`` on both models and drop those whose shapes differ."""
        names = self.config.features
        student, refused = make_tap(self.model, names)
        teacher, teacher_refused = make_tap(self.teacher, names, strict=False)
        for name, reason in teacher_refused.items():
            refused.setdefault(name, f"teacher: {reason}")
        common = [n for n in names if n not in refused]
        student, teacher = student.only(common), teacher.only(common)
        with torch.no_grad():
            restore = inference_flags(self.teacher)
            try:
                teacher, t_out, t_feats, t_refused = probe(teacher, inputs)
            finally:
                restore()
            student, s_out, s_feats, s_refused = probe(student, inputs)
        refused.update({k: f"teacher: {v}" for k, v in t_refused.items()})
        refused.update({k: f"student: {v}" for k, v in s_refused.items()})
        s_logits, t_logits = first_tensor(s_out), first_tensor(t_out)
        self.classes = int(s_logits.shape[-1]) if s_logits.dim() else 1
        if s_logits.shape != t_logits.shape:
            raise ValueError(
                f"student and teacher outputs differ in shape: {tuple(s_logits.shape)} and "
                f"{tuple(t_logits.shape)}; distillation needs the same logits"
            )
        for name in [n for n in common if n in s_feats and n in t_feats]:
            if s_feats[name].shape != t_feats[name].shape:
                refused[name] = (
                    f"shapes differ: student {tuple(s_feats[name].shape)}, teacher "
                    f"{tuple(t_feats[name].shape)} (pruned?); not matched"
                )
        kept = [n for n in common if n not in refused]
        self.refused = {n: refused[n] for n in names if n in refused}
        return student.only(kept), teacher.only(kept)

    def _loss(self, inputs: tuple[Tensor, ...], labels: Tensor | None) -> LossParts:
        with torch.no_grad():
            t_out, t_feats = self.teacher_tap(inputs)
        s_out, s_feats = self.student_tap(inputs)
        return distillation_loss(
            first_tensor(s_out),
            first_tensor(t_out),
            labels,
            temperature=self.config.temperature,
            alpha=self.config.alpha,
            student_features=s_feats,
            teacher_features=t_feats,
            feature_weight=self.config.feature_weight,
        )

    def _score(self) -> float:
        self.batchnorm.use_batch_stats(False)
        with torch.no_grad():
            if self.evaluate is None:
                return float(self._loss(*self.holdout).total.item())
            return _metric_value(self.evaluate(self.model), self.config.metric)

    def _criterion(self) -> str:
        if self.evaluate is None:
            return "held-out distillation loss"
        return self.config.metric or "evaluate (first value)"

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW or SGD (Nesterov, momentum 0.9), lr decaying on a cosine to 0 at the end."""
        params = [p for p in self.model.parameters() if p.is_floating_point()]
        if not params:
            raise ValueError("the student has no floating-point parameters to train")
        cfg, total = self.config, self.total
        if cfg.optimizer == "adam":
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
            )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
        )
        return optimizer, schedule


# ---- helpers -------------------------------------------------------------------------------
def _metric_value(value: object, metric: str | None) -> float:
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("evaluate returned an empty dict")
        if metric is not None:
            if metric not in value:
                raise ValueError(
                    f"metric {metric!r} is not among evaluate's results {sorted(value)}"
                )
            return float(value[metric])
        return float(next(iter(value.values())))
    if metric is not None:
        raise ValueError(f"metric={metric!r} given but evaluate returned a single number")
    if isinstance(value, (int, float, Tensor)):
        return float(value)
    raise TypeError(
        f"evaluate must return a number or a dict of numbers, got {type(value).__name__}"
    )


def _better(score: float, best: float, mode: str) -> bool:
    if math.isnan(score):
        return False
    if math.isnan(best):
        return True
    return score > best if mode == "max" else score < best


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> Callable[[], None]:
    """Turn on ``requires_grad`` for every float parameter; return how to restore the flags."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        if p.is_floating_point():
            p.requires_grad_(True)

    def restore() -> None:
        for p, flag in flags:
            p.requires_grad_(flag)

    return restore
