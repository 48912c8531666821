#!/usr/bin/env python
"""Identity-disjoint LFW View 2: train, embed the held-out fold's pairs, score with the 10-fold protocol.

One command reproduces the result::

    python benchmarks/lfw_protocol.py --name mnv2-halves --scheme halves --time-budget 30

Schemes (which model scores which fold of pairs.txt; fold k uses only people of set k of people.txt):

* ``tenfold``: for each fold k, a model trained on the people of the other 9 sets scores fold k (10 trainings).
* ``halves``: a model trained on sets 1-5 scores folds 6-10, one trained on sets 6-10 scores folds 1-5
  (2 trainings, each on half the people: cheaper, and a little pessimistic).

A model never sees a person of a fold it scores. Then, with all 6,000 honest distances, the standard
protocol: the threshold for fold k is chosen on the other 9 folds' pairs (``metrics.best_threshold``)
and accuracy is measured on fold k; mean and standard deviation over the folds; AUC and TAR at
FAR = 1e-3 on the pooled distances.

Run it piecewise (each training fits one 10-minute GPU call), then merge::

    python benchmarks/lfw_protocol.py --name x --folds 1 --work-dir W ...   # one training per call
    python benchmarks/lfw_protocol.py --name x --merge --work-dir W         # writes results/lfw-x.json

``--score-model DIR --folds 10`` scores an existing model (e.g. the shipped one, trained without set 10)
on its honest folds only, using the model's own stored threshold; no training.

``--zero-shot DIR`` scores an unchanged model (e.g. an imported one) by the same scheme, the same folds
and the same 10-fold thresholds as the trained units, so that a fine-tuned model is compared with its
start on equal terms (it is honest only as far as the model's own training data allows: an imported
network's may include LFW people).

Fine-tuning and distillation (``facesearch train`` options of the same names)::

    python benchmarks/lfw_protocol.py --name sface-ft --init-model M --data ALIGNED.zip \
        --train-last-blocks 1 --augment flip --lr 1e-4 --time-budget 10 --folds 1
    python benchmarks/lfw_protocol.py --name mnv2-distil --teacher M --teacher-data ALIGNED.zip \
        --input-size 112 --train-last-blocks 6 --augment flip --time-budget 15 --folds 1

``--data`` is the pack the models train on and are scored on: for an imported network, a copy of the
pack aligned to its own template (``scripts/realign_pack.py``), what ``facesearch evaluate lfw
--realign`` scores.

LFW is a research benchmark of news photos with no licence file (University of Massachusetts, Amherst).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facesearch import distance, metrics  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402
from facesearch.model import encoder  # noqa: E402
from facesearch.model.config import TRAIN_EPOCHS, TRAIN_INPUT_SIZE, TRAIN_LR, ModelConfig  # noqa: E402
from facesearch.training import TrainOptions, read_lfw_people, run  # noqa: E402
from facesearch.training.freeze import embed_batch_size  # noqa: E402

LFW = ROOT.parent / "shared" / "data" / "lfw"
RESULTS = ROOT / "benchmarks" / "results"
PROTOCOL = (
    "LFW View 2 (pairs.txt, 10 folds x 600 pairs), identity-disjoint: the model that scores fold k never "
    "saw a person of people.txt set k; threshold for fold k chosen on the other 9 folds' pairs"
)


# ----------------------------------------------------------------------------- pairs and metrics


def read_pairs(path: Path) -> list[list[tuple[str, int, str, int, bool]]]:
    """pairs.txt -> per fold, (name1, n1, name2, n2, same) tuples."""
    lines = [ln.split("\t") for ln in Path(path).read_text().splitlines() if ln.strip()]
    n_folds, n = (int(x) for x in lines[0])
    folds, i = [], 1
    for _ in range(n_folds):
        fold = []
        for ln in lines[i : i + n]:
            fold.append((ln[0], int(ln[1]), ln[0], int(ln[2]), True))
        for ln in lines[i + n : i + 2 * n]:
            fold.append((ln[0], int(ln[1]), ln[2], int(ln[3]), False))
        folds.append(fold)
        i += 2 * n
    return folds


def tar_at_far(dist: np.ndarray, same: np.ndarray, far: float) -> dict:
    """TAR at the largest threshold whose FAR on these pairs is <= ``far`` (facesearch.metrics.tar_at_far)."""
    tar, thr = metrics.tar_at_far(dist, same, far)
    n_imp = int((~np.asarray(same, bool)).sum())
    return {"tar": tar, "threshold": thr, "impostor_pairs": n_imp, "false_accepts_allowed": int(np.floor(far * n_imp))}


def protocol_metrics(fold_dist: dict[int, np.ndarray], fold_same: dict[int, np.ndarray]) -> dict:
    """The 10-fold protocol on honest distances (facesearch.metrics.kfold_accuracy): the threshold for
    fold k is chosen on the other folds' pairs, accuracy is measured on fold k; AUC/TAR pooled."""
    folds = sorted(fold_dist)
    d_all = np.concatenate([fold_dist[k] for k in folds])
    s_all = np.concatenate([fold_same[k] for k in folds])
    fold_ids = np.concatenate([np.full(len(fold_dist[k]), k) for k in folds])
    kf = metrics.kfold_accuracy(d_all, s_all, fold_ids)
    return {
        "folds": kf.folds,
        "fold_accuracy": kf.accuracies,
        "fold_threshold": kf.thresholds,
        "mean_accuracy": kf.mean,
        "std_accuracy": kf.std,
        "std_note": "population standard deviation over folds (ddof=0)",
        "standard_error": float(np.std(kf.accuracies, ddof=1) / np.sqrt(len(folds))),
        "auc": metrics.auc(d_all, s_all),
        "tar_at_far_1e-3": tar_at_far(d_all, s_all, 1e-3)["tar"],
        "tar_at_far_1e-3_detail": tar_at_far(d_all, s_all, 1e-3),
        "tar_at_far_1e-2": tar_at_far(d_all, s_all, 1e-2)["tar"],
        "eer": metrics.eer(d_all, s_all)[0],
        "genuine_distance_mean": float(d_all[s_all].mean()),
        "impostor_distance_mean": float(d_all[~s_all].mean()),
    }


