#!/usr/bin/env python
"""Training throughput (images/s) of the facesearch training step, with a baseline.

    python benchmarks/train_speed.py [--rounds 3] [--steps 2] [--batch 16 4] [--size 112] [--device auto]

Measures, for MobileNetV2 at 112 px (ImageNet init when the shared checkpoint is found):

* ``facesearch``: the step train.py runs: a P x K batch gathered by index from the uint8 tensor that
  holds the whole decoded data set on the device, whole-batch augmentation on the device
  (``train.augment_batch``), forward, contrastive loss, backward, AdamW step; on CUDA with autocast
  (bf16/fp16) and channels_last.
* ``baseline-pil``: the same step, but each image augmented on the CPU one at a time with PIL
  (flip, affine, brightness/contrast), then stacked and copied to the device: the usual
  Dataset + transforms pipeline without worker processes.
* on CUDA also ``facesearch-fp32``: the facesearch step without autocast, and ``facesearch-graph`` /
  ``facesearch-graph-fp32``: the same steps captured once as a CUDA graph and replayed
  (``train --cuda-graph``, ``train.TrainStep``), each with its own model and optimiser.

On CUDA it first checks that the graph step trains like the eager one (``graph_check``, fp32 and the
training's autocast: the same initial weights, batches and learning-rate schedule for 20 steps; the
losses must agree and the weights and BatchNorm statistics must end where the eager step takes them),
and records the check in the JSON.

Modes are interleaved round by round and each figure is the median over rounds, so a load change on
a shared machine hits every mode alike. Also reports the input pipeline alone (gather + augment + copy).
Writes benchmarks/results/train-speed-<machine>.json and prints a table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402
from facesearch.model import encoder  # noqa: E402
from facesearch.model.config import ModelConfig  # noqa: E402
from facesearch.losses import ContrastiveLoss  # noqa: E402
from facesearch.training import (  # noqa: E402
    TrainOptions, TrainStep, augment_batch, make_optimizer)
from facesearch.training import amp_dtype as _amp_dtype, to_device as _to_device  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
LFW_ZIP = SHARED / "data" / "lfw" / "lfw-deepfunneled-112.zip"


def pil_augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One H x W x 3 uint8 image: flip, scale/shift/rotate, brightness/contrast, like augment_batch."""
    im = Image.fromarray(img)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    s = im.size[0]
    im = im.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR,
                   translate=(rng.uniform(-0.03, 0.03) * s, rng.uniform(-0.03, 0.03) * s))
    scale = rng.uniform(0.9, 1.1)
    side = int(round(s / scale))
    off = (s - side) // 2
    im = im.crop((off, off, off + side, off + side)).resize((s, s), Image.Resampling.BILINEAR)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))
    return np.asarray(im)


def load_images(n: int, size: int, data: Path = LFW_ZIP) -> np.ndarray:
    """n real LFW faces (N x 3 x S x S uint8) when the shared pack exists, else random pixels."""
    if data.is_file():
        from facesearch.datasets import ImageFolder

        folder = ImageFolder(data)
        keys = [k for name in folder.identities() for k in folder.items[name]][:n]
        return folder.load_prepared(keys, ModelConfig(input_size=size))
    return np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


