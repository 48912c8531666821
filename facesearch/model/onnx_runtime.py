"""Embedding through ONNX Runtime: a model's network exported once to ``model.onnx`` next to its weights,
and an encoder that runs it without importing torch (about 2 s of every CLI call that embeds).

Torch stays the training path and the fallback: a model is embedded through ONNX Runtime only when the
``onnxruntime`` package is installed (``pip install 'facesearch[onnx]'``), the device is the CPU, and the
directory holds a ``model.onnx`` exported from the very weights file the gallery names (its SHA-256 is
stored in the file's metadata; a file left over from other weights is passed over, never used).

The exported graph is the encoder's inference copy (batch norms folded) from pixels in [0, 1] to the
L2-normalised embedding, input normalisation included; mirror-image averaging (``flip_average``) is done
here, around the graph, as :func:`facesearch.model.encoder.embed` does it around the network. PReLU is
written as ``relu(x) + a * (x - relu(x))`` (the same function): ONNX Runtime's own PRelu kernel took
half of SFace's time on this CPU (33 images/s against 49 at one thread, measured with its profiler).

Measured on LFW: the two runtimes' embeddings differ by at most :data:`TOLERANCE` per coordinate and give
the same decisions on LFW View 2's pairs (``tests/integration/test_onnx_runtime.py``; figures in
docs/speed.md).

Nothing here imports torch at module level; :func:`export` does, inside.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np

from facesearch import distance
from facesearch.errors import ModelFileError
from facesearch.model.config import ModelConfig, write_private_atomic
from facesearch.model.files import BUILTIN_MODELS, model_key

log = logging.getLogger("facesearch")

#: the exported network, next to ``model.json`` and ``weights.pt``
ONNX_FILE = "model.onnx"
#: metadata keys written into the file
META_WEIGHTS = "facesearch.weights_sha256"
META_FORWARD_BATCH = "facesearch.forward_batch"
META_INPUT_SIZE = "facesearch.input_size"
META_DIM = "facesearch.embedding_dim"
#: an int8 graph's activation ranges (SHA-256 of the model's ``int8-ranges.json``; absent in an fp32 export)
META_RANGES = "facesearch.int8_ranges_sha256"
INPUT_NAME, OUTPUT_NAME = "pixels", "embedding"
#: ONNX opset the export writes (the TorchScript exporter's; read by ONNX Runtime 1.17 and later)
OPSET = 17
#: the largest difference per embedding coordinate between the torch and ONNX Runtime paths that the
#: tests accept (unit vectors; measured: under 1e-6 on LFW images, float rounding of a different kernel order)
TOLERANCE = 1e-4
#: ``auto``: ONNX Runtime where it can be used, else torch; ``onnx``: ONNX Runtime or an error; ``torch``
RUNTIMES = ("auto", "onnx", "torch")


def available() -> bool:
    """Whether the ``onnxruntime`` package can be imported (without importing it; a module set to None in
    ``sys.modules``, as a process without the package has it, counts as missing)."""
    import sys

    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"] is not None
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def onnx_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / ONNX_FILE


def is_builtin(directory: str | os.PathLike) -> bool:
    """A built-in model's directory (its ONNX file is written at first use; a user's directory is only
    written to by ``facesearch model export --onnx``)."""
    try:
        return Path(directory).resolve().is_relative_to(BUILTIN_MODELS)
    except OSError:
        return False


class CpuDevice:
    """What a model embedded through ONNX Runtime runs on, named without importing torch: it has a torch
    device's ``type`` and ``index`` and prints as ``cpu`` (``torch.device(str(d))`` makes it one)."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    def __repr__(self) -> str:
        return "device(type='cpu')"

    def __eq__(self, other) -> bool:
        return str(other) == "cpu"

    def __hash__(self) -> int:
        return hash("cpu")


CPU = CpuDevice()


