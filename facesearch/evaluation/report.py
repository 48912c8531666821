"""Evaluation reports: ``report.json``, ``roc.png``, ``hist.png`` and a self-contained ``report.html``.

matplotlib (the ``report`` extra) is imported lazily, with the Agg backend, only when a report is
written. The HTML page is self-contained: its plots and the face crops of the hardest errors are embedded
in it (the PNG files are written beside it too), so it can be moved or mailed alone. It carries the same
honesty warnings as the command's text output.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import FaceSearchError

#: how many of the hardest false matches / false non-matches the page shows
N_EXAMPLES = 6


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise FaceSearchError(
            "writing a report needs matplotlib: pip install 'facesearch[report]' (or pip install matplotlib)"
        ) from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def dumps(obj: Any) -> str:
    """JSON text of a result summary (numpy values converted; non-finite floats become null)."""
    return json.dumps(_jsonable(obj), indent=2)


# --------------------------------------------------------------------------- plots


def plot_roc(result, path: Path) -> Path:
    """TAR against FAR, FAR on a log axis, with the TAR@FAR points and the EER marked."""
    plt = _pyplot()
    far, tar = np.asarray(result.roc["far"]), np.asarray(result.roc["tar"])
    # FAR = 0 cannot sit on a log axis: draw it at half an impostor pair (or below the smallest FAR reported)
    fars = [v["far"] for v in result.tar_at_far.values()]
    floor = min([0.5 / max(result.n_impostor, 1)] + [0.5 * f for f in fars if f > 0])
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    ax.plot(np.maximum(far, floor), tar, color="tab:blue", lw=1.8, label=f"ROC (AUC = {result.auc:.4f})")
    for key, v in result.tar_at_far.items():
        ax.plot([v["far"]], [v["tar"]], "o", ms=6, label=f"TAR@FAR={key}: {v['tar']:.3f}")
    ax.plot([max(result.eer, floor)], [1 - result.eer], "s", color="black", ms=6, label=f"EER = {result.eer:.3f}")
    xs = np.logspace(math.log10(floor), 0, 100)
    ax.plot(xs, xs, ":", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    # the TAR axis is zoomed on where the curve lives (a good model's spans 0.9-1.0: on 0-1 it is a flat line)
    left = tar[far <= floor]  # the curve's height at the left edge of the plot: its lowest visible point
    low = float(left.max()) if left.size else (float(tar.min()) if len(tar) else 0.0)
    ax.set_ylim(max(0.0, low - 0.02 * max(1.0 - low, 0.05)), 1.0 + 0.01 * max(1.0 - low, 0.05))
    ax.set_xlabel("false accept rate (FAR), log scale")
    ax.set_ylabel("true accept rate (TAR), axis zoomed to the curve")
    ax.set_title(f"ROC: {result.n_genuine} genuine / {result.n_impostor} impostor pairs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_hist(result, path: Path) -> Path:
    """Histograms of genuine and impostor distances with the thresholds drawn."""
    plt = _pyplot()
    d, s = np.asarray(result.dist), np.asarray(result.same, bool)
    lo, hi = float(d.min()), float(d.max())
    pad = 0.02 * max(hi - lo, 1e-3)
    bins = np.linspace(lo - pad, hi + pad, 61)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.hist(d[s], bins=bins, alpha=0.6, color="tab:green", label=f"genuine (same person, n={int(s.sum())})")
    ax.hist(d[~s], bins=bins, alpha=0.6, color="tab:red", label=f"impostor (different, n={int((~s).sum())})")
    ax.axvline(result.best_threshold, color="black", lw=1.6,
               label=f"best global threshold {result.best_threshold:.3f}")
    if result.folds:
        ts = [f["threshold"] for f in result.folds]
        ax.axvspan(min(ts), max(ts), color="black", alpha=0.12,
                   label=f"per-fold thresholds {min(ts):.3f}-{max(ts):.3f}")
    if result.model_threshold is not None:
        ax.axvline(result.model_threshold, color="tab:blue", ls="--", lw=1.4,
                   label=f"model's stored threshold {result.model_threshold:.3f}")
    ax.set_xlabel("cosine distance (lower = more similar; match when distance <= threshold)")
    ax.set_ylabel("pairs")
    ax.set_title("genuine vs impostor distances")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- HTML


def _thumb(folder, name: str, number: int, size: int = 112) -> str:
    """A data: URI (JPEG) of LFW image ``name`` #``number``, or "" when it cannot be read."""
    try:
        key = folder.lfw_key(name, number)
    except FaceSearchError:
        return ""
    return _thumb_key(folder, key, size)


