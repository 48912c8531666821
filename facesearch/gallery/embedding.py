"""From an image to the model's input, and from inputs to embeddings, for one gallery handle.

The encoder is loaded at its first use: a command that embeds nothing (``info``, ``identities``,
``remove``) never imports torch, which takes seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facesearch import detect as fdetect
from facesearch import images
from facesearch.detect.align import crop_geometry, realign_or_warp, warp_geometry
from facesearch.detect.folder import one_detector_thread
from facesearch.errors import ModelFileError, ModelMismatchError, NoFaceError
from facesearch.gallery.index_cache import replaced_in_place
from facesearch.model.config import ModelConfig, weights_sha256
from facesearch.model.files import model_key
from facesearch.model import onnx_runtime
from facesearch.model.inference import ThreadTuner, forward_batch, inference_copy, thread_counts

if TYPE_CHECKING:  # the encoder module imports torch
    from facesearch.model import encoder

#: what the API takes as an image: a path, the bytes of an image file, an H x W x 3 uint8 RGB numpy array
#: (a video frame; H x W uint8 grayscale too) or a ``PIL.Image``
ImageInput = "str | os.PathLike | bytes | np.ndarray | PIL.Image.Image"


def _in_memory(image) -> bool:
    from PIL import Image

    return isinstance(image, (np.ndarray, Image.Image))


def input_name(image) -> str:
    """How an image is named in results and errors: its path, ``<N bytes>``, ``<array HxW>`` or
    ``<PIL image WxH>``."""
    if isinstance(image, (bytes, bytearray)):
        return f"<{len(image)} bytes>"
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(map(str, image.shape[:2]))}>"
    if _in_memory(image):
        return f"<PIL image {image.width}x{image.height}>"
    return str(image)


def read_pixels(image) -> tuple[np.ndarray, str]:
    """Read one image -> (H x W x 3 uint8 RGB, sha256 of its bytes; for pixels given in memory, of their PNG
    encoding). Anything that is not an image input is an InvalidImageError."""
    if isinstance(image, (bytes, bytearray)):
        return images.decode(bytes(image)), hashlib.sha256(image).hexdigest()
    if _in_memory(image):
        pixels = images.from_array(image, input_name(image))
        return pixels, hashlib.sha256(images.png_bytes(pixels)).hexdigest()
    if not isinstance(image, (str, os.PathLike)):
        images.from_array(image, input_name(image))  # raises, saying what is accepted
    loaded = images.load(image)
    return loaded.pixels, loaded.sha256


def align_face(pixels: np.ndarray, face: "fdetect.Face", config: ModelConfig) -> np.ndarray:
    """A detected face aligned to the model's own template (``config.alignment``), else to the LFW
    pack's geometry that facesearch's own models are trained on."""
    template, size = crop_geometry(config.alignment, config.input_size)  # the rule `facesearch align` follows
    return fdetect.align(pixels, face, size=size, template=template, template_size=size)


def model_crop(pixels: np.ndarray, config: ModelConfig, detector: "fdetect.Detector | None" = None,
               given: "Sequence[Sequence[float]] | None" = None) -> np.ndarray:
    """An aligned face crop in the geometry of the model that embeds it.

    ``given`` is the crop's geometry: None for crops aligned like the LFW pack (what ``facesearch align``
    writes for facesearch's own models, and what users give), else the 5 x 2 template of the model whose
    crop it is (a stored crop, re-embedded by another model). When the two geometries agree the crop is
    returned as it is; otherwise its five landmarks are found again and moved onto the model's template,
    as ``evaluate lfw --realign`` does (measured for SFace on LFW View 2: 99.25% against 95.72% on the
    crops as given). When the detector is not installed or finds no face, the crop is warped from the
    ``given`` geometry onto the model's instead (the same face, moved as an average crop would be)."""
    template, size = crop_geometry(config.alignment, config.input_size)
    src, src_size = crop_geometry(given, len(pixels))  # a stored crop is at its model's input size
    if np.allclose(src / src_size, template / size, atol=1e-3):
        return pixels
    det = detector if detector is not None else fdetect.get_detector()
    if not det.available():
        return warp_geometry(pixels, src, src_size, template, size)
    with one_detector_thread(det):
        return realign_or_warp(pixels, template, size, det, given=src, given_size=src_size)[0]