def default_threads() -> int:
    """The cores this process may run on (what torch and ONNX Runtime use by default)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ---- export (torch) -------------------------------------------------------------------------------


def _export_copy(net):
    """The encoder's CPU inference copy (batch norms folded) with every PReLU written as
    ``relu(x) + a * (x - relu(x))``, the form ONNX Runtime runs fast (module docstring)."""
    import copy

    import torch
    import torch.nn as nn

    from facesearch.model.inference import fold_batch_norms

    class _PReLU(nn.Module):
        def __init__(self, slope: torch.Tensor):
            super().__init__()
            self.slope = nn.Parameter(slope.detach().clone().float(), requires_grad=False)

        def forward(self, x):
            a = self.slope.view(1, -1, *([1] * (x.dim() - 2))) if self.slope.numel() > 1 else self.slope
            r = torch.relu(x)
            return r + a * (x - r)

    fast = copy.deepcopy(net).cpu().eval()
    fold_batch_norms(fast.trunk)
    for module in list(fast.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, nn.PReLU):
                module._modules[name] = _PReLU(child.weight)
    return fast


def export(net, out: str | os.PathLike, weights_sha256: str) -> Path:
    """Write ``net`` (a loaded :class:`~facesearch.model.encoder.Encoder`) as an ONNX graph at ``out``
    (owner-only, atomic): N x 3 x S x S floats in [0, 1] -> N x D unit vectors, any N. ``weights_sha256``
    (the hash of the weights file it was loaded from) and the forward batch that suits it on the CPU
    (:func:`facesearch.model.inference.forward_batch`) are stored in the file's metadata. The same weights
    and the same torch give the same bytes. Needs torch and the ``onnx`` package."""
    import warnings

    import torch

    from facesearch.model.inference import forward_batch, inference_copy

    try:
        import onnx
    except ImportError as e:
        raise ModelFileError("exporting to ONNX needs the onnx package: pip install 'facesearch[onnx]'") from e
    fast = _export_copy(net)
    size = net.config.input_size
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(fast, (torch.zeros(1, 3, size, size),), buf, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
    graph = onnx.load_from_string(buf.getvalue())
    batch = forward_batch(inference_copy(net)) or 8
    meta = {META_WEIGHTS: weights_sha256, META_FORWARD_BATCH: str(batch), META_INPUT_SIZE: str(size),
            META_DIM: str(net.config.embedding_dim)}
    del graph.metadata_props[:]
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    graph.producer_name, graph.producer_version = "facesearch", ""
    out = Path(out)
    write_private_atomic(out, graph.SerializeToString())
    return out


def export_dir(directory: str | os.PathLike, out: str | os.PathLike | None = None, check: bool = True
               ) -> tuple[Path, float | None]:
    """Export the model in ``directory`` to ``out`` (default: its ``model.onnx``); with ``check`` (and
    onnxruntime installed), embed 16 seeded random images both ways and return the largest difference per
    coordinate (raising ModelFileError above :data:`TOLERANCE`), else None."""
    from facesearch.model import encoder
    from facesearch.model.files import read_model_dir

    config = read_model_dir(directory)
    if config.int8:  # made again from the weights and the stored ranges; nothing to compare it with
        from facesearch.model import quantize

        return quantize.rebuild_onnx(directory, out), None
    net = encoder.load(directory, "cpu", config)
    path = export(net, onnx_path(directory) if out is None else out, net.weights_sha256)
    if not check or not available():
        return path, None
    size = net.config.input_size
    x = np.random.default_rng(0).integers(0, 256, (16, 3, size, size), dtype=np.uint8)
    diff = float(np.abs(OnnxEncoder(path, net.config).embed(x) - encoder.embed(net, x)).max())
    if diff > TOLERANCE:
        raise ModelFileError(f"{path}: ONNX Runtime's embeddings differ from torch's by {diff:.2e} (more than "
                             f"{TOLERANCE:g}); the file is not used as it is")
    return path, diff


def export_beside(net, directory: str | os.PathLike) -> Path | None:
    """After a built-in model was loaded through torch with ONNX Runtime installed: write its
    ``model.onnx``, so that the next process embeds without torch. None (and a log line) when the directory
    cannot be written (a read-only install); the file is written atomically, so processes racing to write
    it each leave a whole file, the same bytes."""
    try:
        return export(net, onnx_path(directory), net.weights_sha256)
    except (OSError, ModelFileError) as e:
        log.info("ONNX export of %s skipped: %s", directory, e)
        return None


# ---- inference (no torch) -------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The facesearch metadata of an ONNX file, read through ONNX Runtime (no ``onnx`` package needed)."""
    ort = _ort()
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelFileError(f"cannot read {path} with ONNX Runtime: {str(e).splitlines()[0][:300]}") from e
    return dict(sess.get_modelmeta().custom_metadata_map)


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelFileError("embedding through ONNX Runtime needs onnxruntime: pip install 'facesearch[onnx]'") from e
    return onnxruntime


