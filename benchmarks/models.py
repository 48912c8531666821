"""The candidate models side by side, in one run: enroll images/s and single-query latency on the CPU.

    python -m benchmarks.models [--images 1000] [--quick] [--out FILE]

Candidates (each its own gallery of the same LFW images, 112 x 112 crops of the deep-funnelled pack):

* ``lfw-mobilenet``: the old built-in MobileNetV2 (112 px): the baseline, ratio 1.0;
* ``sface fp32``: SFace imported with fp32 weights (``facesearch model import sface``, into the work dir);
* ``sface fp16-stored``: the built-in SFace, whose weights are stored halved (19.4 MB) and cast back to fp32
  when loaded: the same compute as fp32, so the same speed is expected (and its own row shows it);
* ``sface ONNX Runtime``: the pinned SFace file rewritten to fp32 ONNX
  (``facesearch.model.imported.onnx_graph.write_fp32_onnx``) on ONNX Runtime's CPU provider, one intra-op
  thread; only when onnxruntime is installed (``pip install onnxruntime``; skipped with a note otherwise).
  this is the pinned file itself, not the export a gallery embeds with when onnxruntime is installed (whose
  enroll is ``benchmarks.enroll``'s, against torch in the same run), so it has no enroll row: its embedding and
  query rows are measured on the
  same crops, searching the SFace fp32 gallery (whose embeddings it reproduces, cosine >= 0.9999), right
  after the torch rows (not taken in turn with them: an ORT call slowed the torch call after it by ~8 ms).

Measured for each, model loaded, in this process:

* ``enroll images/s``: ``FaceSearch.enroll_folder`` end to end (read, hash, decode, the crop brought into
  the model's geometry: for SFace the pack's crops are aligned again onto its own template, one detection
  each; embed in the model's forward batch (``facesearch.model.inference.forward_batch``) with the thread
  count the enroll tuner picks; store; index);
* ``query p50/p99 ms``: ``FaceSearch.query`` of one held-out LFW image (decode, crop, embed, search the
  gallery of ``--images`` faces, identities looked up), one call at a time;
* ``embed + search p50 ms``: the probe's crop ready (decoded, in the model's geometry), its embedding and
  the search of the same gallery: what a service holding the photo in memory pays per query;
* ``forward images/s``: embedding alone, one torch (or ORT) thread, at the model's forward batch and at
  batch 64 (what enroll used for every model before the forward batch followed the model).

Ratios are against lfw-mobilenet in the same run (other processes share the CPU: compare within a run).
Writes benchmarks/results/models-<machine>.json and prints the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, pct_ms, ratio, write_result

FULL = {"images": 1000, "probes": 40, "forward_images": 128, "parts": 4}
QUICK = {"images": 150, "probes": 12, "forward_images": 32, "parts": 2}
BASELINE = "lfw-mobilenet"


def _sface_fp32(work: Path, threshold: float | None) -> Path:
    """SFace imported with fp32 weights, given the built-in one's calibrated threshold (the same network)."""
    from facesearch.model.config import ModelConfig
    from facesearch.model.imported import import_network

    d = import_network("sface", work / "sface-fp32", model_name="sface-fp32")
    cfg = ModelConfig.load(d / "model.json")
    cfg.threshold = threshold
    cfg.save(d / "model.json")
    return d


