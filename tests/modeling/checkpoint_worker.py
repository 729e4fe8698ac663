"""One side of tests/modeling/test_checkpoints_across_majors.py, under the transformers it runs with.

It saves a tiny random-weight EnCLAP in both checkpoint formats (:func:`save_checkpoints`) and
records what the product's loader makes of such checkpoints (:func:`record`). The test calls
both in its own process and runs this module in a process of the other transformers major::

    python -m tests.modeling.checkpoint_worker MAJOR OUT SAVE_ROOT [RECORD_ROOT ...]

which checks that it runs transformers MAJOR, saves into SAVE_ROOT, and writes to OUT (with
``torch.save``) the installed version and :func:`record` of SAVE_ROOT and every RECORD_ROOT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import transformers

from modeling import EnClapBartForConditionalGeneration, load_pretrained
from modeling.generation import decode_captions, generate_ids
from tests.helpers import CAPTIONS, TEST_THREADS, make_batch, make_tiny_config, random_clips
from training.tokenizer import train_tokenizer

#: A beam count other than the default (design §7), so a generation config lost on the way shows.
SAVED_NUM_BEAMS = 3


def save_checkpoints(root: Path) -> None:
    """One tiny random-weight model, saved twice under ``root``.

    ``folder/``: as training writes it (``save_pretrained``: config, safetensors weights and
    generation config; the tokenizer). ``bin/``: the authors' layout, ``config.json`` and a
    ``pytorch_model.bin`` state dict holding every key, tied copies included, and nothing else.
    """
    tokenizer = train_tokenizer(CAPTIONS * 2, vocab_size=300)
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(make_tiny_config(len(tokenizer))).eval()
    model.generation_config.num_beams = SAVED_NUM_BEAMS
    model.save_pretrained(root / "folder")
    tokenizer.save_pretrained(root / "folder")
    (root / "bin").mkdir(parents=True)
    model.config.save_pretrained(root / "bin")
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")


def record(root: Path) -> dict:
    """Per format of ``root``, what :func:`modeling.load_pretrained` gives (the CLIs' loading path).

    Returns:
        ``{"folder" | "bin": results}``; results: teacher-forced ``logits``; ``ids`` and ``captions``
        of the pipeline's generate (the design §7 defaults); ``saved_config_ids`` and ``num_beams``
        of ``generate`` under the checkpoint's own generation config; the encoder, decoder and
        cross ``*_attentions`` with eager attention, stacked over layers.
    """
    codes, clap = random_clips(2, [9, 14], seed=3)
    batch = make_batch(codes, clap)
    results = {}
    # The authors' folders carry no tokenizer: the bin checkpoint is given the other folder's.
    for name, path, tokenizer in (("folder", root / "folder", None),
                                  ("bin", root / "bin" / "pytorch_model.bin", str(root / "folder"))):
        loaded = load_pretrained(path, tokenizer=tokenizer)
        model = loaded.model
        captions = loaded.tokenizer(CAPTIONS[:2], padding=True, return_tensors="pt")
        teacher = dict(batch, decoder_input_ids=captions.input_ids, decoder_attention_mask=captions.attention_mask)
        ids = generate_ids(model, batch, loaded.generation_config)
        with torch.no_grad():
            result = {
                "caption_ids": captions.input_ids,
                "logits": model(**teacher).logits,
                "ids": ids,
                "captions": decode_captions(loaded.tokenizer, ids),
                "saved_config_ids": model.generate(**batch),
                "num_beams": model.generation_config.num_beams,
            }
            model.set_attn_implementation("eager")
            output = model(**teacher, output_attentions=True)
        for kind in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
            result[kind] = torch.stack(getattr(output, kind))
        results[name] = result
    return results


def main(argv: list[str]) -> None:
    major, out, save_root, *record_roots = argv
    print("transformers", transformers.__version__, "from", os.path.dirname(transformers.__file__))
    if int(transformers.__version__.split(".")[0]) != int(major):
        raise SystemExit(f"expected transformers {major}.x, running {transformers.__version__}")
    torch.set_num_threads(TEST_THREADS)
    save_checkpoints(Path(save_root))
    records = {root: record(Path(root)) for root in [save_root, *record_roots]}
    torch.save({"version": transformers.__version__, "records": records}, out)


if __name__ == "__main__":
    main(sys.argv[1:])