class OnnxEncoder:
    """A model's ``model.onnx`` in ONNX Runtime, used where the gallery used the torch encoder: it has the
    encoder's ``config``, ``device`` (:data:`CPU`) and ``weights_sha256`` (of the weights it was exported
    from), and :meth:`embed`. One ONNX Runtime session per thread count, made at first use and shared by
    threads (``InferenceSession.run`` may be called from several threads at once)."""

    runtime = "onnx"

    def __init__(self, path: str | os.PathLike, config: ModelConfig):
        self.path, self.config = Path(path), config
        self._ort = _ort()
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        self.device = CPU
        sess = self.session(1)  # reads the file: a damaged one fails here, not at the first embedding
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        self.weights_sha256 = meta.get(META_WEIGHTS, "")
        shape = sess.get_inputs()[0].shape
        if (meta.get(META_INPUT_SIZE) != str(config.input_size) or meta.get(META_DIM) != str(config.embedding_dim)
                or list(shape[1:]) != [3, config.input_size, config.input_size]):
            raise ModelFileError(f"{path} is not an export of this model ({config.input_size} px, "
                                 f"{config.embedding_dim}-d): input {shape}, metadata {meta}")
        want = (config.quantization or {}).get("ranges_sha256", "")
        if meta.get(META_RANGES, "") != want:
            have = meta.get(META_RANGES)
            raise ModelFileError(
                f"{path} is {'an int8 graph of ranges ' + have[:12] if have else 'an fp32 graph'}, and this model is "
                f"{'int8 with ranges ' + want[:12] if want else 'fp32'}: `facesearch model export --onnx` writes "
                f"the right one")
        #: images per run that suit it on the CPU (measured through torch at export)
        self.forward_batch = int(meta.get(META_FORWARD_BATCH) or 8)

    def session(self, threads: int):
        """The session running on ``threads`` intra-op threads (no spinning: the cores are shared)."""
        sess = self._sessions.get(threads)
        if sess is not None:
            return sess
        with self._lock:
            sess = self._sessions.get(threads)
            if sess is None:
                ort = self._ort
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                try:
                    sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
                except Exception as e:
                    raise ModelFileError(f"cannot load {self.path} with ONNX Runtime: "
                                         f"{str(e).splitlines()[0][:300]}") from e
                self._sessions[threads] = sess
        return sess

    def embed(self, batch_uint8: np.ndarray, batch_size: int | None = None, threads: int | None = None) -> np.ndarray:
        """Embed N x 3 x S x S uint8 images -> N x D float32 unit vectors, ``batch_size`` images per run (default:
        :attr:`forward_batch`) on ``threads`` threads (default: every core this process may use)."""
        x = np.asarray(batch_uint8)
        if not len(x):
            return np.zeros((0, self.config.embedding_dim), np.float32)
        sess = self.session(threads or default_threads())
        step = batch_size or self.forward_batch
        flip = bool(getattr(self.config, "flip_average", False))
        out = []
        for i in range(0, len(x), step):
            xb = x[i:i + step].astype(np.float32) / np.float32(255.0)
            if flip:
                n = len(xb)
                e = sess.run([OUTPUT_NAME], {INPUT_NAME: np.concatenate([xb, xb[..., ::-1]])})[0]
                out.append(distance.normalize(e[:n] + e[n:]))
            else:
                out.append(sess.run([OUTPUT_NAME], {INPUT_NAME: xb})[0])
        return np.concatenate(out).astype(np.float32, copy=False)


def usable(directory: str | os.PathLike, config: ModelConfig, expected_key: str | None) -> Path | None:
    """The directory's ``model.onnx`` when ONNX Runtime can embed with it for a gallery that names its model
    ``expected_key`` (None: any weights): onnxruntime installed, the file there, and exported from those
    weights (checked from its metadata by :class:`OnnxEncoder`, not here); else None."""
    path = onnx_path(directory)
    if not available() or not path.is_file():
        return None
    return path


def why_not(directory: str | os.PathLike, config: ModelConfig) -> str:
    """Why :func:`load` gives no encoder for a model directory, in words."""
    path = onnx_path(directory)
    if not available():
        return "onnxruntime is not installed (pip install 'facesearch[onnx]')"
    if not path.is_file():
        return f"{path} is missing (`facesearch model export --onnx {directory}` writes it)"
    try:
        OnnxEncoder(path, config)
    except ModelFileError as e:
        return str(e)
    return f"{path} was exported from other weights (`facesearch model export --onnx {directory}` writes it again)"


def load(directory: str | os.PathLike, config: ModelConfig, expected_key: str | None) -> OnnxEncoder | None:
    """:class:`OnnxEncoder` of the directory's ``model.onnx`` when it can stand in for the torch encoder of
    a gallery whose model is ``expected_key``; None when onnxruntime is missing, the file is not there, or
    it was exported from other weights (a log line says so: the torch encoder is used)."""
    path = usable(directory, config, expected_key)
    if path is None:
        return None
    try:
        enc = OnnxEncoder(path, config)
    except ModelFileError as e:
        log.info("%s not used: %s", path, e)
        return None
    if expected_key is not None and model_key(config, enc.weights_sha256) != expected_key:
        log.info("%s not used: exported from other weights (%s) than the gallery's model (%s)",
                 path, enc.weights_sha256[:12], expected_key)
        return None
    return enc
