"""Enroll throughput on the LFW pack, end to end, against a hand-rolled sequential baseline.

``FaceSearch.enroll_folder`` (decode, preprocess, hash, embed in batches, PNG crop, store, index, save
the index) is timed on a folder of LFW identities. The baseline is what a hand-written script does:
for each file, read it, decode, preprocess, embed it alone (batch of 1), insert one row, add one vector
to the index. A per-stage breakdown (single thread, ms per image) shows where the time goes.

The enrolled embeddings, plus one held-out image per identity as probe, are returned so that the
synthetic generator can be fitted to them (:mod:`benchmarks.synth`).
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np

from benchmarks.common import LFW_ZIP


def select_lfw(n_images: int, zip_path: Path = LFW_ZIP, max_per_identity: int = 8, seed: int = 0):
    """Pick LFW identities with >= 2 images (random order), up to ``max_per_identity`` images each, until
    ``n_images`` are to be enrolled; the last picked image of each identity is held out as a probe."""
    from facesearch.datasets import ImageFolder

    folder = ImageFolder(zip_path)
    multi = [i for i in folder.identities() if len(folder.items[i]) >= 2]
    rng = np.random.default_rng(seed)
    rng.shuffle(multi)
    enroll: dict[str, list[str]] = {}
    probes: dict[str, str] = {}
    count = 0
    for ident in multi:
        keys = folder.items[ident][:max_per_identity]
        take = keys[:-1][: n_images - count]
        enroll[ident], probes[ident] = take, keys[-1]
        count += len(take)
        if count >= n_images:
            break
    return folder, enroll, probes


def extract(folder, enroll: dict[str, list[str]], probes: dict[str, str], dest: Path) -> tuple[Path, list, list]:
    """Write the chosen images as dest/enroll/<identity>/<file> and dest/probes/<identity>/<file>."""
    out_e, out_p = dest / "enroll", dest / "probes"
    enrolled, probe_files = [], []
    for ident, keys in enroll.items():
        (out_e / ident).mkdir(parents=True, exist_ok=True)
        for k in keys:
            p = out_e / ident / Path(k).name
            p.write_bytes(folder.read(k))
            enrolled.append((ident, p))
        (out_p / ident).mkdir(parents=True, exist_ok=True)
        p = out_p / ident / Path(probes[ident]).name
        p.write_bytes(folder.read(probes[ident]))
        probe_files.append((ident, p))
    return out_e, enrolled, probe_files


def baseline_enroll(model_dir: Path, files: list[tuple[str, Path]], home: Path, db: str = "baseline.db",
                    budget_s: float = 40.0) -> dict:
    """Sequential, one image at a time: read, decode, preprocess, embed (batch 1), insert, index add.
    Stops after ``budget_s`` seconds (at least 10 images)."""
    from facesearch import images
    from facesearch.model import encoder
    from facesearch import index as vindex
    from facesearch.store import Store

    t_open = time.perf_counter()
    model = encoder.load(model_dir, "cpu")
    store = Store.open(f"sqlite:///{home / db}")
    sha_w = encoder.weights_sha256(model_dir)
    rec = store.register_model(f"{model.config.name}@{sha_w[:12]}", model.config.to_dict(), sha_w, str(model_dir))
    idx = vindex.create(model.config.embedding_dim, 0, "Flat", "faiss-cpu")
    t_open = time.perf_counter() - t_open
    t0 = time.perf_counter()
    done = 0
    for ident, path in files:
        if done >= 10 and time.perf_counter() - t0 > budget_s:
            break
        done += 1
        raw = Path(path).read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        crop = images.prepare(images.decode(raw, str(path)), model.config)
        emb = encoder.embed(model, crop[None])
        ids, _ = store.add_faces(rec.id, [(ident, str(path), sha, emb[0], None)])
        idx.add(np.asarray(ids, np.int64), emb)
    dt = time.perf_counter() - t0
    store.close()
    return {"images": done, "seconds": round(dt, 3), "images_per_s": round(done / dt, 2),
            "open_s": round(t_open, 3),
            "method": "sequential per image: read, decode, preprocess, embed batch 1, insert 1 row, index add"}


def breakdown(model_dir: Path, files: list[tuple[str, Path]], n: int = 256) -> dict:
    """Single-threaded cost of each enroll stage, ms per image, on ``n`` images."""
    import torch
    from PIL import Image

    from facesearch import images
    from facesearch.model import encoder
    from facesearch.store import Store

    model = encoder.load(model_dir, "cpu")
    cfg = model.config
    files = files[:n]
    n = len(files)
    out: dict[str, float] = {}
    t = time.perf_counter()
    raws = [Path(p).read_bytes() for _, p in files]
    out["read_file"] = time.perf_counter() - t
    t = time.perf_counter()
    for r in raws:
        hashlib.sha256(r).hexdigest()
    out["sha256"] = time.perf_counter() - t
    t = time.perf_counter()
    px = [images.decode(r) for r in raws]
    out["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    from facesearch.detect.folder import one_detector_thread
    from facesearch.gallery.embedding import model_crop

    with one_detector_thread():  # as enroll's reader threads detect
        crops = [images.prepare(model_crop(p, cfg), cfg) for p in px]
    out["preprocess"] = time.perf_counter() - t  # with a template of its own: a detection per crop
    t = time.perf_counter()
    pngs = []
    for c in crops:
        buf = io.BytesIO()
        Image.fromarray(c.transpose(1, 2, 0)).save(buf, format="PNG", compress_level=1)
        pngs.append(buf.getvalue())
    out["png_crop_encode"] = time.perf_counter() - t
    batch = np.stack(crops)
    from facesearch.model.inference import forward_batch, inference_copy

    fast = inference_copy(model)
    fb = forward_batch(fast)
    threads = torch.get_num_threads()
    for name, m, th, bs in (("embed_batch64_plain", model, threads, 64), ("embed_batch64_service", fast, 1, 64),
                            (f"embed_batch{fb}_service", fast, 1, fb)):
        torch.set_num_threads(th)
        try:
            encoder.embed(m, batch[:8])
            t = time.perf_counter()
            embs = encoder.embed(m, batch, batch_size=bs)
            out[f"{name}_{th}thread{'s' if th > 1 else ''}"] = time.perf_counter() - t
        finally:
            torch.set_num_threads(threads)
    t = time.perf_counter()
    for i in range(8):
        encoder.embed(model, batch[i : i + 1])
    out[f"embed_batch1_plain_{threads}threads"] = (time.perf_counter() - t) * n / 8
    import tempfile

    with tempfile.TemporaryDirectory() as td:
        store = Store.open(f"sqlite:///{td}/b.db")
        rec = store.register_model("m@x", cfg.to_dict(), "x", str(model_dir))
        rows = [(ident, str(p), f"{i:064x}", e, png) for i, ((ident, p), e, png) in enumerate(zip(files, embs, pngs))]
        t = time.perf_counter()
        for i in range(0, n, 64):
            store.add_faces(rec.id, rows[i : i + 64])
        out["store_insert_batch64_with_crop"] = time.perf_counter() - t
        store.close()
    return {"images": n, "ms_per_image": {k: round(v * 1e3 / n, 3) for k, v in out.items()},
            "png_crop_bytes_mean": int(np.mean([len(p) for p in pngs]))}


def enroll_through_torch(model_dir: Path, root: Path, home: Path, n: int) -> dict:
    """``FaceSearch.enroll_folder`` of ``root`` into a new gallery whose model embeds through torch (runtime
    ``torch``: the gallery's own switch, as where onnxruntime is not installed)."""
    from facesearch.gallery.embedding import ModelFiles
    from facesearch.gallery.facade import FaceSearch

    with FaceSearch.open(home=home, model=model_dir, device="cpu", backend="faiss-cpu") as fs:
        fs.encoder.set(ModelFiles(fs.config, Path(model_dir), "cpu", "torch"))
        assert fs.encoder.onnx(fs.model_key) is None
        t0 = time.perf_counter()
        rep = fs.enroll_folder(root)
        dt = time.perf_counter() - t0
    if rep.added != n:
        raise RuntimeError(f"enroll through torch added {rep.added} of {n}")
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2), "runtime": "torch"}


