"""The report of a run with a search stage: Pareto plot and chosen channels are written."""

from __future__ import annotations

from graphopt.passes import Adapt, FoldBatchNorm
from graphopt.runner import compress
from graphopt.zoo import get_model


def test_adapt_stage_writes_pareto_plot_and_channel_table(tmp_path) -> None:
    model, inputs = get_model("resnet18", input_shape=(1, 3, 32, 32))
    run = compress(model, inputs, [FoldBatchNorm(), Adapt(target_macs=0.7, step=0.1)])
    written = run.report.write(tmp_path)
    names = {p.name for p in written}
    assert "pareto_2_adapt.png" in names and (tmp_path / "pareto_2_adapt.png").stat().st_size > 0
    text = (tmp_path / "report.md").read_text()
    assert "## adapt: channels" in text and "pareto_2_adapt.png" in text  # the generic table
