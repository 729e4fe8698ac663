"""Captioning throughput: the batched pipeline vs the same pipeline one clip at a time.

    python benchmarks/inference.py

A bart-base-sized EnCLAP (d_model 768, 6 + 6 layers, vocabulary 50265) with random weights, the
random-weight EnCodec and CLAP encoders, 10 s clips and the paper's beam search (4 beams). The
baseline captions the clips one by one, as the original inference script did; "ours" passes
them all to ``EnClap.caption`` with ``batch_size=8``. Both use the same weights, and the
captions must be identical (asserted). A word-level tokenizer with one word per id makes the
caption strings as exact as the token ids. Prints clips/s of both and, last, ``speedup: N.NN``
(ours / baseline).

Random weights rarely emit ``</s>``, so captions run to ``max_length``; ``--max_length`` (default
13, i.e. ~12 tokens, the length of real captions) keeps the decoder's share realistic.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def word_tokenizer(vocab_size: int):
    """A BART-compatible tokenizer where every id is a distinct word (so decoding is lossless)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BartTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size - 1)})
    vocab["<mask>"] = vocab_size - 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return BartTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                             unk_token="<unk>", mask_token="<mask>", sep_token="</s>", cls_token="<s>")


def build_checkpoint(folder: str) -> None:
    """A bart-base-sized EnCLAP checkpoint with random weights, plus its tokenizer."""
    from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration

    config = EnClapBartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0,
        forced_eos_token_id=2,
    )
    torch.manual_seed(0)
    EnClapBartForConditionalGeneration(config).eval().save_pretrained(folder)
    word_tokenizer(config.vocab_size).save_pretrained(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8, help="number of 10 s clips (default: 8)")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per generate call (default: 8)")
    parser.add_argument("--max_length", type=int, default=13, help="caption length cap in tokens (default: 13)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from modeling.generation import GenerationOptions
    from captioning.pipeline import EnClap

    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(10 * sr) / sr
    clips = [
        ((0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32), sr)
        for _ in range(args.clips)
    ]
    options = GenerationOptions(max_length=args.max_length)
    with tempfile.TemporaryDirectory() as folder:
        build_checkpoint(folder)
        pipeline = EnClap(folder, device=args.device, random_encoders=True, batch_size=args.batch_size)
        pipeline.caption(clips[:1], options=options)  # warm-up: weights paged in, kernels chosen
        device = f"{pipeline.device.type} ({torch.get_num_threads()} threads)" if pipeline.device.type == "cpu" else (
            torch.cuda.get_device_name(pipeline.device))

        start = time.perf_counter()
        baseline = [pipeline.caption([clip], batch_size=1, options=options)[0] for clip in clips]
        base_s = time.perf_counter() - start

        start = time.perf_counter()
        ours = pipeline.caption(clips, batch_size=args.batch_size, options=options)
        ours_s = time.perf_counter() - start

    assert ours == baseline, "batched captions differ from one-at-a-time captions"
    n = len(clips)
    print(f"device: {device}; {n} clips of 10 s; beam {options.num_beams}; max_length {options.max_length}")
    print(f"one clip at a time : {base_s:7.2f} s  {n / base_s:6.3f} clips/s  ({base_s / n:.3f} s/clip)")
    print(f"batched (bs {args.batch_size:>2})    : {ours_s:7.2f} s  {n / ours_s:6.3f} clips/s  ({ours_s / n:.3f} s/clip)")
    print(f"speedup: {base_s / ours_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