def enroll_int8(model_dir: Path, root: Path, workdir: Path, n: int) -> dict:
    """``FaceSearch.enroll_folder`` of ``root`` into a new gallery of the int8 copy of the model, made as
    ``facesearch model quantize`` makes it (:func:`facesearch.model.quantize.quantize_dir`, percentile ranges
    from one image each of 256 LFW people in no View 2 pair: ``benchmarks.int8.calibration_crops``). Its
    accuracy against fp32 is ``benchmarks/int8.py``'s to measure (LFW View 2); here only its speed."""
    from benchmarks.int8 import CALIBRATION_RULE, calibration_crops
    from facesearch.gallery.facade import FaceSearch
    from facesearch.model import quantize
    from facesearch.model.files import read_model_dir, resolve

    t0 = time.perf_counter()
    crops, _ = calibration_crops(256, read_model_dir(model_dir))
    out = workdir / "int8-model"
    quantize.quantize_dir(model_dir, out, crops, "percentile", calibration_source=CALIBRATION_RULE)
    t_make = time.perf_counter() - t0
    with FaceSearch.open(home=workdir / "enroll-home-int8", model=out, device="cpu", backend="faiss-cpu") as fs:
        assert fs.encoder.onnx(fs.model_key) is not None
        t0 = time.perf_counter()
        rep = fs.enroll_folder(root)
        dt = time.perf_counter() - t0
    if rep.added != n:
        raise RuntimeError(f"enroll of the int8 model added {rep.added} of {n}")
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2), "runtime": "onnx int8",
            "model_key": resolve(out).key, "quantize_s": round(t_make, 1), "calibration": CALIBRATION_RULE + " (256)"}