class Bench:
    """One model + optimiser on ``device``; ``run(mode, amp, steps)`` times ``steps`` training steps.
    ``graph``: the optimiser is capturable and every amp setting gets its own CUDA graph step (so a graph
    Bench serves one amp setting: two graphs over one optimiser would fight over the gradients)."""

    def __init__(self, device: torch.device, pixels: np.ndarray, p: int, k: int, weights: Path = WEIGHTS,
                 graph: bool = False, input_size: int | None = None):
        torch.manual_seed(0)
        self.device, self.pixels, self.n, self.graph = device, pixels, p * k, graph
        cfg = ModelConfig(backbone="mobilenet_v2", input_size=input_size or pixels.shape[-1])
        self.model = encoder.build(cfg, pretrained=weights if weights and weights.is_file() else None)
        self.model = self.model.to(device).train()
        self.opts = TrainOptions(data=".", out=".")
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(self.model, self.opts, device, capturable=graph)  # as train.run
        self.loss_fn = ContrastiveLoss()
        self.data = torch.from_numpy(pixels).to(device)
        self.hwc = pixels.transpose(0, 2, 3, 1).copy()
        self.rng = np.random.default_rng(0)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.labels = torch.arange(p, device=device).repeat_interleave(k)
        self.trainers: dict[str, TrainStep] = {}

    def trainer(self, amp: str) -> TrainStep:
        if amp not in self.trainers:
            amp_dtype = _amp_dtype(TrainOptions(data=".", out=".", amp=amp), self.device)
            self.trainers[amp] = TrainStep(self.model, self.loss_fn, self.opt, amp_dtype, self.device,
                                           cuda_graph=self.graph)
        return self.trainers[amp]

    def batch(self, mode: str) -> torch.Tensor:
        idx = self.rng.choice(len(self.pixels), self.n, replace=False)
        if mode == "baseline-pil":
            b = np.stack([pil_augment(self.hwc[i], self.rng) for i in idx]).transpose(0, 3, 1, 2)
            return torch.from_numpy(np.ascontiguousarray(b)).to(self.device).float().div_(255.0)
        return augment_batch(self.data[_to_device(idx, self.device)], self.gen)

    def step(self, mode: str, amp: str) -> torch.Tensor:
        x = self.batch(mode)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trainer(amp)(x, self.labels)[0]

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, mode: str, amp: str, steps: int) -> float:
        """images/s over ``steps`` steps."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(mode, amp)
        self.sync()
        return self.n * steps / (time.perf_counter() - t0)

    def augment_only(self, mode: str, reps: int) -> float:
        """images/s of the input pipeline alone (gather + augment + copy to the device)."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            self.batch(mode)
        self.sync()
        return self.n * reps / (time.perf_counter() - t0)


