"""int8 models: a model's network quantised for ONNX Runtime on the CPU (``facesearch model quantize``).

An int8 model is its own model. Its embeddings are another function of the image than the fp32 network's
(a mean cosine of 0.98-0.99 to them on LFW), so a gallery never mixes the two: the model's key carries
``+int8-<ranges hash>`` (:func:`facesearch.model.files.model_key`), a gallery that switches re-embeds
(``facesearch reindex --model``), and its thresholds are calibrated on its own embeddings.

An int8 model directory holds

* ``model.json``: the fp32 model's config with ``quantization`` set (the method, the calibration images,
  the ranges' SHA-256, the fp32 model's key) and, once calibrated, its own thresholds;
* ``weights.pt``: the fp32 weights it was quantised from (a copy: what its key names, what it is made
  again from);
* ``int8-ranges.json``: the activation ranges measured on the calibration images (ONNX Runtime's
  calibration cache; a few kB, no image in it);
* ``model.onnx``: the quantised graph. ``facesearch model export --onnx DIR`` writes it again from the
  weights and the ranges, the same bytes (``tests/integration/test_int8.py``).

The quantisation, chosen by measurement (``benchmarks/int8.py``, docs/speed.md): ONNX Runtime's static
quantisation in the QOperator format of the convolutions only, per-channel int8 weights, uint8
activations, the activation ranges calibrated at the 99.99th percentile (or by MinMax) on aligned crops
of people the model will not be scored on. Embeds through ONNX Runtime only: torch has no path for it.
Needs the ``onnx`` extra (``onnx`` and ``onnxruntime``) to be made; only ``onnxruntime`` to embed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facesearch.errors import ModelFileError
from facesearch.files import write_private_atomic
from facesearch.model import onnx_runtime
from facesearch.model.config import ModelConfig
from facesearch.model.files import CONFIG_FILE, WEIGHTS_FILE, model_key, read_model_dir, weights_sha256

#: the activation ranges, next to the weights
RANGES_FILE = "int8-ranges.json"
#: calibration methods (ONNX Runtime's names: Percentile at 99.99, the default, and MinMax)
METHODS = ("percentile", "minmax")
#: what ``quantization`` says of how it was made (model.json)
RECIPE = ("onnxruntime quantize_static, QOperator format, Conv only, per-channel int8 weights, uint8 "
          "activations; input graph: facesearch's fp32 ONNX export after quant_pre_process")


def ranges_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise ModelFileError(f"unknown int8 calibration method {method!r}: use {', '.join(METHODS)}")
    return {"minmax": (CalibrationMethod.MinMax, {}),
            "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99})}[method]


def _quantizer():
    try:
        import onnx  # noqa: F401 - quantize_static needs it
        from onnxruntime import quantization
    except ImportError as e:
        raise ModelFileError("making an int8 model needs onnx and onnxruntime: pip install 'facesearch[onnx]'") from e
    return quantization


def quantize_graph(fp32: str | os.PathLike, out: str | os.PathLike, ranges: str | os.PathLike, method: str,
                   metadata: Callable[[str], dict[str, str]], crops: np.ndarray | None = None) -> Path:
    """Quantise the ONNX graph ``fp32`` into ``out`` (owner-only, atomic). With ``crops`` (N x 3 x S x S
    uint8 model inputs), the activation ranges are measured on them and written to ``ranges``; without,
    the ranges are read from ``ranges`` (which must exist). ``metadata(ranges_sha256)`` replaces the
    graph's metadata."""
    q = _quantizer()
    import onnx

    calib, extra = _calibration_method(method)
    ranges = Path(ranges)
    if crops is None and not ranges.is_file():
        raise ModelFileError(f"{ranges} is missing: the int8 model cannot be made again without its ranges")
    with tempfile.TemporaryDirectory(prefix="facesearch-int8-") as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        reader = None
        if crops is not None:
            x = np.asarray(crops).astype(np.float32) / np.float32(255.0)
            # batches of one size: the percentile calibrator stacks them (a shorter last batch breaks it)
            step = next(b for b in (8, 4, 2, 1) if len(x) % b == 0)

            class Reader(q.CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([{onnx_runtime.INPUT_NAME: x[i:i + step]} for i in range(0, len(x), step)])

                def get_next(self):
                    return next(self.batches, None)

            reader = Reader()
            cache = Path(tmp) / "ranges.json"
        else:
            cache = Path(tmp) / "ranges.json"
            shutil.copyfile(ranges, cache)
        try:
            q.quantize_static(str(pre), str(raw), reader, quant_format=q.QuantFormat.QOperator, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              op_types_to_quantize=["Conv"], calibrate_method=calib, extra_options=extra,
                              calibration_cache_path=str(cache))
        except (ValueError, KeyError) as e:
            raise ModelFileError(f"int8 quantisation failed ({str(e).splitlines()[0][:300]}): were the ranges in "
                                 f"{ranges} measured on another export of this model?") from e
        canonical = _canonical_ranges(cache)
        graph = onnx.load(str(raw))
        del graph.metadata_props[:]
        for k, v in metadata(hashlib.sha256(canonical).hexdigest()).items():
            graph.metadata_props.add(key=k, value=v)
        graph.producer_name, graph.producer_version = "facesearch", ""
        if crops is not None:
            write_private_atomic(ranges, canonical)
        out = Path(out)
        write_private_atomic(out, graph.SerializeToString())
    return out


def _canonical_ranges(cache: Path) -> bytes:
    """ONNX Runtime's calibration cache, its keys sorted (the same ranges give the same bytes and hash)."""
    return json.dumps(json.loads(cache.read_text()), sort_keys=True, indent=1).encode() + b"\n"


def _metadata(config: ModelConfig, weights: str, forward_batch: str) -> Callable[[str], dict[str, str]]:
    return lambda ranges: {
        onnx_runtime.META_WEIGHTS: weights, onnx_runtime.META_FORWARD_BATCH: forward_batch,
        onnx_runtime.META_INPUT_SIZE: str(config.input_size), onnx_runtime.META_DIM: str(config.embedding_dim),
        onnx_runtime.META_RANGES: ranges}


def _fp32_export(directory: Path, tmp: Path, config: ModelConfig) -> tuple[Path, str]:
    """The fp32 ONNX graph of the weights in ``directory`` (exported into ``tmp`` through torch), and the
    forward batch stored in it."""
    from facesearch.model import encoder

    net = encoder.load_fp32(directory, config)
    path = onnx_runtime.export(net, tmp / "fp32.onnx", net.weights_sha256)
    meta = onnx_runtime.read_metadata(path)
    return path, meta.get(onnx_runtime.META_FORWARD_BATCH, "8")


def quantize_dir(src: str | os.PathLike, out: str | os.PathLike, crops: np.ndarray, method: str = "percentile",
                 name: str | None = None, calibration_source: str = "") -> ModelConfig:
    """Make the int8 model directory ``out`` (new or empty) of the fp32 model in ``src``, its activation
    ranges measured on ``crops`` (model inputs of people it will not be scored on). Its thresholds are the
    fp32 model's until it is calibrated (``facesearch model calibrate``); ``quantization.calibrated`` says
    which. Returns its config."""
    src, out = Path(src), Path(out)
    config = read_model_dir(src)
    if config.quantization:
        raise ModelFileError(f"{src} is already an int8 model; quantise its fp32 original")
    if len(crops) < 8:
        raise ModelFileError(f"int8 calibration needs at least 8 face images, got {len(crops)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(f"{out} exists and is not an empty directory: choose a new directory")
    sha = weights_sha256(src)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with tempfile.TemporaryDirectory(prefix="facesearch-int8-") as tmp:
            fp32, batch = _fp32_export(src, Path(tmp), config)
            ranges = out / RANGES_FILE
            quantize_graph(fp32, onnx_runtime.onnx_path(out), ranges, method, _metadata(config, sha, batch), crops)
            rsha = ranges_sha256(ranges)
            q = {"precision": "int8", "method": method, "recipe": RECIPE, "ranges_sha256": rsha,
                 "calibration_images": int(len(crops)), "calibration_source": calibration_source,
                 "fp32_model": model_key(config, sha), "thresholds": "the fp32 model's (not calibrated on int8)"}
            config.quantization = q
            config.name = name or f"{config.name}-int8"
        shutil.copyfile(src / WEIGHTS_FILE, out / WEIGHTS_FILE)
        os.chmod(out / WEIGHTS_FILE, 0o600)
        if weights_sha256(out) != sha:
            raise ModelFileError(f"{src / WEIGHTS_FILE} changed while it was quantised")
        config.save(out / CONFIG_FILE)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return config


def rebuild_onnx(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write an int8 model's ``model.onnx`` again (or to ``out``) from its weights and its stored ranges."""
    directory = Path(directory)
    config = read_model_dir(directory)
    q = config.quantization
    if not q:
        raise ModelFileError(f"{directory} is not an int8 model")
    ranges = directory / RANGES_FILE
    if not ranges.is_file() or ranges_sha256(ranges) != q.get("ranges_sha256"):
        raise ModelFileError(f"{ranges} is missing or not the ranges this model was made with "
                             f"(sha256 {str(q.get('ranges_sha256'))[:12]}): quantise the fp32 model again")
    with tempfile.TemporaryDirectory(prefix="facesearch-int8-") as tmp:
        fp32, batch = _fp32_export(directory, Path(tmp), config)
        return quantize_graph(fp32, onnx_runtime.onnx_path(directory) if out is None else out, ranges, q["method"],
                              _metadata(config, weights_sha256(directory), batch))