def fixed_warp(pixels: np.ndarray, config: ModelConfig, given: "Sequence[Sequence[float]] | None" = None
               ) -> np.ndarray:
    """An aligned crop moved from the geometry ``given`` (None: the LFW pack's mean landmarks) onto the
    model's, without looking at the face: :func:`model_crop`'s fallback (SFace on LFW View 2: 97.88%,
    between the 99.25% of landmarks found again and the 95.72% of the crops as given)."""
    template, size = crop_geometry(config.alignment, config.input_size)
    src, src_size = crop_geometry(given, len(pixels))
    return warp_geometry(pixels, src, src_size, template, size)


@dataclass(frozen=True)
class WholeImage:
    """Where a face result came from when ``--detect-fallback`` used the whole photo as an aligned crop
    because the detector found no face in it (in place of a :class:`facesearch.detect.Face`)."""

    width: int
    height: int
    why: str

    def to_dict(self) -> dict:
        return {"fallback": f"the whole image, as an aligned face crop ({self.why})",
                "box": [0, 0, int(self.width), int(self.height)]}


def face_crops(pixels: np.ndarray, source: str, config: ModelConfig, detect: bool, every: bool = False,
               detector: "fdetect.Detector | None" = None, fallback: bool = False
               ) -> list[tuple[np.ndarray, "fdetect.Face | WholeImage | None"]]:
    """The model's inputs (3 x S x S uint8) for an image: the image itself when it is an aligned crop (in
    the model's geometry: :func:`model_crop`);
    with ``detect``, its largest face aligned (``every``: all its faces, largest first). A photo in which
    the detector finds no face raises InvalidImageError, unless ``fallback``: then the whole image is taken
    as an aligned crop, and its face is a :class:`WholeImage` saying so."""
    if not detect:
        return [(images.prepare(model_crop(pixels, config, detector), config), None)]
    try:
        with one_detector_thread(detector):
            faces = fdetect.faces_or_fail(pixels, source, detector)
    except NoFaceError as e:
        if not fallback:
            raise
        crop = images.prepare(model_crop(pixels, config, detector), config)
        return [(crop, WholeImage(pixels.shape[1], pixels.shape[0], e.reason))]
    return [(images.prepare(align_face(pixels, f, config), config), f) for f in (faces if every else faces[:1])]


@dataclass(frozen=True)
class ModelFiles:
    """A model not loaded yet: its config (read), where its weights are, the device asked for, and the
    runtime (:data:`facesearch.model.onnx_runtime.RUNTIMES`: ``auto`` embeds through ONNX Runtime where the
    model has a ``model.onnx`` of its weights, onnxruntime is installed and the device is the CPU; ``torch``
    never; ``onnx`` or an error)."""

    config: ModelConfig
    directory: Path
    device: str | None
    runtime: str = "auto"

    def load(self) -> "encoder.Encoder":
        """The torch encoder, with this config (a gallery keeps the config it was opened with)."""
        from facesearch.model import encoder

        return encoder.load(self.directory, encoder.resolve_device(self.device), config=self.config)

    def on_cpu(self) -> bool:
        """Whether the device asked for is the CPU, known without torch (``auto`` where no GPU driver is)."""
        from facesearch import index as vindex

        return self.device == "cpu" or (self.device in (None, "auto") and not vindex.gpu_driver_present())


def onnx_beside(files: ModelFiles, net: "encoder.Encoder") -> bool:
    """After ``files`` were loaded through torch as ``net``: whether ONNX Runtime can embed them from now on.
    A built-in model on the CPU whose ``model.onnx`` is missing or of other weights gets one written now
    (once, about 1.5 s; skipped where the package directory is read-only), so later handles and processes
    embed without torch. A user's model directory is written to only by ``facesearch model export --onnx``."""
    if files.runtime == "torch" or net.device.type != "cpu" or not onnx_runtime.available():
        return False
    key = model_key(files.config, net.weights_sha256)
    if onnx_runtime.load(files.directory, files.config, key) is not None:
        return True
    if not onnx_runtime.is_builtin(files.directory) or onnx_runtime.export_beside(net, files.directory) is None:
        return False
    return onnx_runtime.load(files.directory, files.config, key) is not None