def _float_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(parameters, floating-point buffers such as BatchNorm running statistics), copied."""
    params = {k: v.detach().float().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().float().clone() for k, v in model.named_buffers() if v.is_floating_point()}
    return params, buffers


def _apart_over_moved(a: dict, b: dict, start: dict) -> tuple[float, float, float]:
    moved = sum(float((a[n] - start[n]).pow(2).sum()) for n in a) ** 0.5
    apart = sum(float((a[n] - b[n]).pow(2).sum()) for n in a) ** 0.5
    return moved, apart, apart / max(moved, 1e-12)


def compare_trainers(make_a, make_b, batches: list[torch.Tensor], labels: torch.Tensor,
                     factors: list[float]) -> dict:
    """Train two (model, TrainStep) pairs, built by ``make_a()`` / ``make_b()`` from the same initial
    weights, on the same ``batches`` with learning-rate factors ``factors`` (one per batch); compare.

    ``ok`` needs every loss to agree (relative difference <= 1e-2), the integer buffers (BatchNorm's
    batch counters) to be equal, and B's final weights, and separately its BatchNorm running statistics,
    to be much closer to A's than A's are to where they started (``param_diff_ratio``,
    ``buffer_diff_ratio`` <= 0.05): B applied the same updates, not merely similar losses (a step that
    never updates shows a ratio near 1)."""
    (ma, ta), (mb, tb) = make_a(), make_b()
    start_p, start_b = _float_state(ma)
    la, lb = [], []
    for x, f in zip(batches, factors):
        ta.set_lr(f)
        tb.set_lr(f)
        la.append(float(ta(x, labels)[0].detach()))
        lb.append(float(tb(x, labels)[0].detach()))
    (pa, ba), (pb, bb) = _float_state(ma), _float_state(mb)
    moved, apart, ratio = _apart_over_moved(pa, pb, start_p)
    _, _, buffer_ratio = _apart_over_moved(ba, bb, start_b)
    ints_a = {k: v for k, v in ma.state_dict().items() if not v.is_floating_point()}
    ints_b = {k: v for k, v in mb.state_dict().items() if not v.is_floating_point()}
    counters_equal = all(torch.equal(ints_a[k].cpu(), ints_b[k].cpu()) for k in ints_a)
    rel = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(la, lb))
    return {"steps": len(batches), "loss_a": la, "loss_b": lb, "max_loss_rel_diff": rel,
            "update_norm": moved, "param_diff_norm": apart, "param_diff_ratio": ratio,
            "buffer_diff_ratio": buffer_ratio, "counters_equal": counters_equal,
            "ok": bool(rel <= 1e-2 and ratio <= 0.05 and buffer_ratio <= 0.05 and counters_equal)}


def graph_check(device: torch.device, pixels: np.ndarray, p: int, k: int, steps: int = 20,
                weights: Path = WEIGHTS, amp: str = "off", graph: bool = True) -> dict:
    """Does the CUDA graph step (``graph``) train exactly like the eager one? Same start, same augmented
    batches, no dropout, a learning rate falling from 1x to 0.1x (so set_lr must reach the graph), cuDNN
    in deterministic mode; ``amp`` as in training. Also runs eager against eager, the noise floor
    (``eager_vs_eager``). Never raises: a failure is ``ok: False`` with the error."""
    data = torch.from_numpy(pixels).to(device)
    gen = torch.Generator(device=device).manual_seed(1)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(steps):
        x = augment_batch(data[_to_device(rng.choice(len(pixels), p * k, replace=False), device)], gen)
        batches.append(x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x)
    labels = torch.arange(p, device=device).repeat_interleave(k)
    factors = list(np.linspace(1.0, 0.1, steps))

    def make(g):
        def build():
            b = Bench(device, pixels[:p * k], p, k, weights, graph=g)
            b.model.dropout.p = 0.0  # the two runs draw different dropout masks; the check is of the step
            return b.model, b.trainer(amp)
        return build

    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        noise = compare_trainers(make(False), make(False), batches, labels, factors)
        res = compare_trainers(make(False), make(graph), batches, labels, factors)
        res["eager_vs_eager"] = {k: noise[k] for k in ("max_loss_rel_diff", "param_diff_ratio", "ok")}
    except Exception as e:  # a capture that fails is a failed check, not a failed benchmark
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        torch.backends.cudnn.deterministic = deterministic
    res["compared"] = "eager vs " + ("cuda graph" if graph else "eager")
    res["amp"] = amp
    return res


def measure_device(device: torch.device, pixels: np.ndarray, p: int, k: int, steps: int, rounds: int,
                   warmup: int, weights: Path = WEIGHTS, graph: bool = True) -> list[dict]:
    """Modes are interleaved round by round (so a load change on a shared machine hits them alike);
    each mode's figure is the median over rounds."""
    eager = Bench(device, pixels, p, k, weights)
    # (mode, amp, bench, input source)
    modes = [("facesearch", "auto", eager, "facesearch")]
    if device.type == "cuda":
        modes.append(("facesearch-fp32", "off", eager, "facesearch"))
    if device.type == "cuda" and graph:
        modes += [("facesearch-graph", "auto", Bench(device, pixels, p, k, weights, graph=True), "facesearch"),
                  ("facesearch-graph-fp32", "off", Bench(device, pixels, p, k, weights, graph=True), "facesearch")]
    modes.append(("baseline-pil", "auto", eager, "baseline-pil"))
    for _, amp, bench, src in modes:
        bench.run(src, amp, max(warmup, TrainStep.WARMUP + 1 if bench.graph else 0))
    per_mode: dict[str, list[float]] = {m[0]: [] for m in modes}
    for _ in range(rounds):
        for mode, amp, bench, src in modes:
            per_mode[mode].append(bench.run(src, amp, steps))
    rows = []
    reps = 20 if device.type == "cuda" else 5
    for mode, amp, bench, src in modes:
        v = per_mode[mode]
        amp_dtype = _amp_dtype(TrainOptions(data=".", out=".", amp=amp), device)
        rows.append({
            "mode": mode, "device": device.type, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
            "cuda_graph": bench.graph, "batch": bench.n, "steps_per_round": steps, "rounds": rounds,
            "images_per_s": round(float(np.median(v)), 1), "images_per_s_rounds": [round(x, 1) for x in v],
            "input_pipeline_images_per_s": round(bench.augment_only(src, reps), 1),
        })
    return rows


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu{os.cpu_count()}"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto: CPU, and CUDA too when present; or cpu / cuda")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, nargs=2, default=None, metavar=("P", "K"),
                    help="default: 16 4 on the CPU, 64 4 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="steps per round and mode (default 2 CPU, 20 CUDA)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--output", default=None)
    ap.add_argument("--data", type=Path, default=LFW_ZIP, help="LFW pack (random pixels if missing)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="ImageNet MobileNetV2 checkpoint")
    ap.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True,
                    help="on CUDA also check and measure the CUDA graph step")
    args = ap.parse_args(argv)
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "auto" and torch.cuda.is_available() or args.device.startswith("cuda"):
        devices = [torch.device("cuda" if args.device == "auto" else args.device)] + (
            [] if args.device.startswith("cuda") else devices)
    load_start = os.getloadavg()
    pixels = load_images(2048, args.size, args.data)
    rows, checks = [], {}
    for dev in devices:
        p, k = args.batch or ((64, 4) if dev.type == "cuda" else (16, 4))
        if dev.type == "cuda" and args.graph:
            per_amp = {}
            for amp in ("off", "auto"):  # fp32 and the training's autocast (bf16 where supported)
                c = graph_check(dev, pixels, p, k, weights=args.weights, amp=amp)
                per_amp[amp] = {key: v for key, v in c.items() if key not in ("loss_a", "loss_b")}
                detail = c.get("error") or (f"max loss rel diff {c['max_loss_rel_diff']:.2e}, state apart / moved "
                                            f"{c['param_diff_ratio']:.2e}; eager vs eager "
                                            f"{c['eager_vs_eager']['param_diff_ratio']:.2e}")
                print(f"cuda graph check, amp {amp}: {'ok' if c['ok'] else 'FAILED'} ({detail})",
                      file=sys.stderr, flush=True)
            checks[dev.type] = {"ok": all(c["ok"] for c in per_amp.values()), "by_amp": per_amp}
        steps = args.steps or (20 if dev.type == "cuda" else 2)
        warmup = args.warmup if args.warmup is not None else (10 if dev.type == "cuda" else 1)
        for r in measure_device(dev, pixels, p, k, steps, args.rounds, warmup, args.weights, args.graph):
            rows.append(r)
            print(f"{dev.type:5s} {r['mode']:21s} amp={r['amp']:8s} batch={r['batch']:4d} "
                  f"{r['images_per_s']:9.1f} img/s (rounds {r['images_per_s_rounds']})", file=sys.stderr, flush=True)
    base = {d: next(r for r in rows if r["device"] == d and r["mode"] == "facesearch")["images_per_s"]
            for d in {r["device"] for r in rows}}
    for r in rows:
        r["ratio_vs_facesearch"] = round(r["images_per_s"] / base[r["device"]], 3)
    main_dev = devices[0]
    res = {
        "benchmark": "training step throughput, MobileNetV2, contrastive P x K batches",
        "input_size": args.size,
        "pretrained": args.weights.is_file(),
        "images": "LFW deep-funneled 112 px" if args.data.is_file() else "random pixels",
        "results": rows,
        "cuda_graph_check": checks or None,
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
        "note": ("images_per_s: median over interleaved rounds of whole training steps; input_pipeline_images_per_s: "
                 "gather + augment + copy to the device alone. CPU figures depend on whatever else runs on the "
                 "machine (see load_average_*); on the CPU the network step dominates, so the input pipeline "
                 "matters little there; it bounds throughput on a GPU."),
    }
    out = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / f"train-speed-{machine_name(main_dev)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{'device':6s} {'mode':21s} {'amp':6s} {'batch':>5s} {'images/s':>9s} {'ratio':>6s} {'input only':>11s}")
    for r in rows:
        print(f"{r['device']:6s} {r['mode']:21s} {r['amp']:6s} {r['batch']:5d} {r['images_per_s']:9.1f} "
              f"{r['ratio_vs_facesearch']:6.2f} {r['input_pipeline_images_per_s']:11.1f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