def machine() -> dict:
    import torch

    from benchmarks.common import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


# ----------------------------------------------------------------------------- scoring


def score_folds(model_dir: Path, folder: ImageFolder, pairs, folds: list[int], device: str,
                cache: str | None = None, flip_average: bool | None = None, cut: int | None = None) -> dict:
    """Embed the pairs of ``folds`` with the model; returns {fold: {"dist": [...], "same": [...]}}.
    For a model with ``flip_average`` (or when ``flip_average`` says so) also ``dist_plain``: the same
    pairs with single-view embeddings (both from the same two views of each image)."""
    model = encoder.load(model_dir, device=encoder.resolve_device(device))
    flip = model.config.flip_average if flip_average is None else flip_average
    keys = sorted({folder.lfw_key(n, i) for k in folds for a, i1, b, i2, _ in pairs[k - 1]
                   for n, i in ((a, i1), (b, i2))})
    pos = {k: j for j, k in enumerate(keys)}
    pixels = folder.load_prepared(keys, model.config, cache=cache)
    views = view_embeddings(model, pixels, keys, folder, cache, mirrored=flip, cut=cut)
    emb_plain = views[0]
    emb = distance.normalize(views[0] + views[1]) if flip else emb_plain
    out = {}
    for k in folds:
        ia = [pos[folder.lfw_key(a, i1)] for a, i1, _, _, _ in pairs[k - 1]]
        ib = [pos[folder.lfw_key(b, i2)] for _, _, b, i2, _ in pairs[k - 1]]
        d = distance.paired(emb[ia], emb[ib])
        out[k] = {"dist": [float(x) for x in d], "same": [bool(p[4]) for p in pairs[k - 1]]}
        if flip:
            out[k]["dist_plain"] = [float(x) for x in distance.paired(emb_plain[ia], emb_plain[ib])]
    return out


