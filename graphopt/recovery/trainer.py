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
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from graphopt.checks import is_int, is_number
from graphopt.data import check_finite, count_nonfinite
from graphopt.errors import RecipeError
from graphopt.metrics import inference_flags
from graphopt.progress import counted
from graphopt.recovery.batchnorm import BatchNormSwitch
from graphopt.recovery.features import FeatureTap, first_tensor, make_tap, probe
from graphopt.recovery.losses import LossParts, distillation_loss

__all__ = ["DistillConfig", "DistillHistory", "distill"]

OPTIMIZERS = ("adam", "sgd")
BN_MODES = ("train", "frozen")
MODES = ("max", "min")
Evaluate = Callable[[nn.Module], float | Mapping[str, float]]
_IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: such labels are skipped


@dataclass(frozen=True)
class DistillConfig:
    """Validated options of a distillation run (each error names its option)."""

    steps: int | None = None
    epochs: float | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.5
    features: tuple[str, ...] = ()
    feature_weight: float = 1.0
    metric: str | None = None
    mode: str = "max"
    eval_every: int | None = None
    bn: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(
                f"give steps or epochs, not both (steps={self.steps!r}, epochs={self.epochs!r})"
            )
        if self.steps is not None and not (is_int(self.steps) and self.steps >= 1):
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.epochs is not None and not (is_number(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be a number > 0, got {self.epochs!r}")
        if not (is_number(self.lr) and 0 < self.lr < math.inf):
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not (is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (is_number(self.temperature) and 0 < self.temperature < math.inf):
            raise ValueError(f"temperature must be a number > 0, got {self.temperature!r}")
        if not (is_number(self.alpha) and 0 <= self.alpha <= 1):
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        features = self.features
        if isinstance(features, str) or not all(isinstance(f, str) and f for f in features):
            raise ValueError(
                f"features must be a list of module paths such as ['layer2'], got {features!r}"
            )
        object.__setattr__(self, "features", tuple(features))
        if not (is_number(self.feature_weight) and self.feature_weight >= 0):
            raise ValueError(f"feature_weight must be a number >= 0, got {self.feature_weight!r}")
        if self.metric is not None and not (isinstance(self.metric, str) and self.metric):
            raise ValueError(
                f"metric must be a metric name such as 'accuracy', got {self.metric!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.eval_every is not None and not (is_int(self.eval_every) and self.eval_every >= 1):
            raise ValueError(f"eval_every must be an int >= 1 (steps), got {self.eval_every!r}")
        if self.bn not in BN_MODES:
            raise ValueError(
                f"bn must be 'train' (batch statistics while training) or 'frozen' (the "
                f"running statistics as captured), got {self.bn!r}"
            )
        if not is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


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
    config = DistillConfig(
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
    )
    _check_models(student, teacher)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a callable(model) -> float | dict, got {evaluate!r}")
    qat = _qat_module()
    quantized = qat is not None and bool(qat.is_quantized(student))
    model = qat.to_trainable(copy.deepcopy(student)) if quantized else student
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        history = _Run(model, teacher, train, config, evaluate, progress, quantized).run()
    if not history.improved:
        return student, history
    return (qat.to_deployable(model) if quantized else model), history


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
    ) -> None:
        _check_train(train)
        self.model, self.teacher, self.train = model, teacher, train
        self.config, self.evaluate, self.progress = config, evaluate, progress
        self.mode = config.mode if evaluate is not None else "min"
        self.quantized = quantized
        per_pass = _count_batches(train)
        first = _split_batch(next(iter(train)))
        self.holdout = first if evaluate is None else None
        self.skip_first = evaluate is None and per_pass >= 2
        self.per_epoch = per_pass - 1 if self.skip_first else per_pass
        self.total = config.steps or max(1, math.ceil((config.epochs or 1.0) * self.per_epoch))
        self.eval_every = config.eval_every or self.per_epoch
        self.refused: dict[str, str] = {}
        _check_inputs(first[0], 0)
        self.student_tap, self.teacher_tap = self._taps(first[0])
        _check_labels(first[1], self.classes, 0)

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
        data = _cycle(self.train, self.skip_first)
        with counted("recover", self.total, enabled=self.progress) as advance:
            for step in range(1, self.total + 1):
                self.batchnorm.use_batch_stats(True)
                index, batch = next(data)
                inputs, labels = _split_batch(batch)
                _check_inputs(inputs, index)
                _check_labels(labels, self.classes, index)
                loss = self._loss(inputs, labels).total
                if not torch.isfinite(loss):
                    stopped = f"loss became {loss.item()} at step {step}; lower lr"
                    step -= 1
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
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
def _qat_module() -> ModuleType | None:
    """``graphopt.quant.qat`` when it exists (quantisation is optional to recovery)."""
    try:
        if importlib.util.find_spec("graphopt.quant.qat") is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module("graphopt.quant.qat")


def _check_models(student: nn.Module, teacher: nn.Module) -> None:
    for role, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{role} must be a torch.nn.Module, got {type(model).__name__}")
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if student is teacher or shared:
        raise ValueError(
            "student and teacher share parameters: training would change the teacher; pass "
            "the original model as teacher and a copy (or the compressed graph) as student"
        )


def _check_train(train: object) -> None:
    if isinstance(train, Tensor) or not isinstance(train, Iterable):
        raise TypeError(
            "train must be a re-iterable of (inputs, labels) batches, e.g. a list or a "
            f"DataLoader, got {type(train).__name__}"
        )
    if iter(train) is train:
        raise TypeError(
            f"train must be re-iterable (a list or a DataLoader), got a one-shot "
            f"{type(train).__name__}: it would be empty after the first epoch"
        )


def _count_batches(train: Iterable) -> int:
    try:
        n = len(train)  # type: ignore[arg-type]
    except TypeError:
        n = sum(1 for _ in train)
    if n < 1:
        raise ValueError("train yielded no batches")
    return n


def _split_batch(batch: object) -> tuple[tuple[Tensor, ...], Tensor | None]:
    if not (isinstance(batch, Sequence) and len(batch) == 2):
        raise TypeError(
            "train must yield (inputs, labels) pairs, inputs a tensor or a tuple of tensors "
            f"and labels a tensor or None; got {type(batch).__name__}"
        )
    inputs, labels = batch
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    elif not (isinstance(inputs, Sequence) and all(isinstance(t, Tensor) for t in inputs)):
        raise TypeError(
            f"train batch inputs must be a tensor or a tuple of tensors, got "
            f"{type(inputs).__name__}"
        )
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(f"train batch labels must be a tensor or None, got {type(labels).__name__}")
    return tuple(inputs), labels


def _cycle(train: Iterable, skip_first: bool) -> Iterator[tuple[int, object]]:
    """``(index in the pass over train, batch)`` forever (the index names a bad batch)."""
    while True:
        for i, batch in enumerate(train):
            if not (skip_first and i == 0):
                yield i, batch


def _check_inputs(inputs: tuple[Tensor, ...], index: int) -> None:
    """``ValueError`` "train batch 3 holds NaN (...)": the loss would become NaN and the run
    stop with advice to lower the learning rate, which is not the cause."""
    try:
        check_finite(inputs, f"train batch {index}")
    except RecipeError as exc:
        raise ValueError(str(exc)) from None


def _check_labels(labels: Tensor | None, classes: int, index: int) -> None:
    """Class-index labels must lie in ``[0, classes)`` (or be -100, cross-entropy's ignored
    index); probability labels (float, the logits' shape) must be finite.

    Checked before the loss, one ``aminmax`` per batch: out of range, cross-entropy fails
    with a device-side assert on GPU or an ``IndexError`` from deep in torch on CPU, naming
    neither the batch nor the number of classes.
    """
    if labels is None or not labels.numel():
        return
    label = f"train batch {index}"
    if labels.is_complex():
        raise ValueError(
            f"{label}: labels of dtype {labels.dtype} are neither class indices (integers) "
            "nor class probabilities (float, shaped like the logits)"
        )
    if labels.is_floating_point():
        nan, inf = count_nonfinite(labels)
        if nan or inf:
            raise ValueError(f"{label}: the labels hold {nan} NaN and {inf} inf")
        if labels.dim() >= 2 and labels.shape[-1] == classes:
            return  # class probabilities
    valid = labels[labels != _IGNORE_INDEX]
    if not valid.numel():
        return
    lo, hi = (v.item() for v in torch.aminmax(valid.double()))
    if lo < 0 or hi >= classes:
        bad = hi if hi >= classes else lo
        raise ValueError(
            f"{label}: label {bad:g} is out of range for the model's {classes} classes "
            f"(labels must be class indices in [0, {classes - 1}])"
        )


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
