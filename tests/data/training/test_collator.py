"""Tests of data/training/collator.py against the design §3 encoder layout and label rules."""

import copy

import numpy as np
import pytest
import torch

from data.training.collator import EnClapCollator

PAD, BOS, EOS = 1024, 0, 2


def clip(values):
    """(T, 16) codes whose frame t holds values[t] in every codebook, plus the codebook index."""
    return np.array([[v + j for j in range(16)] for v in values], dtype=np.int64)


def test_two_clip_batch_matches_the_spec_table_cell_by_cell():
    a, b = clip([100, 200, 300]), clip([500])  # T = 3 and T = 1 -> L = 3 + 3 = 6
    clap = np.stack([np.full(512, 0.5, np.float32), np.full(512, -1.0, np.float32)])
    batch = EnClapCollator()([{"codes": a, "clap_embedding": clap[0]},
                              {"codes": torch.from_numpy(b), "clap_embedding": torch.from_numpy(clap[1])}])
    # design §3, row by row: (input_ids row, encodec_mask, attention_mask)
    expected = [
        [([BOS] * 16, 0, 1), ([BOS] * 16, 0, 1), (list(range(100, 116)), 1, 1), (list(range(200, 216)), 1, 1),
         (list(range(300, 316)), 1, 1), ([EOS] * 16, 0, 1)],
        [([BOS] * 16, 0, 1), ([BOS] * 16, 0, 1), (list(range(500, 516)), 1, 1), ([EOS] * 16, 0, 1),
         ([PAD] * 16, 1, 0), ([PAD] * 16, 1, 0)],
    ]
    assert batch["input_ids"].shape == (2, 6, 16) and batch["input_ids"].dtype == torch.long
    assert batch["encodec_mask"].dtype == torch.bool and batch["attention_mask"].dtype == torch.long
    for i, rows in enumerate(expected):
        for p, (ids, codec, attend) in enumerate(rows):
            assert batch["input_ids"][i, p].tolist() == ids, (i, p)
            assert int(batch["encodec_mask"][i, p]) == codec, (i, p)
            assert int(batch["attention_mask"][i, p]) == attend, (i, p)
    assert batch["clap_embedding"].dtype == torch.float32
    assert torch.equal(batch["clap_embedding"], torch.from_numpy(clap))
    assert "labels" not in batch and "mcm_labels" not in batch


def test_masked_codes_become_pad_and_mcm_labels_hold_the_originals():
    a, b = clip([100, 200, 300]), clip([500])
    mask_a = np.zeros((3, 16), bool)
    mask_a[1, 4] = mask_a[2, 0] = mask_a[2, 15] = True
    batch = EnClapCollator()([{"codes": a, "clap_embedding": np.zeros(512), "mcm_mask": mask_a},
                              {"codes": b, "clap_embedding": np.zeros(512), "mcm_mask": None}])
    ids, labels = batch["input_ids"], batch["mcm_labels"]
    assert labels.shape == (2, 6, 16) and labels.dtype == torch.long
    expected_labels = torch.full((2, 6, 16), -100)
    expected_labels[0, 3, 4] = 204   # frame 1 -> position 3
    expected_labels[0, 4, 0] = 300   # frame 2 -> position 4
    expected_labels[0, 4, 15] = 315
    assert torch.equal(labels, expected_labels)
    assert ids[0, 3, 4] == PAD and ids[0, 4, 0] == PAD and ids[0, 4, 15] == PAD
    assert ids[0, 3, 5] == 205 and ids[0, 2].tolist() == list(range(100, 116))
    assert ids[1, 2].tolist() == list(range(500, 516))
    # masking does not touch the masks of the layout
    assert batch["encodec_mask"][0].tolist() == [False, False, True, True, True, False]


def test_mcm_labels_present_for_all_false_masks_and_absent_without_masks():
    examples = [{"codes": clip([1, 2]), "clap_embedding": np.zeros(512), "mcm_mask": np.zeros((2, 16), bool)}]
    batch = EnClapCollator()(examples)
    assert torch.all(batch["mcm_labels"] == -100)
    assert "mcm_labels" not in EnClapCollator()([{"codes": clip([1]), "clap_embedding": np.zeros(512)}])


