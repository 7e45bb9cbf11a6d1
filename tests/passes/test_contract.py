"""The pass contract, for every registered pass: what any pass, present or future, must keep.

- the registry round trip: ``get_pass(name, **p.options())`` rebuilds the same options;
- a bad option is an ``OptionError`` that names the pass and the option;
- ``stats`` is JSON as it stands (no objects that only ``str()`` could write);
- ``modified`` is true exactly when the graph or its tensors changed (a fingerprint);
- passes that declare themselves idempotent change nothing on a second run;
- the README's pass table has a row for it, and ``graphopt passes`` lists its options.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from graphopt.capture import trace
from graphopt.data import Batches
from graphopt.options import OptionError
from graphopt.passes import PassContext, get_pass, registered_passes

README = Path(__file__).resolve().parents[2] / "README.md"

# The smallest options each pass needs to do real work on the model below.
MINIMAL_OPTIONS: dict[str, dict[str, object]] = {
    "fold_batchnorm": {},
    "prune": {"ratio": 0.25},
    "low_rank": {"ratio": 0.5},
    "quantize": {},
    "recover": {"steps": 2},
    "adapt": {"target_macs": 0.8, "round_to": 2},
    "remove_blocks": {"blocks": 1},
    "sparsify": {"sparsity": 0.5},
    "cluster": {"bits": 4},
    "quantize_weights": {"block_size": 16},
}
IDEMPOTENT = {"fold_batchnorm", "quantize", "low_rank", "sparsify", "cluster"}
IDEMPOTENT |= {"quantize_weights"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _context(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> PassContext:
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))
    return PassContext(
        inputs,
        teacher=trace(model, inputs),
        train=Batches(x, y, batch_size=8),
        calibration=Batches(x, batch_size=8, labels=False),
    )


def fingerprint(gm: torch.fx.GraphModule) -> str:
    """The graph's code and every tensor's bytes: equal fingerprints, equal modules."""
    digest = hashlib.sha256(gm.code.encode())
    for name, tensor in sorted({**dict(gm.named_parameters()), **dict(gm.named_buffers())}.items()):
        digest.update(name.encode())
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def test_every_registered_pass_has_minimal_options_here() -> None:
    assert set(registered_passes()) == set(MINIMAL_OPTIONS)


@pytest.mark.parametrize("name", sorted(MINIMAL_OPTIONS))
def test_registry_round_trip(name: str) -> None:
    p = get_pass(name, **MINIMAL_OPTIONS[name])
    assert type(p) is registered_passes()[name] and p.name == name
    again = get_pass(name, **p.options())
    assert again.options() == p.options()


@pytest.mark.parametrize("name", sorted(MINIMAL_OPTIONS))
def test_a_bad_option_is_named(name: str) -> None:
    with pytest.raises(OptionError, match=rf"^passes\[2\]\.{name} has no option 'bogus'"):
        get_pass(name, where=f"passes[2].{name}", bogus=1, **MINIMAL_OPTIONS[name])
    with pytest.raises(ValueError, match=name):  # an OptionError is a ValueError too
        registered_passes()[name](bogus=1)


@pytest.mark.parametrize("name", sorted(MINIMAL_OPTIONS))
def test_stats_are_json_and_modified_matches_the_fingerprint(name: str) -> None:
    model = _model()
    inputs = (torch.randn(2, 3, 8, 8),)
    gm = trace(model, inputs)
    before = fingerprint(gm)
    result = get_pass(name, **MINIMAL_OPTIONS[name]).run(gm, _context(model, inputs))
    json.dumps(dict(result.stats), allow_nan=False)  # raises on objects, NaN, inf
    changed = fingerprint(result.graph_module) != before
    assert result.modified == changed, f"{name}: modified={result.modified}, changed={changed}"


@pytest.mark.parametrize("name", sorted(IDEMPOTENT))
def test_a_second_run_changes_nothing(name: str) -> None:
    model = _model()
    inputs = (torch.randn(2, 3, 8, 8),)
    ctx = _context(model, inputs)
    first = get_pass(name, **MINIMAL_OPTIONS[name]).run(trace(model, inputs), ctx)
    first.graph_module.recompile()
    before = fingerprint(first.graph_module)
    second = get_pass(name, **MINIMAL_OPTIONS[name]).run(first.graph_module, ctx)
    assert not second.modified and fingerprint(second.graph_module) == before


@pytest.mark.parametrize("name", sorted(MINIMAL_OPTIONS))
def test_the_readme_and_the_listing_describe_it(name: str) -> None:
    from graphopt.passes import describe_passes

    assert f"| `{name}` |" in README.read_text()
    (row,) = [r for r in describe_passes() if r["name"] == name]
    cls = registered_passes()[name]
    assert set(row["options"]) == set(cls.Options.model_fields)
    assert all(option["type"] for option in row["options"].values())


def test_refusals_and_tables_are_typed_and_mirrored_in_stats() -> None:
    from graphopt.passes import PassResult, Refusal

    model = _model()
    gm = trace(model, (torch.randn(2, 3, 8, 8),))
    result = PassResult(
        gm,
        modified=False,
        refusals=(Refusal("conv1", "depthwise"),),
        tables={"sensitivity": [{"layer": "conv1", "cosine": 0.99}]},
    )
    assert result.stats["refused"] == [{"node": "conv1", "reason": "depthwise"}]
    assert result.stats["sensitivity"][0]["layer"] == "conv1"
    assert set(result.tables) == {"refused", "sensitivity"}
    legacy = PassResult(gm, modified=False, stats={"refused": [{"node": "n", "reason": "r"}]})
    assert legacy.refusals == (Refusal("n", "r"),) and "refused" in legacy.tables