def _data_uri(path: Path) -> str:
    """A PNG file as a data: URI, so the page holds its plots."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _thumb_key(folder, key: str, size: int = 112) -> str:
    """A data: URI (JPEG) of image ``key`` of ``folder``, or "" when it cannot be read."""
    from PIL import Image

    from facesearch import images

    try:
        px = images.decode(folder.read(key), key, check=False)
    except (FaceSearchError, OSError, KeyError):
        return ""
    img = Image.fromarray(px)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _warnings_html(warnings) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f"<div class='warn'><strong>Read these numbers with care:</strong><ul>{items}</ul></div>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .7em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.plots img{max-width:49%;vertical-align:top}
.pairs{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ccc;padding:6px;font-size:.8em;width:240px}
.pair img{width:112px;height:112px;image-rendering:auto}.note{color:#555;font-size:.9em}
body{padding:0 1em;box-sizing:border-box}img{max-width:100%;height:auto}table{max-width:100%}
td,th{overflow-wrap:anywhere}pre{white-space:pre-wrap;overflow-wrap:anywhere;max-height:28em;overflow:auto;
background:#f7f7f7;padding:.6em;border:1px solid #ddd}
.warn{border:1px solid #d9a400;background:#fff8e1;padding:.4em 1em;margin:1em 0}
@media (max-width:800px){.plots img{max-width:100%}}
"""


def _row(label: str, value: str) -> str:
    return f"<tr><th class='l'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _pairs_html(result, folder, idx: list[int], title: str, explain: str) -> str:
    parts = [f"<h3>{html.escape(title)}</h3><p class='note'>{html.escape(explain)}</p>"]
    if not idx:
        return parts[0] + "<p>none</p>"
    parts.append("<div class='pairs'>")
    for i in idx:
        (n1, i1), (n2, i2) = result.left[i], result.right[i]
        cap = (f"{n1} #{i1}<br>{n2} #{i2}<br>distance {result.dist[i]:.4f} "
               f"(threshold {result.pair_threshold[i]:.4f})")
        if result.folds:
            cap += f", fold {int(result.fold[i]) + 1}"
        imgs = "".join(
            f"<img alt='{html.escape(f'{n} {k}')}' src='{_thumb(folder, n, k)}'>" for n, k in ((n1, i1), (n2, i2))
        )
        parts.append(f"<div class='pair'>{imgs}<br>{_esc_caption(cap)}</div>")
    parts.append("</div>")
    return "".join(parts)


def _esc_caption(cap: str) -> str:
    return "<br>".join(html.escape(p) for p in cap.split("<br>"))