def test_labels_are_bart_tokenization_padded_with_minus_100(tokenizer):
    captions = ["a dog barks while a man speaks", "rain falls"]
    examples = [{"codes": clip([1]), "clap_embedding": np.zeros(512), "caption": c} for c in captions]
    labels = EnClapCollator(tokenizer)(examples)["labels"]
    reference = [tokenizer(c)["input_ids"] for c in captions]  # BART's own "<s> caption </s>"
    assert reference[0][0] == 0 and reference[0][-1] == 2
    assert labels.dtype == torch.long and labels.shape == (2, len(reference[0]))
    assert labels[0].tolist() == reference[0]
    assert labels[1].tolist() == reference[1] + [-100] * (len(reference[0]) - len(reference[1]))
    assert tokenizer.decode(labels[1][labels[1] != -100], skip_special_tokens=True) == "rain falls"


def test_long_captions_are_truncated_keeping_the_end_token(tokenizer):
    caption = "static noise fades in followed by a low hum as birds chirp in the distance"
    full = tokenizer(caption)["input_ids"]
    assert len(full) > 8
    labels = EnClapCollator(tokenizer, max_target_length=8)(
        [{"codes": clip([1]), "clap_embedding": np.zeros(512), "caption": caption}])["labels"]
    assert labels[0].tolist() == full[:7] + [2]


def test_the_tokenizer_is_not_modified(tokenizer):
    before = (copy.deepcopy(tokenizer.init_kwargs), tokenizer.padding_side, tokenizer.truncation_side,
              tokenizer.model_max_length, len(tokenizer), tokenizer.backend_tokenizer.to_str())
    EnClapCollator(tokenizer, max_target_length=5)(
        [{"codes": clip([1]), "clap_embedding": np.zeros(512), "caption": "a siren wails and fades away"},
         {"codes": clip([1, 2]), "clap_embedding": np.zeros(512), "caption": "a door"}])
    after = (tokenizer.init_kwargs, tokenizer.padding_side, tokenizer.truncation_side,
             tokenizer.model_max_length, len(tokenizer), tokenizer.backend_tokenizer.to_str())
    assert before == after


def test_pass_through_lists_and_missing_captions(tokenizer):
    examples = [{"codes": clip([1]), "clap_embedding": np.zeros(512), "file_path": f"x/{i}.npy",
                 "references": [f"ref {i}", "other"]} for i in range(3)]
    batch = EnClapCollator(tokenizer)(examples)
    assert batch["file_path"] == ["x/0.npy", "x/1.npy", "x/2.npy"]
    assert batch["references"][2] == ["ref 2", "other"]
    assert "labels" not in batch  # evaluation examples carry no caption


def test_bad_codes_shape_is_reported():
    with pytest.raises(ValueError, match=r"\(T, 16\)"):
        EnClapCollator()([{"codes": np.zeros((16,), np.int64), "clap_embedding": np.zeros(512)}])


def test_batch_runs_through_the_model_and_padding_does_not_change_a_clip(tiny_model, tokenizer):
    rng = np.random.default_rng(0)
    long_clip, short_clip = rng.integers(0, 1024, (20, 16)), rng.integers(0, 1024, (6, 16))
    clap = rng.standard_normal((2, 512)).astype(np.float32)
    mask = np.zeros((20, 16), bool)
    mask[3:13, 2] = True
    examples = [{"codes": long_clip, "clap_embedding": clap[0], "mcm_mask": mask, "caption": "a dog barks"},
                {"codes": short_clip, "clap_embedding": clap[1], "mcm_mask": None, "caption": "rain falls"}]
    collate = EnClapCollator(tokenizer)
    batch = collate(examples)
    with torch.no_grad():
        out = tiny_model(**{k: v for k, v in batch.items()})
        assert torch.isfinite(out.loss) and out.mcm_loss > 0
        alone = tiny_model(**collate(examples[1:2]))
    # the padded short clip gives the same decoder logits as the clip alone
    length = int((batch["labels"][1] != -100).sum())
    assert torch.allclose(out.logits[1, :length], alone.logits[0, :length], atol=1e-4)