def candidates(work: Path, log=print) -> tuple[list[dict], list[str]]:
    """The candidate models that can run here, and a note for each one that cannot."""
    from facesearch.errors import FaceSearchError
    from facesearch.model.files import resolve

    out, notes = [], []
    base = resolve(BASELINE)
    out.append({"name": BASELINE, "kind": "torch", "dir": base.directory,
                "what": "MobileNetV2 112 px, trained on LFW (the old built-in default): the baseline"})
    try:
        sface = resolve("sface")
    except FaceSearchError as e:
        notes.append(f"SFace rows skipped: {e}")
        return out, notes
    try:
        log("models: importing SFace with fp32 weights")
        out.append({"name": "sface fp32", "kind": "torch", "dir": _sface_fp32(work, sface.config.threshold),
                    "what": "SFace, fp32 weights (model import sface)"})
    except FaceSearchError as e:
        notes.append(f"SFace fp32 skipped: {e}")
    out.append({"name": "sface fp16-stored", "kind": "torch", "dir": sface.directory,
                "what": "SFace built-in: weights stored in fp16, cast to fp32 when loaded (the same compute)"})
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        notes.append("SFace on ONNX Runtime skipped: onnxruntime is not installed (pip install onnxruntime)")
        return out, notes
    try:
        from facesearch.model.imported import get_source, locate
        from facesearch.model.imported.onnx_graph import write_fp32_onnx

        path = work / "sface_fp32.onnx"
        write_fp32_onnx(str(locate(get_source("sface"))), str(path))
        out.append({"name": "sface ONNX Runtime", "kind": "ort", "onnx": path, "dir": sface.directory,
                    "what": "SFace fp32 ONNX on ONNX Runtime's CPU provider, 1 intra-op thread"})
    except FaceSearchError as e:
        notes.append(f"SFace on ONNX Runtime skipped: {e}")
    return out, notes


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # as torch's single-probe path; no spinning team
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for entry in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        opts.add_session_config_entry(entry, "0")  # no thread left spinning after a call, slowing the next row
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def embed(crops: np.ndarray, batch: int) -> np.ndarray:  # N x 3 x 112 x 112 uint8 RGB, as the pack's
        out = []
        for i in range(0, len(crops), batch):
            e = sess.run(None, {name: crops[i:i + batch].astype(np.float32)})[0]
            out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
        return np.concatenate(out).astype(np.float32)

    return embed


def _model_crops(fs, paths) -> np.ndarray:
    """The probes as the model takes them (decoded, in its geometry, preprocessed): N x 3 x S x S uint8."""
    from facesearch import images
    from facesearch.gallery.embedding import model_crop

    return np.stack([images.prepare(model_crop(images.load(p).pixels, fs.config, fs.detector), fs.config)
                     for p in paths])


def _round_robin_times(fns: dict, n: int) -> dict[str, list[float]]:
    """Wall times of ``n`` calls ``fn(i)`` of each function, taken in turn (call i of every function before
    call i + 1 of any), so that every row sees the same load on a shared machine; one warm-up call each."""
    for fn in fns.values():
        fn(0)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(n):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(i)
            out[k].append(time.perf_counter() - t)
    return out


