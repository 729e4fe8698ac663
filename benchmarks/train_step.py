"""Training-step benchmark, measured as users train: ours against the authors' way of training.

    .venv/bin/python benchmarks/train_step.py            # bart-base, CPU: about 7 minutes on 2 cores

Same randomly initialised model, same batch (8 clips of 750 frames, ~12-token captions, MCM
masks as design §4), same optimizer (the recipes' AdamW and gradient clipping, design §6). One
training step = loading + collate + forward + backward + clip + AdamW step, for two pipelines:

* ours: ``CaptionDataset`` (masks drawn on the fly) -> ``EnClapCollator`` -> the model with its
  training shortcuts (``modeling/layers.py``, ``modeling/attention.py``) and SDPA attention;
* original (the authors' way, written here): masks precomputed up front, a collator that calls
  ``tokenizer.pad`` once per codebook per example, stock BART layers with eager attention (the
  only attention of the transformers 4.29 the original pins), the MCM loss from all 16 heads at
  every encoder position.

Each pipeline is measured twice: with the recipes' dropout (0.1 for dropout, attention dropout
and activation dropout; the headline) and with dropout 0, where both pipelines must give the
same loss (asserted, 1e-5 relative) and both must read the same batch (asserted always).

Every (pipeline, dropout) runs in a fresh process: ``--warmup`` untimed steps, then ``--steps``
timed ones. Reported: examples per wall-second (on CUDA with a synchronisation before each
clock read); on CPU also per CPU-second of the process; and the process's peak memory: peak
RSS (``ru_maxrss``: weights, gradients, AdamW state, activations and allocator slack, as a user
sees it) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The load average of the machine is
printed at the start and the end: on a shared machine the wall-clock figures move with it.

The last line is ``speedup: N.NN``: ours / original examples per wall-second with the first
``--dropout`` value (default 0.1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.constants import DEFAULT_SEED as SEED  # noqa: E402
from common.constants import MASK_PROB, MASK_SPAN, MAX_FRAMES  # noqa: E402
CAPTIONS = [
    "a dog barks repeatedly while a man speaks in the distance",
    "heavy rain falls on a metal roof as thunder rumbles",
    "a high pitched electronic beep repeats several times",
    "static noise fades in followed by a low engine hum",
    "birds chirp loudly in the distance as strong wind blows",
    "a car engine revs up and then idles for a while",
    "water runs from a kitchen tap into a metal sink",
    "an emergency siren wails and slowly fades away",
]
SIZES = {
    "bart-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=50265),
    "small": dict(d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, vocab_size=50265),
    # For tests: a few seconds per pipeline. The original swaps the tokenizer's pad id to 1024,
    # which must be a real token id: hence a vocabulary above 1024 even here.
    "tiny": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=1100),
}
PIPELINES = ("original", "sdpa", "ours")
DESCRIPTIONS = {
    "original": "the authors' way: stock BART, eager attention, MCM heads at every position",
    "sdpa": "the authors' way with stock SDPA attention",
    "ours": "ours",
}


def write_data(root: str, batch: int, frames: int) -> None:
    """``batch`` clips of random codes (frames, 16) and CLAP vectors, plus the training CSV."""
    import numpy as np

    rng = np.random.default_rng(0)
    for sub in ("enc", "clap"):
        os.makedirs(os.path.join(root, sub, "clips"), exist_ok=True)
    with open(os.path.join(root, "train.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path", "caption"])
        for i in range(batch):
            np.save(os.path.join(root, "enc", "clips", f"{i}.npy"), rng.integers(0, 1024, (frames, 16)))
            clap = rng.standard_normal(512).astype(np.float32)
            np.save(os.path.join(root, "clap", "clips", f"{i}.npy"), clap / np.linalg.norm(clap))
            writer.writerow([f"clips/{i}.npy", CAPTIONS[i % len(CAPTIONS)]])


# ---------------------------------------------------------------------------- the baseline


class BaselineDataset:
    """The original's dataset: every example's MCM mask is computed once, up front."""

    def __init__(self, root: str, tokenizer):
        import numpy as np

        from data.training.masking import MASK_STREAM, example_rng, span_mask

        with open(os.path.join(root, "train.csv"), newline="") as handle:
            self.rows = list(csv.DictReader(handle))
        self.root, self.tokenizer = root, tokenizer
        self.masks = []
        for index, row in enumerate(self.rows):  # same draws as our dataset's epoch 0
            codes = np.load(os.path.join(root, "enc", row["file_path"]))
            self.masks.append(span_mask(codes.shape[0], example_rng(SEED, 0, index, MASK_STREAM), 16, MASK_PROB,
                                            MASK_SPAN))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        import numpy as np

        row = self.rows[index]
        codes = np.load(os.path.join(self.root, "enc", row["file_path"]))          # (T, 16)
        mask = self.masks[index]
        special = lambda v: np.full((1, 16), v)  # noqa: E731
        input_ids = np.concatenate([special(0), special(0), np.where(mask, 1024, codes), special(2)])  # (T+3, 16)
        labels = np.concatenate([special(-100), special(-100), np.where(mask, codes, -100), special(-100)])
        encodec_mask = np.array([0, 0] + [1] * codes.shape[0] + [0])
        return {"input_ids": input_ids, "mcm_labels": labels, "encodec_mask": encodec_mask,
                "attention_mask": np.ones(codes.shape[0] + 3, dtype=np.int64),
                "labels": self.tokenizer(row["caption"])["input_ids"],
                "clap_embedding": np.load(os.path.join(self.root, "clap", row["file_path"]))}


def baseline_collate(features, tokenizer):
    """The original's collator: one ``tokenizer.pad`` call per codebook per example."""
    import numpy as np
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    input_ids, mcm_labels = [], []
    pad_id = tokenizer.pad_token_id
    for feature in features:
        for j in range(16):
            tokenizer.pad_token_id = 1024  # the original swaps the tokenizer's pad id
            input_ids.append(tokenizer.pad({"input_ids": feature["input_ids"][:, j].tolist()}, padding="max_length",
                                           max_length=longest)["input_ids"])
            tokenizer.pad_token_id = pad_id
            row = feature["mcm_labels"][:, j].tolist()
            mcm_labels.append(row + [-100] * (longest - len(row)))
    as_blt = lambda rows: torch.tensor(rows).reshape(len(features), 16, longest).transpose(1, 2)  # noqa: E731
    tokenizer.pad_token_id = 1
    others = tokenizer.pad([{"input_ids": f["encodec_mask"].tolist(), "attention_mask": f["attention_mask"].tolist()}
                            for f in features], return_tensors="pt")
    tokenizer.pad_token_id = pad_id
    width = max(len(f["labels"]) for f in features)
    labels = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features])
    return {"input_ids": as_blt(input_ids), "mcm_labels": as_blt(mcm_labels),
            "encodec_mask": others["input_ids"].bool(), "attention_mask": others["attention_mask"],
            "clap_embedding": torch.tensor(np.stack([f["clap_embedding"] for f in features])),
            "labels": labels}