def lfw_html(result, folder, n_examples: int = N_EXAMPLES, warnings=(), plots: dict | None = None) -> str:
    m = result.model
    plots = plots or {}
    rows = [
        _row("pairs file", result.pairs_file),
        _row("images", result.images),
        _row("protocol", result.protocol),
        _row("pairs", f"{result.n_pairs} ({result.n_genuine} genuine, {result.n_impostor} impostor)"),
        _row("images embedded (each once)", str(result.n_images)),
        _row("model", f"{m.get('name')} ({m.get('backbone')}, {m.get('embedding_dim')}-d) at {m.get('path')}"),
        _row("device", result.device),
    ]
    if result.mean_accuracy is not None:
        rows.append(_row(f"accuracy, {result.n_folds}-fold (mean ± std)",
                         f"{_pct(result.mean_accuracy)} ± {_pct(result.std_accuracy)}"))
    rows += [
        _row("ROC AUC", _num(result.auc)),
        _row("EER", f"{_pct(result.eer)} at distance {_num(result.eer_threshold)}"),
    ]
    for key, v in result.tar_at_far.items():
        rows.append(_row(f"TAR @ FAR = {key}", f"{_pct(v['tar'])} (threshold {_num(v['threshold'])})"))
    rows.append(_row("best global threshold (chosen on all pairs: optimistic)",
                     f"{_num(result.best_threshold)} → accuracy {_pct(result.best_threshold_accuracy)}"))
    rows.append(_row("model's stored threshold",
                     "not calibrated" if result.model_threshold is None else
                     f"{_num(result.model_threshold)} → accuracy {_pct(result.model_threshold_accuracy)}"))
    rows.append(_row("time", f"{result.seconds['total']:.1f} s (embedding {result.seconds['embed']:.1f} s)"))
    folds = ""
    if result.folds:
        frows = "".join(
            f"<tr><td>{f['fold']}</td><td>{_num(f['threshold'])}</td><td>{_pct(f['accuracy'])}</td></tr>"
            for f in result.folds
        )
        folds = (
            "<h2>Folds</h2><p class='note'>Each fold's threshold is chosen on the other folds only; "
            "its accuracy is measured on the fold itself.</p>"
            f"<table><tr><th>fold</th><th>threshold</th><th>accuracy</th></tr>{frows}</table>"
        )
    judged = ("its fold's threshold (chosen on the other folds)" if result.folds else
              "the model's stored threshold" if result.model_threshold is not None else "the best threshold")
    fm = _pairs_html(result, folder, result.errors("false_match", n_examples), "Hardest false matches",
                     f"Different people judged the same with {judged}: the closest impostor pairs.")
    fnm = _pairs_html(result, folder, result.errors("false_non_match", n_examples), "Hardest false non-matches",
                      f"The same person judged different with {judged}: the farthest genuine pairs.")
    training = html.escape(json.dumps(_jsonable(m.get("training") or {}), indent=1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>facesearch LFW evaluation</title>
<style>{_CSS}</style></head><body>
<h1>facesearch: LFW verification report</h1>
<p class="note">Distance: cosine distance in [0, 2], lower is more similar; two faces match when
distance &lt;= threshold. LFW (Labeled Faces in the Wild, UMass Amherst) is a research benchmark of news
photos without a licence file. A model must not be scored on LFW people it was trained on: check the
training summary below.</p>
{_warnings_html(warnings)}
<h2>Numbers</h2><table>{''.join(rows)}</table>
{folds}
<h2>Plots</h2><div class="plots"><img src="{plots.get('roc', 'roc.png')}" alt="ROC curve, log-scale FAR">
<img src="{plots.get('hist', 'hist.png')}" alt="histogram of genuine and impostor distances with the threshold"></div>
<h2>Errors</h2>{fm}{fnm}
<h2>Model</h2><p class="note">weights sha256 {html.escape(str(m.get('weights_sha256')))}</p>
<p>training summary:</p><pre>{training}</pre>
</body></html>
"""


def write_lfw_report(result, out_dir: str | os.PathLike, folder=None, n_examples: int = N_EXAMPLES,
                     warnings=()) -> dict[str, Path]:
    """Write ``report.json`` (summary and per-pair distances), ``roc.png``, ``hist.png`` and
    ``report.html`` into ``out_dir`` (created). ``folder`` is the :class:`ImageFolder` of the images
    (opened from ``result.images`` when None). Returns the paths written."""
    from facesearch.datasets import ImageFolder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if folder is None:
        folder = ImageFolder(result.images)
    data = dict(result.summary())
    data["pairs"] = [
        {"left": list(result.left[i]), "right": list(result.right[i]), "same": bool(result.same[i]),
         "fold": int(result.fold[i]) + 1, "distance": float(result.dist[i]),
         "threshold": float(result.pair_threshold[i])}
        for i in range(result.n_pairs)
    ]
    paths = {
        "json": out / "report.json",
        "roc": out / "roc.png",
        "hist": out / "hist.png",
        "html": out / "report.html",
    }
    paths["json"].write_text(dumps(data) + "\n")
    plot_roc(result, paths["roc"])
    plot_hist(result, paths["hist"])
    plots = {k: _data_uri(paths[k]) for k in ("roc", "hist")}
    paths["html"].write_text(lfw_html(result, folder, n_examples, warnings, plots), encoding="utf-8")
    return paths


def plot_dir_fpir(result, path: Path) -> Path | None:
    """DIR against FPIR over thresholds chosen on this run, with the model's own FPIR thresholds marked."""
    curve = [c for c in getattr(result, "dir_curve", []) if c["fpir"] > 0]
    if not curve:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.plot([c["fpir"] for c in curve], [c["dir"] for c in curve], color="tab:blue", lw=1.8,
            label="thresholds chosen on this run")
    for key, v in getattr(result, "at_model_fpir", {}).items():
        if v["measured_fpir"] > 0:
            ax.plot([v["measured_fpir"]], [v["dir"]], "o", ms=6, label=f"model's FPIR {key} threshold")
    ax.set_xscale("log")
    ax.set_xlabel("FPIR: never-enrolled people's probes accepted (log scale)")
    ax.set_ylabel("DIR: enrolled people found, right and accepted")
    ax.set_title(f"{result.n_enrolled_identities} enrolled, {result.n_unknown_probes} stranger probes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _hardest_html(result, folder) -> str:
    rows = getattr(result, "hardest", [])
    if not rows:
        return "<p>none: every probe of an enrolled person had the right identity first</p>"
    parts = ["<div class='pairs'>"]
    for h in rows:
        imgs = "".join(f"<img alt='{html.escape(k)}' src='{_thumb_key(folder, k) if folder is not None else ''}'>"
                       for k in (h["probe"], h["matched_source"]))
        cap = f"{h['person']} (probe)<br>found {h['matched']}<br>distance {h['distance']:.4f}"
        parts.append(f"<div class='pair'>{imgs}<br>{_esc_caption(cap)}</div>")
    return "".join(parts) + "</div>"


def identify_html(result, folder=None, warnings=(), plot: str | None = None) -> str:
    rows = [
        _row("images", result.images + (" (photos: faces detected and aligned, --detect)" if result.detect else "")),
        _row("model", f"{result.model.get('name')} at {result.model.get('path')}"),
        _row("device", result.device),
        _row("gallery", f"{result.n_enrolled_identities} people, {result.n_gallery_images} images "
                        f"({result.gallery_per_identity} per person)"),
        _row("probes", f"{result.n_known_probes} of enrolled people, {result.n_unknown_probes} of "
                       f"{result.n_unknown_identities} never-enrolled people"),
        _row("rank-1 identification rate", _pct(result.rank1)),
        _row("rank-5 identification rate", _pct(result.rank5)),
    ]
    for key, v in result.dir_at_fpir.items():
        val = (f"{_pct(v['dir'])} (threshold {_num(v['threshold'])})" if v.get("measurable", True)
               else f"not measurable with {result.n_unknown_probes} unknown probes")
        rows.append(_row(f"DIR @ FPIR = {key}, threshold chosen on this run", val))
    for key, v in getattr(result, "at_model_fpir", {}).items():
        rows.append(_row(f"model's FPIR {key} threshold at {result.n_enrolled_identities} identities "
                         f"({v['status']}): FPIR here, DIR",
                         f"{_pct(v['measured_fpir'])}{'' if v['measurable'] else ' (too few unknown probes)'}, "
                         f"{_pct(v['dir'])} (threshold {_num(v['threshold'])})"))
    d = getattr(result, "default_decision", None) or {}
    if d:
        rows.append(_row(f"query's default rule ({d['rule']}, threshold {_num(d['threshold'])}): "
                         "unknown rejected, DIR",
                         f"{_pct(result.unknown_rejected_by_default)}, {_pct(result.dir_by_default)}"))
    if result.model_threshold is None:
        rows.append(_row("model's 1:1 threshold", "not calibrated"))
    else:
        rows.append(_row(f"unknown probes rejected at the 1:1 threshold {_num(result.model_threshold)}",
                         _pct(result.unknown_rejected)))
        rows.append(_row("DIR at the 1:1 threshold", _pct(result.dir_at_model_threshold)))
    for key, v in result.at_operating_points.items():
        rows.append(_row(f"--far {key} (threshold {_num(v['threshold'])}): unknown rejected, DIR",
                         f"{_pct(v['unknown_rejected'])}, {_pct(v['dir'])}"))
    rows.append(_row("time", f"{result.seconds['total']:.1f} s"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>facesearch identification evaluation</title>
<style>{_CSS}</style></head><body>
<h1>facesearch: open-set identification report</h1>
<p class="note">Cosine distance, lower is more similar; a probe is accepted when its best gallery distance
is &lt;= threshold. DIR: enrolled people's probes accepted with the right identity at rank 1; FPIR:
never-enrolled people's probes accepted.</p>
{_warnings_html(list(warnings) + list(getattr(result, "warnings", [])))}
<table>{''.join(rows)}</table>
{f'<h2>DIR against FPIR</h2><div class="plots"><img src="{plot}" alt="DIR against FPIR"></div>' if plot else ''}
<h2>Hardest misidentifications</h2><p class="note">Probes of enrolled people whose closest identity was
someone else, closest first: the probe, then the gallery face it came nearest.</p>
{_hardest_html(result, folder)}
</body></html>
"""


def write_identify_report(result, out_dir: str | os.PathLike, warnings=()) -> dict[str, Path]:
    """Write ``report.json``, ``dir_fpir.png`` and a self-contained ``report.html`` for an identification run."""
    from facesearch.datasets import ImageFolder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    paths["json"].write_text(dumps(result.summary()) + "\n")
    plot = plot_dir_fpir(result, out / "dir_fpir.png")
    if plot is not None:
        paths["dir_fpir"] = plot
    try:
        folder = ImageFolder(result.images)
    except FaceSearchError:
        folder = None
    paths["html"].write_text(identify_html(result, folder, warnings, _data_uri(plot) if plot else None),
                             encoding="utf-8")
    return paths