def _split(root: Path, parts: int) -> list[Path]:
    """``root``'s identity folders moved into ``parts`` folders of about equal numbers of images."""
    idents = sorted(d for d in root.iterdir() if d.is_dir())
    sizes = {d: len(list(d.iterdir())) for d in idents}
    total, out, acc = sum(sizes.values()), [], 0
    for k in range(parts):
        out.append(root.parent / f"{root.name}-part{k}")
        out[-1].mkdir()
    for d in idents:
        k = min(parts - 1, acc * parts // max(total, 1))
        d.rename(out[k] / d.name)
        acc += sizes[d]
    return out


def run(work: Path, n_images: int = FULL["images"], n_probes: int = FULL["probes"],
        n_forward: int = FULL["forward_images"], log=print, parts: int = 4) -> dict:
    """The side-by-side benchmark (see the module's docstring). Returns the JSON's ``models`` section.

    To share the machine's load fairly the rows are measured in turn: the images are enrolled in
    ``parts`` folders, each into every candidate's gallery before the next; queries and forward passes
    alternate between the candidates call by call."""
    import torch

    from benchmarks.enroll import extract, select_lfw
    from facesearch.gallery.facade import FaceSearch
    from facesearch.model import encoder
    from facesearch.model.inference import forward_batch, inference_copy

    t_start = time.perf_counter()
    folder, enroll_keys, probe_keys = select_lfw(n_images, seed=1)
    root, enrolled, probe_files = extract(folder, enroll_keys, probe_keys, work / "lfw")
    probes = [p for _, p in probe_files][:n_probes]
    cands, notes = candidates(work, log)
    torch_cands = [c for c in cands if c["kind"] == "torch"]
    threads = torch.get_num_threads()
    # the process's one-time costs (the store's migrations, FAISS, torch's first passes) not in the first row
    warm_root = work / "warm"
    for ident, keys in list(enroll_keys.items())[:4]:
        (warm_root / ident).mkdir(parents=True)
        for k in keys[:2]:
            (warm_root / ident / Path(k).name).write_bytes(folder.read(k))
    with FaceSearch.open(home=work / "home-warm", model=cands[0]["dir"], device="cpu", backend="faiss-cpu") as warm:
        warm.enroll_folder(warm_root)
        warm.query(probes[0])

    galleries = {c["name"]: FaceSearch.open(home=work / f"home-{i}", model=c["dir"], device="cpu",
                                            backend="faiss-cpu") for i, c in enumerate(torch_cands)}
    for fs in galleries.values():  # model loaded (and its inference copy made, a forward batch run) before timing
        fs.embed_crops([np.zeros((3, fs.config.input_size, fs.config.input_size), np.uint8)] * 16)
    spent = {name: 0.0 for name in galleries}
    added = {name: 0 for name in galleries}
    for k, part in enumerate(_split(root, parts)):
        log(f"models: enroll part {k + 1}/{parts} into each gallery")
        for name, fs in galleries.items():
            t = time.perf_counter()
            rep = fs.enroll_folder(part)
            spent[name] += time.perf_counter() - t
            if rep.failed:
                raise RuntimeError(f"{name}: enroll failed on {rep.failed[:3]}")
            added[name] += rep.added
    rows = {}
    for c in torch_cands:
        fs = galleries[c["name"]]
        if added[c["name"]] != len(enrolled):
            raise RuntimeError(f"{c['name']}: enroll added {added[c['name']]} of {len(enrolled)}")
        fast = inference_copy(fs.model)  # what the gallery embeds with: batch norms folded, channels last
        crops = _model_crops(fs, probes)
        rows[c["name"]] = {
            "model": c["name"], "what": c["what"], "key": fs.model_key, "images": len(enrolled),
            "enroll_s": round(spent[c["name"]], 2), "enroll_images_per_s": round(len(enrolled) / spent[c["name"]], 2),
            "forward_batch": forward_batch(fast), "_fs": fs, "_crops": crops,
            "_embed": lambda x, bs, m=fast: encoder.embed(m, x, batch_size=bs)}
    ort = [c for c in cands if c["kind"] == "ort"]
    host = rows.get("sface fp32") or rows.get("sface fp16-stored")
    for c in ort:
        if host is None:
            notes.append(f"{c['name']} skipped: no SFace gallery to search")
            continue
        rows[c["name"]] = {"model": c["name"], "what": c["what"], "images": None, "enroll_s": None,
                           "enroll_images_per_s": None, "forward_batch": 8, "searched_gallery": host["key"],
                           "_fs": host["_fs"], "_crops": host["_crops"], "_embed": _ort_session(c["onnx"])}
    log("models: queries, in turn")

    def api_query(fs):
        return lambda i: fs.query(probes[i % len(probes)], top_k=5)

    def embed_search(r):
        fs, crops, embed = r["_fs"], r["_crops"], r["_embed"]
        if "key" not in r:  # ONNX Runtime: its embedding, the torch gallery's search
            return lambda i: fs.search_embeddings(embed(crops[i % len(crops)][None], 1), top_k=5)

        def one(i):
            with fs.encoder.single_thread(fs.device):
                fs.search_embeddings(fs.embed_crops([crops[i % len(crops)]]), top_k=5)
        return one

    calls = {("query", n): api_query(r["_fs"]) for n, r in rows.items() if "key" in r}
    calls.update({("embed+search", n): embed_search(r) for n, r in rows.items() if "key" in r})
    t = _round_robin_times(calls, len(probes))
    # ONNX Runtime on its own afterwards: taken in turn, an ORT call slowed the torch query after it by
    # ~8 ms (MobileNetV2 18.6 against 10.9 ms), whatever the session's spinning settings
    t.update({("embed+search", n): v for n, v in _round_robin_times(
        {n: embed_search(r) for n, r in rows.items() if "key" not in r}, len(probes)).items()})
    for n, r in rows.items():
        q = t.get(("query", n))
        r["query_p50_ms"], r["query_p99_ms"] = (pct_ms(q, 50), pct_ms(q, 99)) if q else (None, None)
        r["embed_search_p50_ms"] = pct_ms(t[("embed+search", n)], 50)
    log("models: forward passes, in turn")
    torch.set_num_threads(1)
    try:
        for n, r in rows.items():
            sample = np.resize(r["_crops"], (n_forward, *r["_crops"].shape[1:]))
            r["_sample"] = sample
            r["_embed"](sample[:r["forward_batch"]], r["forward_batch"])  # warm-up
        for _ in range(3):
            for n, r in rows.items():
                for b in sorted({r["forward_batch"], 64}):
                    key = f"forward_images_per_s_batch{b}"
                    t = time.perf_counter()
                    r["_embed"](r["_sample"], b)
                    r[key] = max(r.get(key, 0.0), round(len(r["_sample"]) / (time.perf_counter() - t), 2))
    finally:
        torch.set_num_threads(threads)
    for r in rows.values():
        r["forward_images_per_s"] = r[f"forward_images_per_s_batch{r['forward_batch']}"]
        if "key" not in r:  # the same faces as the torch port embeds them
            torch_emb = r["_fs"].embed_crops(list(r["_crops"]))
            r["min_cosine_vs_torch"] = round(float((r["_embed"](r["_crops"], 8) * torch_emb).sum(1).min()), 6)
    for fs in galleries.values():
        fs.close()
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows.values()]
    base = next(r for r in rows if r["model"] == BASELINE)
    for r in rows:
        r["enroll_x_baseline"] = ratio(r["enroll_images_per_s"], base["enroll_images_per_s"])
        r["query_latency_x_baseline"] = ratio(r["query_p50_ms"], base["query_p50_ms"])
        r["embed_search_latency_x_baseline"] = ratio(r["embed_search_p50_ms"], base["embed_search_p50_ms"])
        r["forward_x_baseline"] = ratio(r["forward_images_per_s"], base["forward_images_per_s"])
    return {"rows": rows, "notes": notes, "gallery_faces": len(enrolled), "probes": len(probes),
            "seconds": round(time.perf_counter() - t_start, 1),
            "method": f"see benchmarks/models.py: enroll_folder end to end, in {parts} parts taken in turn by the "
                      "candidates; query = FaceSearch.query of one held-out LFW image; embed + search = its "
                      "crop ready, embed_crops + search_embeddings (one thread); queries alternate between the "
                      f"torch candidates call by call (ONNX Runtime's afterwards, alone); forward = embedding alone, one thread, {n_forward} images, "
                      "best of 3 rounds taken in turn"}


