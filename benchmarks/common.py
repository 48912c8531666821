"""Shared helpers: timing, percentiles, memory, machine description, model resolution."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LFW_ZIP = SHARED / "data" / "lfw" / "lfw-deepfunneled-112.zip"
IMAGENET = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
RESULTS = REPO / "benchmarks" / "results"


def time_calls(fn, n: int, budget_s: float, warmup: int = 1, min_n: int = 3) -> list[float]:
    """Call ``fn(i)`` up to ``n`` times (at least ``min_n``, stopping once ``budget_s`` is spent).

    Returns the wall time of each call in seconds (warm-up calls excluded)."""
    for i in range(warmup):
        fn(i)
    out: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
        if len(out) >= min_n and time.perf_counter() - start > budget_s:
            break
    return out


def pct_ms(times_s: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(times_s) * 1e3, q)), 4)


def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM. (Not ru_maxrss: Linux carries the parent's peak into a
    child across fork + exec, so a small process started by a big one would report the big one's peak.)"""
    hwm = _status("VmHWM")
    return hwm if hwm is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    return _status("VmRSS") or 0


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(float(a) / float(b), 3)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    cpu = cpu_name()
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    import torch

    try:
        import faiss

        faiss_version, faiss_threads = faiss.__version__, faiss.omp_get_max_threads()
    except ImportError:  # the GPU-only benchmark runs without faiss
        faiss_version = faiss_threads = None
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss_version,
        "faiss_omp_threads": faiss_threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    return info


def write_result(res: dict, out: str | os.PathLike | None, name: str) -> Path:
    """Write a benchmark's JSON to ``out``, else ``benchmarks/results/<name>-<machine>.json``; the machine
    description (``res["machine"]``) gets the load average at the end. Returns the path written."""
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = Path(out) if out else RESULTS / f"{name}-{machine_tag(res['machine'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    return path


def machine_tag(info: dict) -> str:
    if info.get("cuda"):
        name = info["cuda"].lower().replace("nvidia", "").strip().split()[0]
        return f"{name}-{info['cpu_cores']}core"
    return f"cpu-{info['cpu_cores']}core"


def resolve_model(model: str | None, workdir: Path) -> tuple[Path, str]:
    """The model to benchmark: ``--model DIR``, else the shipped default model, else an ImageNet-initialised
    encoder (untrained embedding head, threshold 0.3) saved into ``workdir``. Returns (dir, description)."""
    if model:
        d = Path(model).expanduser().resolve()
        return d, f"{d}"
    from facesearch.model import encoder
    from facesearch.gallery.facade import builtin_model_dir

    d = builtin_model_dir()
    if (d / encoder.CONFIG_FILE).exists() and (d / encoder.WEIGHTS_FILE).exists():
        return d, f"builtin:{d.name} (the default model)"
    if not IMAGENET.exists():
        raise SystemExit(f"no model: pass --model DIR (the shipped default model is not installed at {d} and "
                         f"the ImageNet checkpoint is not at {IMAGENET})")
    from facesearch.model.config import ModelConfig

    net = encoder.build(ModelConfig(threshold=0.3), pretrained=str(IMAGENET)).eval()
    out = workdir / "model-imagenet-init"
    encoder.save(net, out)
    return out, "imagenet-init (ImageNet MobileNetV2 trunk, untrained head; the default model was not installed)"


def model_key(model_dir: Path) -> str:
    from facesearch.model import encoder
    from facesearch.model.config import ModelConfig

    cfg = ModelConfig.load(Path(model_dir) / encoder.CONFIG_FILE)
    return f"{cfg.name}@{encoder.weights_sha256(model_dir)[:12]}"