def run(model_dir: Path, workdir: Path, n_images: int = 2000, n_baseline: int = 300, seed: int = 0,
        log=print) -> tuple[dict, dict]:
    """The enroll benchmark. Returns (result for the JSON, real embeddings for the generator fit)."""
    from facesearch.gallery.facade import FaceSearch

    folder, enroll_keys, probe_keys = select_lfw(n_images, seed=seed)
    root, enrolled, probe_files = extract(folder, enroll_keys, probe_keys, workdir / "lfw")
    n = len(enrolled)
    log(f"enroll: {n} LFW images of {len(enroll_keys)} identities, baseline on {min(n_baseline, n)}")

    # the same enroll through torch first (the model's own embeddings, ONNX Runtime left out by the runtime
    # switch of the gallery's model files), then as a gallery does it by default (ONNX Runtime when installed)
    torch_run = enroll_through_torch(model_dir, root, workdir / "enroll-home-torch", n)
    log(f"enroll through torch: {torch_run['images_per_s']} images/s")
    t0 = time.perf_counter()
    fs = FaceSearch.open(home=workdir / "enroll-home", model=model_dir, device="cpu", backend="faiss-cpu")
    t_open = time.perf_counter() - t0
    runtime = "onnx" if fs.encoder.onnx(fs.model_key) is not None else "torch"
    t0 = time.perf_counter()
    rep = fs.enroll_folder(root)
    dt = time.perf_counter() - t0
    if rep.failed or rep.added != n:
        raise RuntimeError(f"enroll added {rep.added} of {n}; failed: {rep.failed[:3]}")
    # enroll is idempotent, and re-running it on a grown folder is the common case: content enrolled
    # already is found by its hash before decoding, so this pass reads and hashes, and stores nothing
    t0 = time.perf_counter()
    again = fs.enroll_folder(root)
    dt_again = time.perf_counter() - t0
    if again.added or len(again.skipped) != n:
        raise RuntimeError(f"re-enroll added {again.added}, skipped {len(again.skipped)} of {n}")
    from facesearch.model import onnx_runtime
    from facesearch.model.files import read_model_dir

    int8_run = None
    if runtime == "onnx" and not read_model_dir(model_dir).int8:  # the int8 copy needs ONNX Runtime, as it does
        int8_run = enroll_int8(model_dir, root, workdir, n)
        log(f"enroll through ONNX Runtime, int8 copy: {int8_run['images_per_s']} images/s")
    elif not onnx_runtime.available():
        int8_run = {"skipped": "onnxruntime is not installed"}
    db = workdir / "enroll-home" / "facesearch.db"
    with fs.store.engine.connect() as conn:  # fold the WAL into the file so its size is the data's
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store_bytes = db.stat().st_size
    index_bytes = fs.index().memory_bytes()
    result = {
        "images": n,
        "identities": len(rep.identities),
        "seconds": round(dt, 3),
        "images_per_s": round(n / dt, 2),
        "open_s": round(t_open, 3),
        "method": "FaceSearch.enroll_folder on a folder of LFW identities (WebP 112x112): read, sha256, decode, "
                  "preprocess (threads; a model with its own template: the crop aligned again onto it), embed in the "
                  "model's forward batch (facesearch.model.inference.forward_batch), PNG crop, SQLite insert per batch, index add, "
                  "index save; reenroll: the same call again on the same folder (read, sha256, all skipped)",
        "runtime": runtime,
        "torch": torch_run,
        "ratio_vs_torch": round(n / dt / torch_run["images_per_s"], 2),
        **({"int8": {**int8_run, **({"ratio_vs_torch": round(int8_run["images_per_s"] / torch_run["images_per_s"], 2)}
                                    if "images_per_s" in int8_run else {})}} if int8_run else {}),
        "reenroll_images_per_s": round(n / dt_again, 2),
        "reenroll_ratio_vs_first": round(dt / dt_again, 2),
        "store_bytes_per_face_with_crop": int(store_bytes / n),
        "index_bytes_per_face": int(index_bytes / n),
    }

    # embeddings for the generator fit: enrolled faces and held-out probes (unseen images of enrolled people)
    ids_all, emb_all = zip(*fs.store.iter_embeddings())
    ids_all, emb_all = np.concatenate(ids_all), np.concatenate(emb_all)
    info = fs.store.face_info(ids_all.tolist())
    labels = np.array([info[int(i)].identity for i in ids_all])
    t0 = time.perf_counter()
    probe_emb = fs.embed([p for _, p in probe_files])
    probe_labels = np.array([i for i, _ in probe_files])
    t_probe = time.perf_counter() - t0
    # single image, end to end through the API: decode + embed + search + identity lookup
    import torch

    single, single1 = [], []
    for _, p in probe_files[:20]:
        t = time.perf_counter()
        fs.query(p, top_k=5)
        single.append(time.perf_counter() - t)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _, p in probe_files[:20]:
            t = time.perf_counter()
            fs.query(p, top_k=5)
            single1.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    res = fs.search_embeddings(probe_emb, top_k=1)
    result["real_rank1_identification"] = round(float(np.mean(
        [r.matches[0].identity == lab for r, lab in zip(res, probe_labels)])), 4)
    result["probe_embed_images_per_s"] = round(len(probe_files) / t_probe, 2)
    result["query_one_image_p50_ms"] = round(float(np.median(single) * 1e3), 2)
    result["query_one_image_p50_ms_torch_1thread"] = round(float(np.median(single1) * 1e3), 2)
    fs.close()

    log("enroll: baseline")
    base = baseline_enroll(model_dir, enrolled[:n_baseline], workdir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base1 = baseline_enroll(model_dir, enrolled[:n_baseline], workdir, "baseline-1thread.db")
    finally:
        torch.set_num_threads(threads)
    base["images_per_s_torch_1thread"] = base1["images_per_s"]
    result["baseline_images_per_s"] = base["images_per_s"]
    result["ratio_vs_baseline"] = round(result["images_per_s"] / base["images_per_s"], 2)
    result["baseline"] = base
    log("enroll: per-stage breakdown")
    result["breakdown"] = breakdown(model_dir, enrolled)
    fit_data = {"emb": emb_all, "labels": labels, "probe_emb": probe_emb, "probe_labels": probe_labels}
    return result, fit_data