def view_embeddings(model, pixels: np.ndarray, keys: list[str], folder: ImageFolder, cache: str | None,
                    mirrored: bool, cut: int | None = None) -> list[np.ndarray]:
    """Each image's embedding (eval mode, as ``encoder.embed`` gives it) and, with ``mirrored``, its mirror
    image's. A model trained with frozen blocks (``training.frozen_blocks``; or the first ``cut`` blocks of
    any model) runs them through the on-disk cache under ``cache``: their outputs on these images are the
    same for every model that shares those blocks' weights (hashed), so runs that differ only in the
    trained blocks (and the unchanged model they started from) compute them once.
    Checked against ``encoder.embed`` on a few images either way."""
    import torch

    from facesearch.training.freeze import (
        cached_outputs,
        frozen_state_sha256,
        run_blocks,
    )

    batch = embed_batch_size(model)  # on a CPU the model's own forward batch (SFace 8)
    if cut is None:
        frozen = (model.config.training.get("frozen_blocks") or []) if model.config.training else []
        cut = len(frozen) if [n for n, _ in model.blocks()][: len(frozen)] == list(frozen) else 0
    model.eval()
    if cut and cache is not None:
        t = torch.from_numpy(pixels)
        keys_sha = hashlib.sha256("\n".join(keys).encode()).hexdigest()

        def ident_of(c: int, flip: bool) -> dict:
            return {"frozen": frozen_state_sha256(model, c), "cut": c, "flip": flip, "format": 1, "keys": keys_sha,
                    "root": str(Path(folder.root).resolve()), "size": Path(folder.root).stat().st_size,
                    "prep": model.config.preprocessing()}

        feats, _ = cached_outputs(model, cut, t, mirrored, cache, "score-frozen", ident_of)
        trained = [b for _, b in model.blocks()[cut:]]
        out = []
        with torch.no_grad():
            for v in range(2 if mirrored else 1):
                rows = feats[v * len(pixels) : (v + 1) * len(pixels)]
                out.append(np.concatenate([distance.normalize(run_blocks(trained, torch.from_numpy(rows[i : i + 64])
                                                                         .to(model.device)).float()).cpu().numpy()
                                           for i in range(0, len(rows), 64)]))
    else:
        model.config.flip_average = False
        out = [encoder.embed(model, pixels, batch_size=batch)]
        if mirrored:
            out.append(encoder.embed(model, np.ascontiguousarray(pixels[..., ::-1]), batch_size=batch))
    model.config.flip_average = False
    check = encoder.embed(model, pixels[:8], batch_size=batch)
    if not np.allclose(check, out[0][:8], atol=1e-4):
        raise SystemExit("embeddings through the frozen-block cache differ from the model's own: stale cache?")
    return out


def units(scheme: str) -> list[tuple[str, list[int]]]:
    """(unit name, folds it scores); the unit trains on every other set."""
    if scheme == "tenfold":
        return [(f"fold{k}", [k]) for k in range(1, 11)]
    if scheme == "halves":
        return [("sets6-10", [1, 2, 3, 4, 5]), ("sets1-5", [6, 7, 8, 9, 10])]
    raise SystemExit(f"unknown scheme {scheme}")


def zero_shot_unit(args, unit: str, scored: list[int], folder, pairs, work: Path) -> dict:
    """A unit whose model is ``--zero-shot`` unchanged: scored on its folds like a trained unit's."""
    model_dir = Path(args.zero_shot)
    t1 = time.time()
    scores = score_folds(model_dir, folder, pairs, scored, args.device, cache=args.decode_cache,
                         flip_average=args.flip_average, cut=args.score_cut)
    cfg = ModelConfig.load(model_dir / "model.json")
    record = {
        "unit": unit, "scored_folds": scored, "excluded_sets": None, "zero_shot": str(model_dir),
        "scores": {str(k): v for k, v in scores.items()}, "own_threshold": cfg.threshold,
        "model_config": cfg.to_dict(), "train_wall_s": 0.0, "score_wall_s": round(time.time() - t1, 1),
        "images_per_s": None, "images_seen": 0, "epochs": 0, "steps": 0, "calibration": cfg.calibration.to_dict(),
        "concurrent_trainings": args.concurrent, "machine": machine(),
    }
    (work / f"unit-{unit}.json").write_text(json.dumps(record, indent=1))
    return record