def table(section: dict) -> str:
    from benchmarks.run import table as fmt

    rows = [[r["model"], r["forward_batch"], r["enroll_images_per_s"], r["enroll_x_baseline"], r["query_p50_ms"],
             r["query_p99_ms"], r["query_latency_x_baseline"], r["embed_search_p50_ms"],
             r["embed_search_latency_x_baseline"], r["forward_images_per_s"], r.get("forward_images_per_s_batch64"),
             r["forward_x_baseline"]] for r in section["rows"]]
    out = [fmt(rows, ["model", "fwd batch", "enroll img/s", "x base", "query p50 ms", "p99 ms", "x base",
                      "embed+search p50 ms", "x base", "forward img/s", "@batch 64", "x base"])]
    out.append(f"  gallery: {section['gallery_faces']} LFW faces per model; {section['probes']} held-out probes; "
               "x base: against lfw-mobilenet in this run (latency: > 1 is slower)")
    out.append("  sface fp16-stored computes in fp32 like sface fp32 (weights halved on disk only); ONNX Runtime "
               "(the pinned file, not facesearch's export, whose enroll benchmarks.enroll measures) has no enroll row and "
               "searches the SFace fp32 gallery")
    for r in section["rows"]:
        if "min_cosine_vs_torch" in r:
            out.append(f"  {r['model']}: min cosine vs the torch port on the probes {r['min_cosine_vs_torch']}")
    out.extend(f"  note: {n}" for n in section["notes"])
    out.append(f"  {section['seconds']:.0f} s")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"a smoke run ({QUICK['images']} images)")
    ap.add_argument("--images", type=int, help=f"images enrolled per model (default {FULL['images']})")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/models-<machine>.json; quick: a temp dir)")
    a = ap.parse_args(argv)
    preset = QUICK if a.quick else FULL
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    res = {"command": "python -m benchmarks.models " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine()}
    work = Path(tempfile.mkdtemp(prefix="facesearch-models-"))
    try:
        res["models"] = run(work, a.images or preset["images"], preset["probes"], preset["forward_images"], log,
                            preset["parts"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = a.out or (Path(tempfile.gettempdir()) / "facesearch-models-quick.json" if a.quick else None)
    path = write_result(res, out, "models")
    print(table(res["models"]))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