def baseline_loss(model, batch):
    """Caption loss + 0.7 * sum_j 2^-(j+1) CE(head j at EVERY position) -- the original's MCM."""
    import torch.nn.functional as F

    mcm_labels = batch.pop("mcm_labels")
    out = model(**batch)
    hidden = out.encoder_last_hidden_state                                          # (B, L, D)
    logits = [head(hidden) for head in model.mcm_heads]                             # 16 x (B, L, 1024)
    mcm = sum(F.cross_entropy(logits[j].reshape(-1, 1024).float(), mcm_labels[..., j].reshape(-1),
                              ignore_index=-100) / 2 ** (j + 1) for j in range(16))
    return out.lm_loss + model.config.mcm_loss_scale * mcm


# ---------------------------------------------------------------------------- one pipeline


def run_pipeline(args) -> dict:
    """Builds the model and runs one (pipeline, dropout) in this process; returns its figures."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from data.training.collator import EnClapCollator
    from data.training.dataset import CaptionDataset
    from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration
    from training.optim import build_optimizer
    from training.tokenizer import train_tokenizer

    which, root, p = args.child, args.root, args.dropout[0]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what train.py allows for training (design §6)
    tokenizer = train_tokenizer(CAPTIONS * 4, vocab_size=400)
    sizes = dict(SIZES[args.size])
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(1100 - len(tokenizer))])
    config = EnClapBartConfig(max_position_embeddings=1024, dropout=p, attention_dropout=p, activation_dropout=p,
                              **sizes)
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(config).to(device).train()
    if which != "ours":
        model.set_efficient_training(False)  # stock BART layers, as the original trained them
    if which == "original":
        # The original pins transformers 4.29, whose BART has one attention: the eager one.
        model.config._attn_implementation = "eager"
    # The baselines keep PyTorch's default AdamW, as the original's training loop does (on a CPU a
    # loop of elementwise passes per tensor); ours runs it fused, as train.py does.
    optimizer = build_optimizer(model, SimpleNamespace(weight_decay=0.01, lr=6.5e-5, adam_beta1=0.9,
                                                       adam_beta2=0.999, adam_epsilon=1e-8), fused=which == "ours")
    if which == "ours":
        dataset = CaptionDataset(os.path.join(root, "train.csv"), os.path.join(root, "enc"),
                                 os.path.join(root, "clap"), train=True, seed=SEED)
        # No worker process, so that all of the loading work is in this process's time.
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, collate_fn=EnClapCollator(tokenizer),
                                             num_workers=0)
    else:
        dataset = BaselineDataset(root, tokenizer)  # masks precomputed up front
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=0,
                                             collate_fn=lambda f: baseline_collate(f, tokenizer))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    first = {}
    for index in range(args.warmup + args.steps):
        if index == args.warmup:
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
        torch.manual_seed(SEED + index)  # the same dropout seeds in both pipelines
        batch = next(iter(loader))
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with autocast:
            loss = model(**inputs).loss if which == "ours" else baseline_loss(model, dict(inputs))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index == 0:
            first = {"loss": loss.item(), "batch": {k: v.cpu() for k, v in inputs.items()}}
    sync()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    torch.save(first["batch"], os.path.join(root, f"batch_{which}_{p}.pt"))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kernel's high-water mark
    examples = args.steps * args.batch
    return {"examples_per_s": examples / elapsed, "seconds_per_step": elapsed / args.steps,
            "examples_per_cpu_s": examples / cpu, "peak_bytes": peak, "loss": first["loss"], "device": str(device)}


def child(args, which: str, dropout: float, root: str) -> dict:
    """Runs one (pipeline, dropout) in a fresh process, so that its memory and caches are its own."""
    command = [sys.executable, os.path.abspath(__file__), "--child", which, "--root", root, "--dropout", str(dropout),
               "--size", args.size, "--batch", str(args.batch), "--frames", str(args.frames),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if run.returncode != 0:
        sys.exit(f"{which} / dropout {dropout} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="bart-base", help="model size (default: bart-base)")
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.1, 0.0],
                        help="dropout settings to measure; the first gives the speedup line (default: 0.1 0.0)")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch (default: 8)")
    parser.add_argument("--frames", type=int, default=750, help="EnCodec frames per clip (default: 750 = 10 s)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 autocast as mixed_precision=bf16 trains (default: fp32)")
    parser.add_argument("--pipelines", default="original,ours",
                        help=f"comma-separated, from {', '.join(PIPELINES)}; the first is the baseline "
                             "(default: original,ours)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--child", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = args.device.split(":")[0]
    if device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown or len(pipelines) < 2 or "ours" not in pipelines or len(set(pipelines)) != len(pipelines):
        parser.error(f"--pipelines needs 'ours' and a baseline from {', '.join(PIPELINES)}, got {args.pipelines!r}")
    if pipelines[0] == "ours":
        parser.error("--pipelines: the first one is the baseline, not 'ours'")
    args.pipelines = pipelines
    if any(not 0.0 <= p < 1.0 for p in args.dropout):
        parser.error("--dropout values must be in [0, 1)")
    if args.batch < 1 or args.frames < 20 or args.frames > MAX_FRAMES:
        parser.error(f"--batch must be >= 1 and --frames in [20, {MAX_FRAMES}]")
    if args.steps is None:
        args.steps = 20 if device == "cuda" else 2
    if args.warmup is None:
        args.warmup = 5 if device == "cuda" else 1
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:  # one measurement, in its own process
        print(json.dumps(run_pipeline(args)))
        return 0
    import torch

    from common.cpu import describe_cpu

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("train_step.py: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    on_cuda = args.device.startswith("cuda")
    machine = (f"GPU {torch.cuda.get_device_name(args.device)}" if on_cuda else
               f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
               f"{args.threads or torch.get_num_threads()} threads")
    print(f"machine: {machine}, torch {torch.__version__}; size {args.size}; batch {args.batch} x {args.frames} "
          f"frames, ~12-token captions; {args.precision}; {args.warmup} warm-up + {args.steps} timed steps; "
          f"load average {load_average()}")
    if not on_cuda:
        print(describe_cpu(args.threads or None), flush=True)
    base = args.pipelines[0]
    results, ratios = {}, {}
    with tempfile.TemporaryDirectory(prefix="enclap_bench_") as root:
        write_data(root, args.batch, args.frames)
        for p in args.dropout:
            label = "the recipes' dropout" if p == 0.1 else ("no dropout" if p == 0 else "dropout")
            for which in args.pipelines:
                fig = results[which, p] = child(args, which, p, root)
                speed = f"{fig['examples_per_s']:7.3f} examples/s ({fig['seconds_per_step']:6.2f} s/step)"
                if not on_cuda:
                    speed += f" {fig['examples_per_cpu_s']:7.3f} examples/CPU-s"
                memory = "peak GPU memory" if on_cuda else "peak RSS"
                print(f"dropout {p:<4g} {which:8s} {speed} {memory} {fig['peak_bytes'] / 2**30:6.2f} GiB "
                      f"first-step loss {fig['loss']:.7f}", flush=True)
            batches = {which: torch.load(os.path.join(root, f"batch_{which}_{p}.pt")) for which in args.pipelines}
            for which in args.pipelines:
                assert batches[which].keys() == batches["ours"].keys(), (which, batches[which].keys())
                for key in batches["ours"]:
                    assert torch.equal(batches["ours"][key], batches[which][key]), f"{which}: batches differ in {key}"
            if p == 0:
                losses = {which: results[which, p]["loss"] for which in args.pipelines}
                assert max(losses.values()) - min(losses.values()) <= 1e-5 * abs(losses["ours"]), losses
                same = "same batch, same loss (asserted)"
            else:
                same = "same batch (asserted); losses differ by their dropout draws"
            ours, baseline = results["ours", p], results[base, p]
            ratios[p] = ours["examples_per_s"] / baseline["examples_per_s"]
            cpu_ratio = "" if on_cuda else (f", x{ours['examples_per_cpu_s'] / baseline['examples_per_cpu_s']:.2f} "
                                            "per CPU-second")
            print(f"dropout {p:<4g} ({label}): ours / {base} x{ratios[p]:.2f} examples per wall-second{cpu_ratio}, "
                  f"{100 * (1 - ours['peak_bytes'] / baseline['peak_bytes']):.0f}% less peak memory than "
                  f"{DESCRIPTIONS[base]}; {same}", flush=True)
    print(f"load average at the end: {load_average()}")
    print(f"speedup: {ratios[args.dropout[0]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
