"""Captioning latency and throughput: the lean beam search vs the stock generate path, and long audio.

    python benchmarks/inference.py                 # bart-base size (heavy: ~2 min on 2 cores)
    python benchmarks/inference.py --size small    # d_model 256, 2 + 2 layers: for development

A randomly initialised EnCLAP at bart-base size (d_model 768, 6 + 6 layers, vocabulary 50265),
the paper's beam search (4 beams, no-repeat 3-grams), 10 s clips of made-up codes. Three paths
caption the same inputs:

* **stock**: ``generate(share_cross_attention=False)`` with stock BART layers, i.e. Hugging Face's
  beam search, its cache (cross-attention keys and values per beam, reordered every step) and
  its logits processors;
* **shared**: the previous default, Hugging Face's loop with the cross-attention keys and values
  computed once per clip (the path before :mod:`modeling.beam_search`);
* **ours**: the default ``generate``, i.e. :func:`modeling.beam_search.beam_search`.

Tokens must be identical on every path (asserted). Printed: the CPU (``common.cpu``) and, for
ours, which kernel each decoder-step product was measured fastest in on it; where one clip's
time goes on the stock path and on ours (encoder, first decoder call, later decoder calls, the
rest of beam search); a floor for the later decoder calls: the weight bytes one such step reads
(:func:`modeling.beam_search.step_weight_bytes`) over the rate this machine reads memory at
(:func:`read_bandwidth`),
against each path's time per later call; then one clip at a time and batched, and a long clip
against a 13.6 s clip end to end from a WAV file through ``EnClap.run`` (random-weight encoders).

On a CPU with native bf16 (or with ``--bf16 on``) it also times the users' bf16 route, a second
``EnClap(dtype="bf16")`` from the same checkpoint (``inference.py --dtype bf16``), as ours one
clip and batched, taking turns with the fp32 paths, and prints its split, its floor, its ratios
and how many captions and tokens equal the fp32 ones (random weights have near-tied logits, so
bf16 rounding changes some tokens here), then ``speedup with --dtype bf16 (tokens N % equal to
fp32): M.MM`` (stock fp32 / ours bf16, one clip). The last line, ``speedup: N.NN``, is the
one-clip ratio stock / ours in fp32, identical tokens.

Random weights rarely emit ``</s>``, so captions run to ``max_length``; ``--max_length`` (default
13, i.e. ~12 tokens, the length of real captions) keeps the decoder's share realistic.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZES = {
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "small": dict(d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
}


#: How the benchmark names :data:`modeling.beam_search.KERNELS`.
KERNEL_NAMES = {"linear": "F.linear", "transposed": "(W @ x.T).T", "onednn": "oneDNN",
                "onednn_packed": "oneDNN, packed copy"}


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


def build_checkpoint(folder: str, size: str) -> None:
    """An EnCLAP checkpoint of the given size with random weights, plus its tokenizer."""
    from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration

    config = EnClapBartConfig(vocab_size=50265, max_position_embeddings=1024, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
                              **SIZES[size])
    torch.manual_seed(0)
    EnClapBartForConditionalGeneration(config).eval().save_pretrained(folder)
    word_tokenizer(config.vocab_size).save_pretrained(folder)


@contextmanager
def path(model, name: str):
    """Run ``model.generate`` as one of the three paths (see the module docstring)."""
    from modeling import beam_search

    supported = beam_search.supported
    if name == "shared":
        beam_search.supported = lambda *a: False
    model.set_efficient_training(name != "stock")
    try:
        yield {"share_cross_attention": name != "stock"}
    finally:
        beam_search.supported = supported
        model.set_efficient_training(True)


class Split:
    """Wall time of one generate call split into encoder, first / later decoder calls and the rest."""

    def __init__(self, model):
        from modeling import beam_search

        self.model, self.lean = model, beam_search._Decoder
        self.parts = {"encoder": 0.0, "first decoder call": 0.0, "later decoder calls": 0.0}
        self.calls = 0  # decoder calls (stock: model forwards; ours: steps), first included

    def _timed(self, part_of, fn):
        @functools.wraps(fn)  # generate() inspects the forward's signature
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.parts[part_of()] += time.perf_counter() - start
            return out
        return run

    @contextmanager
    def measure(self):
        def count(fn):
            @functools.wraps(fn)
            def run(*args, **kwargs):
                self.calls += 1
                return fn(*args, **kwargs)
            return run

        decoder_part = lambda: "first decoder call" if self.calls == 1 else "later decoder calls"  # noqa: E731
        encoder, forward = self.model.model.encoder.forward, self.model.forward
        init, step = self.lean.__init__, self.lean.step
        self.model.model.encoder.forward = self._timed(lambda: "encoder", encoder)
        self.model.forward = self._timed(decoder_part, count(forward))  # stock: decoder + LM head per step
        # ours: the cross-attention projections belong to the first decoder call, as in stock
        self.lean.__init__ = self._timed(lambda: "first decoder call", init)
        self.lean.step = self._timed(decoder_part, count(step))
        start = time.perf_counter()
        try:
            yield
        finally:
            self.total = time.perf_counter() - start
            del self.model.model.encoder.forward, self.model.forward
            self.lean.__init__, self.lean.step = init, step
        self.parts["rest of beam search"] = self.total - sum(self.parts.values())

    def per_later_call(self) -> float:
        """Seconds per later decoder call (nan without one)."""
        return self.parts["later decoder calls"] / (self.calls - 1) if self.calls > 1 else float("nan")


def time_paths(runs, config, repeats):
    """``{name: (best seconds, token ids)}`` of ``repeats`` generate calls per run.

    The runs take turns (stock, shared, ours, stock, ...) so that a busy spell of a shared
    machine slows them alike, and the best time of each is kept.

    Args:
        runs: ``{name: (model, inputs, path name)}`` (path names: see :func:`path`).
        config: the generation config every run uses.
        repeats: timed calls per run.
    """
    best = {name: (float("inf"), None) for name in runs}
    for _ in range(repeats):
        for name, (model, inputs, path_name) in runs.items():
            with path(model, path_name) as kwargs, torch.inference_mode():
                start = time.perf_counter()
                ids = model.generate(**inputs, generation_config=config, **kwargs)
                best[name] = (min(best[name][0], time.perf_counter() - start), ids)
    return best


def read_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second this machine reads memory at: the best of ``repeats`` sums over a buffer.

    A sum over ``megabytes`` MB of float32 (far beyond any CPU cache) reads each byte once and
    writes nothing, as a decoder step streams its weights; the bytes counted are the buffer's.
    """
    buffer = torch.ones(megabytes * 10**6 // 4, device=device)
    buffer.sum()  # warm-up: threads started, kernels chosen
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        buffer.sum()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * buffer.element_size() / best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_line(step_bytes: int, bandwidth: float, per_step: dict[str, float]) -> str:
    """The bandwidth floor of a later decoder step against what each path took per step.

    Args:
        step_bytes: weight bytes one step reads (:func:`modeling.beam_search.step_weight_bytes`).
        bandwidth: bytes per second (:func:`read_bandwidth`).
        per_step: ``{path: seconds per later decoder call}`` (:meth:`Split.per_later_call`).
    """
    paths = ", ".join(f"{name} {1000 * seconds:.1f} ms/step" for name, seconds in per_step.items())
    return (f"later decoder steps read {step_bytes / 1e6:.0f} MB of weights each; memory reads at "
            f"{bandwidth / 1e9:.1f} GB/s here -> at least {1000 * step_bytes / bandwidth:.1f} ms/step; {paths}")


def agreement(ids: torch.Tensor, reference: torch.Tensor, pad: int) -> tuple[int, float]:
    """``(identical captions, fraction of equal tokens)`` of ``ids`` against ``reference`` (pads dropped)."""
    from modeling.generation import token_agreement

    rows = lambda t: [[token for token in row.tolist() if token != pad] for row in t]  # noqa: E731
    captions, tokens = token_agreement(rows(ids), rows(reference))
    return round(captions * reference.shape[0]), tokens


#: The paths that must give identical tokens, and the name of the bf16 run.
PATHS = ("stock", "shared", "ours")
BF16 = "--dtype bf16"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="model size (default: base)")
    parser.add_argument("--clips", type=int, default=8, help="10 s clips for the batched run (default: 8)")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per generate call (default: 8)")
    parser.add_argument("--max_length", type=int, default=13, help="caption length cap in tokens (default: 13)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per path, best kept (default: 3)")
    parser.add_argument("--long_seconds", type=float, default=150.0, help="the long clip (default: 150 s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="also time ours with the model in bf16 (EnClap dtype='bf16', inference.py --dtype bf16) "
                             "and report its token agreement with fp32 (default auto: on a CPU with native bf16)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import soundfile as sf

    from captioning.pipeline import EnClap
    from common.cpu import describe_cpu, native_bf16
    from modeling import beam_search
    from modeling.generation import GenerationOptions

    rng = np.random.default_rng(0)
    items = []
    for _ in range(args.clips):
        clap = rng.standard_normal(512).astype(np.float32)
        items.append({"codes": rng.integers(0, 1024, size=(750, 16)), "clap_embedding": clap / np.linalg.norm(clap)})
    options = GenerationOptions(max_length=args.max_length)
    with tempfile.TemporaryDirectory() as folder:
        build_checkpoint(folder, args.size)
        pipeline = EnClap(folder, device=args.device, random_encoders=True, batch_size=args.batch_size)
        model = pipeline.model
        config = options.to_generation_config(model.config)
        items_by_label = {"one clip": items[:1], f"batch of {args.batch_size}": items[: args.batch_size]}
        inputs_by_label = {label: pipeline._model_inputs(chosen) for label, chosen in items_by_label.items()}
        bf16 = None  # the users' bf16 route: the same checkpoint through EnClap(dtype="bf16")
        if args.bf16 == "on" or (args.bf16 == "auto" and pipeline.device.type == "cpu" and native_bf16()):
            bf16 = EnClap(folder, device=args.device, random_encoders=True, batch_size=args.batch_size, dtype="bf16")
        device = f"{pipeline.device.type} ({torch.get_num_threads()} threads)" if pipeline.device.type == "cpu" else (
            torch.cuda.get_device_name(pipeline.device))
        print(f"device: {device}; {args.size} size; 10 s clips (750 frames); beam {options.num_beams}; "
              f"max_length {options.max_length}; best of {args.repeats}")
        print(describe_cpu())

        runs = {label: {name: (model, inputs, name) for name in PATHS} for label, inputs in inputs_by_label.items()}
        if bf16:
            for label, chosen in items_by_label.items():
                runs[label][BF16] = (bf16.model, bf16._model_inputs(chosen), "ours")

        # Where one clip's time goes, and the floor of a later decoder step.
        time_paths(runs["one clip"], config, 1)  # warm-up: weights paged in, kernels chosen
        per_step = {}
        for name in ("stock", "ours", BF16) if bf16 else ("stock", "ours"):
            run_model, inputs, path_name = runs["one clip"][name]
            split = Split(run_model)
            with path(run_model, path_name) as kwargs, torch.inference_mode(), split.measure():
                run_model.generate(**inputs, generation_config=config, **kwargs)
            parts = ", ".join(f"{k} {v:.3f} s" for k, v in split.parts.items())
            print(f"{name:>5} one clip: {split.total:.3f} s = {parts}")
            per_step[name] = split.per_later_call()
        bandwidth = read_bandwidth(pipeline.device)
        step_bytes = beam_search.step_weight_bytes
        print(floor_line(step_bytes(model), bandwidth, {k: per_step[k] for k in ("stock", "ours")}))
        if bf16:
            print(f"{BF16}: " + floor_line(step_bytes(bf16.model), bandwidth, {BF16: per_step[BF16]}))

        print("decoder-step products, kernel measured fastest on this CPU: " + "; ".join(
            f"{out}x{inp} {str(dtype).replace('torch.', '')} weight, {rows} rows: {KERNEL_NAMES[kernel]}"
            for ((out, inp), dtype, _, rows, _), kernel in sorted(beam_search._KERNEL.items(), key=str)))

        bf16_tokens = {}
        for label, inputs in inputs_by_label.items():
            timed = time_paths(runs[label], config, args.repeats)
            times = {name: seconds for name, (seconds, _) in timed.items()}
            ids = {name: tokens for name, (_, tokens) in timed.items()}
            same = all(torch.equal(ids["stock"], ids[name]) for name in PATHS)
            assert same, f"{label}: the paths gave different tokens"
            clips = inputs["input_ids"].shape[0]
            print(f"{label:>11}: stock {times['stock'] / clips:.3f} s/clip, shared {times['shared'] / clips:.3f}, "
                  f"ours {times['ours'] / clips:.3f}; stock/ours {times['stock'] / times['ours']:.2f}x, "
                  f"shared/ours {times['shared'] / times['ours']:.2f}x; tokens identical")
            if label == "one clip":
                one_clip_speedup = times["stock"] / times["ours"]
            if bf16:
                captions, bf16_tokens[label] = agreement(ids[BF16], ids["ours"], model.config.pad_token_id)
                print(f"{label:>11}, {BF16}: ours {times[BF16] / clips:.3f} s/clip; stock fp32 / ours bf16 "
                      f"{times['stock'] / times[BF16]:.2f}x, ours fp32 / ours bf16 {times['ours'] / times[BF16]:.2f}x; "
                      f"captions equal to fp32 {captions}/{ids['ours'].shape[0]}, tokens equal "
                      f"{100 * bf16_tokens[label]:.0f} %")
                if label == "one clip":
                    bf16_speedup = times["stock"] / times[BF16]
        if bf16:
            print(f"({BF16}: random weights give near-tied logits, which bf16 rounding reorders; a trained "
                  "checkpoint's agreement is what inference.py --dtype bf16 --compare_fp32 reports)")

        # Long audio end to end from a WAV file: decode, encode (EnCodec reads only the start), caption.
        sr = 16000
        window = pipeline.max_frames / 75.0
        wavs = {}
        for seconds in (window, args.long_seconds):
            t = np.arange(int(seconds * sr)) / sr
            wav = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
            wavs[seconds] = os.path.join(folder, f"clip_{seconds:.1f}.wav")
            sf.write(wavs[seconds], wav.astype(np.float32), sr)
        pipeline.run([wavs[window]], options=options)  # warm-up: encoders built
        cost = {seconds: float("inf") for seconds in wavs}
        for _ in range(args.repeats):  # the two clips take turns, as the paths above
            for seconds, wav_path in wavs.items():
                start = time.perf_counter()
                (result,) = pipeline.run([wav_path], options=options)
                cost[seconds] = min(cost[seconds], time.perf_counter() - start)
                assert result.error is None and result.truncated == (seconds > window), (seconds, result)
        print(f"end to end from a WAV: {window:.1f} s clip {cost[window]:.2f} s; {args.long_seconds:.0f} s clip "
              f"{cost[args.long_seconds]:.2f} s ({cost[args.long_seconds] / cost[window]:.2f}x the {window:.1f} s clip)")
    if bf16:
        print(f"speedup with {BF16} (tokens {100 * bf16_tokens['one clip']:.0f} % equal to fp32): {bf16_speedup:.2f}")
    print(f"speedup: {one_clip_speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
