"""Bad user data is refused where it is read, naming the batch and the mismatch: non-finite
calibration and training inputs, calibration batches that do not fit the model, out-of-range
labels, and a float model that overflows on a calibration batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from graphopt.capture import trace
from graphopt.data import check_batch, input_batches
from graphopt.errors import NumericsError, PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, get_pass
from graphopt.quant.placement import find_layers
from graphopt.quant.rewrite import quantize_weights
from graphopt.recovery import distill

IMAGE = (2, 3, 8, 8)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    ).eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *IMAGE[1:], generator=torch.Generator().manual_seed(seed))


def _quantize(calibration: list) -> None:
    x = _images(2)
    gm = trace(_net(), x)
    ctx = PassContext((x,), {"calibration": calibration})
    PassManager([get_pass("quantize")]).run(gm, x, context=ctx)


# ---- non-finite calibration data ---------------------------------------------------------
def test_inf_in_calibration_names_the_batch() -> None:
    batches = [(_images(4, seed),) for seed in range(4)]
    batches[3][0][1, 2, 3, 4] = math.inf
    with pytest.raises(
        RecipeError, match=r"^calibration batch 3 holds inf \(input 0: 0 NaN, 1 inf"
    ):
        list(input_batches(batches))


def test_the_quantize_pass_refuses_an_inf_calibration_batch() -> None:
    bad = _images(4)
    bad[0, 0, 0, 0] = -math.inf
    with pytest.raises(RecipeError, match=r"calibration batch 1 holds inf"):
        _quantize([(_images(4),), (bad,)])


def test_nan_in_calibration_is_named_as_nan() -> None:
    with pytest.raises(RecipeError, match=r"calibration batch 0 holds NaN and inf"):
        list(input_batches([(torch.tensor([math.nan, math.inf, 1.0]),)]))


def test_integer_batches_are_never_non_finite() -> None:
    tokens = torch.randint(0, 50, (4, 7))
    assert list(input_batches([(tokens,)], [tokens])) == [(tokens,)]


# ---- calibration batches that do not fit the model ---------------------------------------
@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            (torch.randn(4, 4, 8, 8),),
            r"calibration batch 1, input 0: shape \(4, 4, 8, 8\) does not fit the model's "
            r"\(\*, 3, 8, 8\) \(\* = any size\): dimension 1 is 4, the graph is static at 3",
        ),
        (
            (torch.randn(4, 3, 9, 9),),
            r"calibration batch 1, input 0: shape \(4, 3, 9, 9\).*dimension 2 is 9",
        ),
        ((torch.randn(3, 8, 8),), r"calibration batch 1, input 0: shape \(3, 8, 8\) has rank 3"),
        (
            (torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)),
            r"calibration batch 1 has 2 input\(s\), the model takes 1",
        ),
        (
            (torch.randint(0, 255, (4, 3, 8, 8)),),
            r"calibration batch 1, input 0: dtype int64 \(integer\), the model takes float32",
        ),
        ((torch.randn(4, 3, 8, 8).double(),), r"dtype float64 \(float\).*\.to\(torch.float32\)"),
    ],
)
def test_a_calibration_batch_that_does_not_fit_is_a_clear_error(batch, message) -> None:
    with pytest.raises(RecipeError, match=message):
        _quantize([(_images(4),), batch])


def test_the_batch_dimension_is_free_unless_the_graph_fixes_it() -> None:
    x = _images(2)
    dynamic = trace(_net(), x)
    assert len(list(input_batches([(_images(5),)], graph=dynamic))) == 1

    class FixedBatch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(2, -1).sum(1)  # export keeps the batch static at 2

    fixed = trace(FixedBatch(), x)
    with pytest.raises(RecipeError, match=r"dimension 0 is 5, the graph is static at 2"):
        list(input_batches([(_images(5),)], graph=fixed))


def test_check_batch_validates_one_batch() -> None:
    x = _images(2)
    check_batch((x,), (x,), label="train batch 0")
    with pytest.raises(RecipeError, match=r"^train batch 7, input 0: shape"):
        check_batch((x[:, :2],), (x,), label="train batch 7")


def test_low_rank_pca_checks_its_calibration_data() -> None:
    x = _images(2)
    gm = trace(_net(), x)
    ctx = PassContext((x,), {"calibration": [(_images(4),), (torch.randn(4, 3, 8),)]})
    with pytest.raises(RecipeError, match=r"calibration batch 1, input 0: shape \(4, 3, 8\)"):
        PassManager([get_pass("low_rank", method="pca", ratio=0.5)]).run(gm, x, context=ctx)


# ---- a float model that overflows on finite calibration data -----------------------------
def test_an_overflowing_layer_names_the_batch_and_the_node() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1e20)
    x = torch.rand(2, 4)  # outputs near 1e20: finite
    gm = trace(model, x)
    huge = torch.full((3, 4), 1e20)  # finite, but 4e40 after the first layer
    ctx = PassContext((x,), {"calibration": [(torch.rand(3, 4),), (huge,)]})
    with pytest.raises(NumericsError, match=r"^\[quantize\] calibration batch 1: the output of"):
        PassManager([get_pass("quantize")]).run(gm, x, context=ctx)


# ---- training data -----------------------------------------------------------------------
def _student_teacher() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 10)).eval()
    return copy.deepcopy(teacher), teacher


def _train(labels: list[torch.Tensor], inputs: list[torch.Tensor] | None = None) -> list:
    xs = inputs or [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return list(zip(xs, labels, strict=True))


def _labels(*bad: tuple[int, int]) -> list[torch.Tensor]:
    labels = [
        torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]
    for batch, value in bad:
        labels[batch][3] = value
    return labels


def test_labels_out_of_range_name_the_batch_and_the_classes() -> None:
    student, teacher = _student_teacher()
    with pytest.raises(
        ValueError, match=r"^train batch 2: label 12 is out of range for the model's 10 classes"
    ):
        distill(student, teacher, _train(_labels((2, 12))), steps=4, progress=False)


def test_a_negative_label_is_out_of_range_but_the_ignore_index_is_not() -> None:
    student, teacher = _student_teacher()
    with pytest.raises(ValueError, match=r"train batch 0: label -1 is out of range"):
        distill(student, teacher, _train(_labels((0, -1))), steps=2, progress=False)
    _, history = distill(student, teacher, _train(_labels((1, -100))), steps=2, progress=False)
    assert history.steps == 2


def test_the_recover_pass_reports_bad_labels_in_one_line() -> None:
    student, teacher = _student_teacher()
    x = torch.randn(8, 4)
    gm, original = trace(student, x), trace(teacher, x)
    ctx = PassContext((x,), {"teacher": original, "train": _train(_labels((1, 12)))})
    with pytest.raises(
        PassError, match=r"^\[recover\] train batch 1: label 12 is out of range"
    ) as info:
        PassManager([get_pass("recover", steps=3)]).run(gm, x, context=ctx)
    assert "\n" not in str(info.value)


def test_non_finite_train_inputs_name_the_batch() -> None:
    student, teacher = _student_teacher()
    xs = [torch.randn(8, 4) for _ in range(3)]
    xs[1][0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^train batch 1 holds NaN"):
        distill(student, teacher, _train(_labels(), xs), steps=3, progress=False)


def test_probability_labels_are_accepted_when_finite() -> None:
    student, teacher = _student_teacher()
    soft = [torch.softmax(torch.randn(8, 10), dim=1) for _ in range(3)]
    _, history = distill(student, teacher, _train(soft), steps=2, progress=False)
    assert history.steps == 2
    soft[2][0, 0] = math.nan
    with pytest.raises(ValueError, match=r"train batch 2: the labels hold 1 NaN and 0 inf"):
        distill(student, teacher, _train(soft), steps=3, progress=False)


def test_a_non_finite_weight_is_refused_before_its_int8_scales_are_written() -> None:
    x = torch.rand(2, 4)
    gm = trace(nn.Sequential(nn.Linear(4, 3)).eval(), x)
    layers, _ = find_layers(gm, ())
    with torch.no_grad():
        gm.get_parameter(layers[0].weight)[0, 0] = math.nan
    with pytest.raises(NumericsError, match=r"^\[quantize\] the weight .* holds NaN or inf"):
        quantize_weights(gm, layers)