class GalleryModel:
    """A gallery handle's encoder: loaded once (threads share it, and the first to need it loads it while
    the others wait), its fast inference copy (made once too), embedding."""

    def __init__(self, model: "encoder.Encoder | ModelFiles"):
        self._model = model
        #: the files ONNX Runtime may stand in for (those the handle was opened with, until :meth:`set`), the
        #: ONNX Runtime encoder once made, and whether it was looked for
        self._onnx_source = model if isinstance(model, ModelFiles) else None
        self._onnx: onnx_runtime.OnnxEncoder | None = None
        self._onnx_tried = False
        self._local = threading.local()  # .threads: ONNX Runtime's threads inside single_thread
        self.lock = threading.Lock()  # around loading and replacing the model
        self._fast_lock = threading.Lock()  # around making the inference copy
        #: (model, its inference copy, the forward batch that suits it: inference.forward_batch)
        self._fast: tuple[encoder.Encoder, encoder.Encoder, int | None] | None = None
        #: the thread tuner the last enroll call used, which the next carries on (lent to one call at a time:
        #: :meth:`borrow_tuner`)
        self.last_tuner: ThreadTuner | None = None
        #: images per forward pass when set; None: the model's own (:func:`~facesearch.model.inference.
        #: forward_batch`: 16 for MobileNetV2 at 112 px, 8 for SFace on the CPU; every call's images at once
        #: on a GPU). Enroll, query and reindex hand over their batches (64 by default), split into these.
        self.forward_batch: int | None = None

    @property
    def config(self) -> ModelConfig:
        return self._model.config

    @property
    def files(self) -> ModelFiles | None:
        return self._model if isinstance(self._model, ModelFiles) else None

    def get(self, expected_key: str) -> "encoder.Encoder":
        """The encoder, loading it on first use; its weights must still be those named ``expected_key``
        (an ONNX Runtime encoder where the handle was given one: an int8 model that ``reindex`` switched to)."""
        net = self._model
        if not isinstance(net, ModelFiles):
            return net
        with self.lock:
            files = self._model
            if not isinstance(files, ModelFiles):
                return files
            try:
                net = files.load()
            except ModelFileError as e:  # other weights that do not fit: say they were replaced
                now = model_key(files.config, weights_sha256(files.directory))
                if now != expected_key:
                    raise ModelMismatchError(replaced_in_place(expected_key, str(files.directory), now)) from e
                raise
            now = model_key(files.config, net.weights_sha256)  # of the bytes just loaded
            if now != expected_key:
                raise ModelMismatchError(replaced_in_place(expected_key, str(files.directory), now))
            if self._onnx is None:
                onnx_beside(files, net)
            self._model = net
            return net

    def onnx(self, expected_key: str) -> "onnx_runtime.OnnxEncoder | None":
        """The ONNX Runtime encoder that embeds for this handle, made at first use; None where torch does
        (see :class:`ModelFiles`'s ``runtime``). Raises ModelFileError for runtime ``onnx`` without one."""
        if isinstance(self._model, onnx_runtime.OnnxEncoder):  # given one (set): it embeds
            return self._model
        src = self._onnx_source
        if src is None or src.runtime == "torch":
            return None
        if not self._onnx_tried:
            with self.lock:
                if not self._onnx_tried and self._onnx_source is src:
                    if src.on_cpu():
                        self._onnx = onnx_runtime.load(src.directory, src.config, expected_key)
                    self._onnx_tried = True
        if self._onnx is None and (src.runtime == "onnx" or src.config.int8):
            why = ("the device is not the CPU" if not src.on_cpu() else onnx_runtime.why_not(src.directory, src.config))
            what = (f"{src.config.name} is an int8 model, which embeds through ONNX Runtime on the CPU only"
                    if src.config.int8 else "runtime onnx")
            raise ModelFileError(f"{what}: cannot embed through ONNX Runtime: {why}")
        return self._onnx

    @contextlib.contextmanager
    def loading_meanwhile(self, expected_key: str):
        """Make the ONNX Runtime session in a thread while the caller reads and aligns its images.

        A one-image query pays for both at its first embedding: building the session (~0.1-0.2 s on this
        2-core CPU, most of it in ONNX Runtime's C++ with the GIL released) and the detector's first call
        (~0.2 s) that the model's re-alignment of a crop makes. Side by side they take the longer of the two.
        The thread is joined on exit; it only calls :meth:`onnx`, whose lock the caller's own call waits on,
        and its errors are left to that call (which raises them again)."""
        src = self._onnx_source
        if (src is None or src.runtime == "torch" or self._onnx_tried or not onnx_runtime.available()
                or not src.on_cpu()):
            yield
            return

        def load():
            try:
                self.onnx(expected_key)
            except Exception:  # noqa: BLE001 - the caller's own call of onnx() raises it again
                pass

        thread = threading.Thread(target=load, name="facesearch-onnx-load", daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join()

    def runner(self, expected_key: str) -> "onnx_runtime.OnnxEncoder | encoder.Encoder":
        """What embeds: the ONNX Runtime encoder where it can (:meth:`onnx`), else the torch encoder."""
        return self.onnx(expected_key) or self.get(expected_key)

    def set(self, net: "encoder.Encoder | ModelFiles") -> None:
        with self.lock:
            self._model = net
            self._onnx_source = net if isinstance(net, ModelFiles) else None
            self._onnx, self._onnx_tried = None, False

    def borrow_tuner(self, threads: int) -> ThreadTuner:
        """The enroll thread tuner for one enroll call: the one the last call gave back (it carries on, so a
        folder enrolled in parts pays for its trials once), unless another call has it or it was made for
        other thread options; then a new one. Give it back with :meth:`return_tuner`."""
        with self.lock:
            kept, self.last_tuner = self.last_tuner, None
        return kept if kept is not None and kept.options == (1, threads) else ThreadTuner(threads)

    def return_tuner(self, tuner: ThreadTuner) -> None:
        with self.lock:
            self.last_tuner = tuner

    @property
    def raw(self) -> "encoder.Encoder | ModelFiles":
        return self._model

    def device(self, expected_key: str):
        """The device faces are embedded on: :data:`facesearch.model.onnx_runtime.CPU` when ONNX Runtime
        embeds (no torch imported), else the torch device (resolving ``auto`` imports torch)."""
        if self.onnx(expected_key) is not None:
            return onnx_runtime.CPU
        files = self.files
        if files is not None:
            from facesearch.model import encoder

            return encoder.resolve_device(files.device)
        return self.get(expected_key).device

    def embed_crops(self, crops: Sequence[np.ndarray], expected_key: str, tuner: ThreadTuner | None = None
                    ) -> np.ndarray:
        """Embed model inputs (3 x S x S uint8 each): N x D float32 unit vectors, :attr:`forward_batch` (or
        the model's own) images per forward pass; ``tuner`` (enroll's) sets the threads of each pass (torch's,
        or which ONNX Runtime session runs it)."""
        onnx = self.onnx(expected_key)
        if onnx is not None:
            return self._embed_onnx(onnx, crops, tuner)
        net = self.get(expected_key)
        fast = self._fast
        if fast is None or fast[0] is not net:
            with self._fast_lock:  # one copy, made by the first thread that needs it
                fast = self._fast
                if fast is None or fast[0] is not net:
                    copy = inference_copy(net)
                    fast = self._fast = (net, copy, forward_batch(copy))  # measured before any other thread uses it
        if not len(crops):
            return np.zeros((0, self.config.embedding_dim), np.float32)
        from facesearch.model import encoder

        x, batch = np.stack(crops), self.forward_batch or fast[2] or len(crops)
        if tuner is None:
            return encoder.embed(fast[1], x, batch_size=batch)
        out = []
        for i in range(0, len(x), batch):
            tuner.start()
            out.append(encoder.embed(fast[1], x[i:i + batch], batch_size=batch))
            tuner.stop(len(out[-1]))
        return np.concatenate(out)

    def _embed_onnx(self, onnx: "onnx_runtime.OnnxEncoder", crops: Sequence[np.ndarray], tuner: ThreadTuner | None
                    ) -> np.ndarray:
        if not len(crops):  # enroll's warm-up: the sessions its thread tuner picks from, made outside its timing
            for threads in {1, onnx_runtime.default_threads()}:
                onnx.session(threads)
            return np.zeros((0, self.config.embedding_dim), np.float32)
        x, batch = np.stack(crops), self.forward_batch or onnx.forward_batch
        if tuner is None:
            return onnx.embed(x, batch_size=batch, threads=getattr(self._local, "threads", None))
        if self.forward_batch is None:  # the images per pass are measured too, unless the caller set them
            tuner.offer_batches((batch, max(1, batch // 4)))
        out, i = [], 0
        while i < len(x):
            tuner.start()
            step = tuner.current_batch or batch
            out.append(onnx.embed(x[i:i + step], batch_size=step, threads=tuner.current))
            tuner.stop(len(out[-1]))
            i += step
        return np.concatenate(out)

    @contextlib.contextmanager
    def single_thread(self, device):
        """One probe gains nothing from a parallel region on the CPU, and on a busy machine a 2-thread
        region waits for the second core (measured: 24 ms vs 0.24 ms for a 10k exact search, ~1.5 s vs
        ~10 ms for one embedding; benchmarks/README.md). Torch and FAISS run single-threaded inside."""
        if device.type != "cpu":
            yield
            return
        import sys

        import faiss

        with thread_counts():  # back to what they were before any thread changed them
            if sys.modules.get("torch") is not None:  # ONNX Runtime embeds without it
                sys.modules["torch"].set_num_threads(1)
            faiss.omp_set_num_threads(1)
            before, self._local.threads = getattr(self._local, "threads", None), 1
            try:
                yield
            finally:
                self._local.threads = before