def train_unit(args, unit: str, scored: list[int], sets, folder, pairs, work: Path) -> dict:
    excluded = frozenset(n for k in scored for n in sets[k - 1])
    model_dir = work / f"model-{unit}"
    opts = TrainOptions(
        data=args.data, out=model_dir, backbone=args.backbone, pretrained=args.pretrained,
        init_model=args.init_model, train_last_blocks=args.train_last_blocks, feature_cache=args.feature_cache,
        augment=args.augment, teacher=args.teacher, teacher_data=args.teacher_data, distill=args.distill,
        distill_weight=args.distill_weight, teacher_flip_average=args.teacher_flip_average, unlabelled=args.unlabelled, teacher_unlabelled=args.teacher_unlabelled,
        unlabelled_per_batch=args.unlabelled_per_batch, warmup_fraction=args.warmup,
        embedding_dim=args.embedding_dim, input_size=args.input_size, epochs=args.epochs,
        identities_per_batch=args.pk[0], images_per_identity=args.pk[1], pos_margin=args.pos_margin,
        neg_margin=args.margin, mining=args.mining, lr=args.lr, backbone_lr_factor=args.backbone_lr_factor,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device, amp=args.amp,
        cuda_graph=args.cuda_graph, time_budget=args.time_budget * 60.0 if args.time_budget else None, exclude_people=excluded,
        calibration_fraction=args.calibration_fraction, resume=args.resume and (model_dir / "checkpoint.pt").exists(),
        overwrite=True,  # the unit's own scratch directory: a rerun trains it again
        flip_average=args.flip_average, decode_cache=args.decode_cache,
        notes=f"LFW protocol unit {unit}: people of sets {scored} excluded",
    )
    t0 = time.time()
    rescored = args.rescore and (model_dir / "model.json").is_file() and (model_dir / "weights.pt").is_file()
    if rescored:  # trained before, the scoring cut short: the summary is what model.json kept of it
        cfg = ModelConfig.load(model_dir / "model.json")
        summary = {"training": cfg.training.to_dict(), "calibration": cfg.calibration.to_dict(), "history": None}
        train_s = None
    else:
        summary = run(opts, progress=not args.quiet,
                      log=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
        train_s = round(time.time() - t0, 1)
    t1 = time.time()
    scores = score_folds(model_dir, folder, pairs, scored, args.device, cache=args.decode_cache)
    own_thr = ModelConfig.load(model_dir / "model.json").threshold
    tr = summary["training"]
    record = {
        "unit": unit,
        "scored_folds": scored,
        "excluded_sets": scored,
        "scores": {str(k): v for k, v in scores.items()},
        "own_threshold": own_thr,
        "model_config": ModelConfig.load(model_dir / "model.json").to_dict(),
        "train_wall_s": train_s,
        **({"rescored": "scored again from the saved unit model (its first scoring was cut short); "
                        "train_wall_s unknown, see time"} if rescored else {}),
        "score_wall_s": round(time.time() - t1, 1),
        "images_per_s": summary["training"]["images_per_s"],
        "images_seen": summary["training"]["images_seen"],
        "epochs": summary["training"]["epochs"],
        "steps": summary["training"]["steps"],
        "calibration": summary["calibration"],
        "concurrent_trainings": args.concurrent,
        "machine": machine(),
        # where the unit's time went: decoding, the frozen blocks' outputs and the teacher's embeddings
        # (computed once), the training steps themselves, calibration with the whole model
        "time": {"decode_s": tr.get("decode_seconds"), "train_steps_s": tr.get("train_seconds"),
                 "calibration_s": summary.get("calibration_seconds"), "total_s": summary.get("total_seconds"),
                 **({"feature_cache": tr["feature_cache"]} if "feature_cache" in tr else {}),
                 **({"teacher_embeddings": tr["teacher_embeddings"]} if "teacher_embeddings" in tr else {})},
        "frozen_blocks": tr.get("frozen_blocks"),
        "trained_blocks": tr.get("trained_blocks"),
        "trained_on_cached_features": tr.get("trained_on_cached_features"),
        "history": summary.get("history"),
    }
    (work / f"unit-{unit}.json").write_text(json.dumps(record, indent=1))
    if not args.keep_models:
        for f in ("weights.pt", "model.json"):
            (model_dir / f).unlink(missing_ok=True)
        try:
            model_dir.rmdir()
        except OSError:
            pass
    return record


def merge(args, work: Path) -> dict | None:
    records = [json.loads(p.read_text()) for p in sorted(work.glob("unit-*.json"))]
    if args.folds:  # only the units that score these folds (a one-unit comparison)
        records = [r for r in records if set(r["scored_folds"]) & set(args.folds)]
    fold_dist, fold_same, own_correct, own_n = {}, {}, 0, 0
    for r in records:
        for k, v in r["scores"].items():
            d, s = np.asarray(v["dist"]), np.asarray(v["same"], bool)
            fold_dist[int(k)], fold_same[int(k)] = d, s
            own_correct += int((distance.is_match(d, r["own_threshold"]) == s).sum())
            own_n += len(s)
    if not fold_dist:
        print(f"no unit results in {work}", file=sys.stderr)
        return None
    partial = sorted(fold_dist) != list(range(1, 11))
    if partial and not args.folds:
        missing = sorted(set(range(1, 11)) - set(fold_dist))
        print(f"folds still missing: {missing}; not merging (run them, then --merge; or merge these with "
              f"--folds)", file=sys.stderr)
        return None
    res = {"protocol": PROTOCOL, "scheme": records[0].get("scheme", args.scheme),
           "name": args.name, **protocol_metrics(fold_dist, fold_same)}
    if partial:
        res["partial"] = (f"folds {sorted(fold_dist)} only (one unit of the scheme): the threshold for each fold is "
                          f"chosen on the other {len(fold_dist) - 1} of them; compare only with results on the "
                          f"same folds")
    res["accuracy_with_each_models_own_calibrated_threshold"] = own_correct / own_n
    if all("dist_plain" in v for r in records for v in r["scores"].values()):
        plain = {int(k): np.asarray(v["dist_plain"]) for r in records for k, v in r["scores"].items()}
        pm = protocol_metrics(plain, fold_same)
        res["without_flip_average"] = {
            "note": "the same models, each face embedded once (no mirror-image average)",
            **{k: pm[k] for k in ("fold_accuracy", "mean_accuracy", "std_accuracy", "auc", "tar_at_far_1e-3")}}
    res["model_config"] = records[0]["model_config"]
    res["units"] = [{k: r.get(k) for k in ("unit", "scored_folds", "own_threshold", "train_wall_s", "score_wall_s",
                                           "images_per_s", "images_seen", "epochs", "steps", "time", "frozen_blocks",
                                           "trained_blocks", "trained_on_cached_features", "zero_shot",
                                           "concurrent_trainings")} | {"machine": r["machine"]} for r in records]
    res["timing"] = {"train_wall_s_total": round(sum(r["train_wall_s"] or 0 for r in records), 1),
                     "score_wall_s_total": round(sum(r["score_wall_s"] for r in records), 1)}
    rates = [r["images_per_s"] for r in records if r.get("images_per_s") is not None]
    res["images_per_s"] = float(np.mean(rates)) if rates else None
    if any(r.get("zero_shot") for r in records):
        res["zero_shot"] = ("the model scored unchanged by every unit (no training): " + records[0]["zero_shot"])
    conc = max(int(r.get("concurrent_trainings") or 1) for r in records)
    if conc > 1 and rates:  # units that shared one device at the same time: their rates add up
        res["concurrent_trainings"] = conc
        res["aggregate_images_per_s"] = float(sum(rates))
    res["machine"] = records[-1]["machine"]
    res["command"] = args.command_line
    out = RESULTS / f"lfw-{args.name}.json" if args.output is None else Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return res


def score_model(args, folder, pairs, sets) -> dict:
    """Score an existing model on the folds it is honest for (no training)."""
    model_dir = Path(args.score_model)
    cfg = ModelConfig.load(model_dir / "model.json")
    folds = args.folds or list(range(1, 11))
    t0 = time.time()
    scores = score_folds(model_dir, folder, pairs, folds, args.device, cache=args.decode_cache)
    d = np.concatenate([np.asarray(scores[k]["dist"]) for k in folds])
    s = np.concatenate([np.asarray(scores[k]["same"], bool) for k in folds])
    oracle_thr, oracle_acc = metrics.best_threshold(d, s)
    res = {
        "protocol": f"LFW View 2 folds {folds} (pairs.txt), scored with the model's own calibrated threshold "
                    f"(chosen on held-out training identities, never on these pairs); honest only if the model "
                    f"never saw a person of people.txt set(s) {folds} - stated by the caller, see model_config",
        "model": str(model_dir),
        "folds": folds,
        "pairs": len(s),
        "threshold": cfg.threshold,
        "accuracy_at_model_threshold": metrics.accuracy(d, s, cfg.threshold) if cfg.threshold is not None else None,
        "fold_accuracy_at_model_threshold": [metrics.accuracy(scores[k]["dist"], scores[k]["same"], cfg.threshold)
                                             for k in folds] if cfg.threshold is not None else None,
        "auc": metrics.auc(d, s),
        "tar_at_far_1e-2": tar_at_far(d, s, 1e-2),
        "tar_at_far_1e-3": tar_at_far(d, s, 1e-3),
        "oracle_best_threshold": oracle_thr,
        "oracle_accuracy_not_honest": oracle_acc,
        "genuine_distance_mean": float(d[s].mean()),
        "impostor_distance_mean": float(d[~s].mean()),
        "score_wall_s": round(time.time() - t0, 1),
        "model_config": cfg.to_dict(),
        "command": args.command_line,
        "machine": machine(),
    }
    if args.record_in_model:
        cfg.training["lfw_evaluation"] = {k: res[k] for k in (
            "folds", "pairs", "threshold", "accuracy_at_model_threshold", "auc", "oracle_accuracy_not_honest")}
        cfg.training["lfw_evaluation"]["tar_at_far_1e-2"] = res["tar_at_far_1e-2"]["tar"]
        cfg.save(model_dir / "model.json")
    out = Path(args.output) if args.output else RESULTS / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="result name: writes benchmarks/results/lfw-NAME.json")
    p.add_argument("--scheme", choices=["tenfold", "halves"], default="halves")
    p.add_argument("--folds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="only the training units that score these folds (comma list), e.g. 3 or 1,6")
    p.add_argument("--merge", action="store_true", help="only merge the unit files in --work-dir")
    p.add_argument("--work-dir", type=Path, default=None, help="default: benchmarks/results/lfw-NAME-units/")
    p.add_argument("--output", default=None, help="result file (default: benchmarks/results/lfw-NAME.json)")
    p.add_argument("--score-model", default=None, help="score this model dir on --folds; no training")
    p.add_argument("--record-in-model", action="store_true", help="with --score-model: store results in model.json")
    p.add_argument("--data", default=str(LFW / "lfw-deepfunneled-112.zip"))
    p.add_argument("--people", default=str(LFW / "people.txt"))
    p.add_argument("--pairs", default=str(LFW / "pairs.txt"))
    p.add_argument("--zero-shot", default=None, metavar="MODEL_DIR",
                   help="score this model unchanged by the scheme's units (no training): the baseline of a fine-tune")
    p.add_argument("--score-cut", type=int, default=None, metavar="K",
                   help="with --zero-shot and --decode-cache: keep the outputs of the model's first K blocks on the "
                        "scored images in the cache, for fine-tuned models that froze those blocks (same numbers)")
    p.add_argument("--init-model", default=None, metavar="MODEL_DIR",
                   help="fine-tune this model (train --init-model): its backbone, embedding size and input size")
    p.add_argument("--train-last-blocks", type=int, default=None, help="train --train-last-blocks")
    p.add_argument("--feature-cache", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--augment", default="full", choices=["full", "flip", "off"])
    p.add_argument("--teacher", default=None, metavar="MODEL_DIR", help="distil from this model (train --teacher)")
    p.add_argument("--teacher-data", default=None, help="--data aligned for the teacher (train --teacher-data)")
    p.add_argument("--distill", default="embedding", choices=["embedding", "relation"])
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--teacher-flip-average", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--unlabelled", default=None, help="train --unlabelled (e.g. --data itself: its one-image people)")
    p.add_argument("--teacher-unlabelled", default=None)
    p.add_argument("--unlabelled-per-batch", type=int, default=64)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--pretrained", default=str(ROOT.parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"),
                   help="'imagenet', a checkpoint path, or 'none'")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--input-size", type=int, default=TRAIN_INPUT_SIZE)
    p.add_argument("--epochs", type=int, default=TRAIN_EPOCHS)
    p.add_argument("--time-budget", type=float, default=None, help="minutes per training unit")
    p.add_argument("--pk", type=int, nargs=2, default=[32, 4], metavar=("P", "K"))
    p.add_argument("--pos-margin", type=float, default=0.0)
    p.add_argument("--margin", type=float, default=0.6)
    p.add_argument("--mining", default="hard")
    p.add_argument("--lr", type=float, default=TRAIN_LR)
    p.add_argument("--backbone-lr-factor", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--calibration-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=True,
                   help="models embed each face and its mirror image (as in the recorded runs; `facesearch train` "
                        "leaves it off; the result also scores the same models without it)")
    p.add_argument("--decode-cache", default=None, help="directory for the decoded-pixel cache (shared by units)")
    p.add_argument("--record-command", default=None,
                   help="the command to record as the one that reproduces the result (e.g. a driver script)")
    p.add_argument("--concurrent", type=int, default=1,
                   help="how many trainings shared the device at once (recorded with each unit)")
    p.add_argument("--device", default="auto")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch's intra-op threads (on a CPU shared with other work, 1 ran SFace 3-5x faster than 2)")
    p.add_argument("--amp", default="auto")
    p.add_argument("--cuda-graph", action="store_true", help="train with the CUDA graph step (train --cuda-graph)")
    p.add_argument("--resume", action="store_true", help="resume a unit from its checkpoint if one exists")
    p.add_argument("--rescore", action="store_true",
                   help="a unit whose trained model is already in --work-dir is scored again, not trained")
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    args.command_line = args.record_command or " ".join(shlex.quote(a) for a in [sys.executable and "python", *sys.argv])
    if args.pretrained.lower() == "none":
        args.pretrained = None
    if args.init_model is not None:  # the started-from model's architecture; no ImageNet start
        start = ModelConfig.load(Path(args.init_model) / "model.json")
        args.backbone, args.embedding_dim, args.input_size = start.backbone, start.embedding_dim, start.input_size
        args.pretrained = None
    work = args.work_dir or RESULTS / f"lfw-{args.name}-units"
    if args.merge:  # the unit files hold everything: no data needed
        res = merge(args, work)
        if res:
            print(f"{args.name}: {res['mean_accuracy']:.4f} +- {res['std_accuracy']:.4f}, AUC {res['auc']:.4f}, "
                  f"TAR@FAR=1e-3 {res['tar_at_far_1e-3']:.4f}")
        return 0 if res else 1
    folder = ImageFolder(args.data)
    pairs = read_pairs(Path(args.pairs))
    sets = read_lfw_people(args.people)
    if args.score_model:
        res = score_model(args, folder, pairs, sets)
        print(json.dumps({k: res[k] for k in ("accuracy_at_model_threshold", "auc", "pairs")}))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    for unit, scored in units(args.scheme):
        if args.folds and not set(scored) & set(args.folds):
            continue
        if args.zero_shot:
            rec = zero_shot_unit(args, unit, scored, folder, pairs, work)
        else:
            rec = train_unit(args, unit, scored, sets, folder, pairs, work)
        rec_path = work / f"unit-{unit}.json"
        data = json.loads(rec_path.read_text())
        data["scheme"] = args.scheme
        rec_path.write_text(json.dumps(data, indent=1))
        print(f"unit {unit}: trained {rec['train_wall_s'] or 0:.0f}s, scored folds {scored}", file=sys.stderr)
    res = merge(args, work)
    if res:
        print(f"{args.name}: {res['mean_accuracy']:.4f} +- {res['std_accuracy']:.4f}, AUC {res['auc']:.4f}, "
              f"TAR@FAR=1e-3 {res['tar_at_far_1e-3']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
