"""How results are printed: JSON for scripts, short lines for people (no library logic here)."""

from __future__ import annotations

import json

import click

from facesearch.names import printable


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian wide and full-width characters take two, combining
    marks none."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, columns: int) -> str:
    """``text`` padded to ``columns`` terminal columns, or cut to fit with a visible ``…`` at the end."""
    if _width(text) <= columns:
        return text + " " * (columns - _width(text))
    out = ""
    for c in text:
        if _width(out + c) > columns - 1:
            break
        out += c
    return out + "…" + " " * (columns - 1 - _width(out))


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def echo_outcome(as_json: bool, obj: dict, line: str) -> None:
    """What a command that changes the gallery did: ``obj`` as JSON with ``--json``, else ``line``."""
    echo_json(obj) if as_json else click.echo(line)


def echo_problems(failures: list[tuple[str, str]], several_faces: int, taken: str) -> None:
    """After an enroll or align summary: each failed file with its reason, and how many photos held
    several faces (of which the largest was ``taken``)."""
    for source, reason in failures:
        click.echo(f"  failed: {printable(source)}: {reason}", err=True)
    if several_faces:
        click.echo(f"  {several_faces} photo(s) held several faces; the largest face of each was {taken} "
                   "(--json lists them)", err=True)


def print_enroll(report) -> None:
    click.echo(f"identities: {len(report.identities)}  added: {report.added}  "
               f"skipped (already enrolled): {len(report.skipped)}  failed: {len(report.failed)}")
    echo_problems([(f.source, f.reason) for f in report.failures_sorted()], len(report.several_faces), "enrolled")
    if report.elsewhere:
        click.echo(f"{len(report.elsewhere)} file(s) are enrolled already as another identity, and were "
                   "not added to the one asked for:")
        for source, asked, has in sorted(report.elsewhere)[:20]:
            click.echo(f"  {printable(source)}: asked {asked}, enrolled as {has}")
        if len(report.elsewhere) > 20:
            click.echo(f"  ... and {len(report.elsewhere) - 20} more (--json lists them all)")
    if report.fell_back:
        click.echo(f"note: {len(report.fell_back)} photo(s) had no face found and were enrolled whole as aligned "
                   "crops (--detect-fallback; --json lists them)", err=True)
    if report.unlike_crops:
        source, why = sorted(report.unlike_crops)[0]
        click.echo(f"warning: {len(report.unlike_crops)} image(s) do not look like aligned face crops, e.g. "
                   f"{printable(source)}: {why}. They were enrolled as crops; for ordinary photos enroll them again with "
                   "--detect and remove these faces (`facesearch faces remove ID...`)", err=True)


def print_result(r, threshold: float) -> None:
    """One probe's ranked identities (or its error)."""
    from facesearch.gallery.results import Failure

    if isinstance(r, Failure):
        click.echo(f"{printable(r.source)}: error: {r.reason}", err=True)
        return
    if not r.matches:
        click.echo(f"{printable(r.probe)}: unknown (the gallery is empty)")
        return
    top = r.matches[0]
    probe = printable(r.probe) if r.face is None else f"{printable(r.probe)} face at {tuple(r.face['box'])}"
    rule = f" [{_rule(r.decision)}]" if r.decision else ""
    if r.identity is None:
        click.echo(f"{probe}: unknown (nearest {top.identity} at distance {top.distance:.4f} "
                   f"> threshold {threshold:.4f}){rule}")
    else:
        click.echo(f"{probe}: {r.identity} (distance {top.distance:.4f} <= threshold {threshold:.4f}){rule}")
    click.echo(f"  {'rank':>4}  {'identity':<32} {'distance':>8}  match  face")
    for i, m in enumerate(r.matches, 1):
        click.echo(f"  {i:>4}  {fit(m.identity, 32)} {m.distance:>8.4f}  {'yes' if m.match else 'no ':<5}  {m.face_id}")


def _rule(decision: dict) -> str:
    """Which rule decided, in a few words (a query result's ``decision``)."""
    from facesearch.gallery.results import Decision

    return Decision(**decision).describe()


def print_info(d: dict) -> None:
    m = d["model"]
    click.echo(f"home:        {d['home']}")
    click.echo(f"database:    {d['database']} (schema {d['schema_revision']})")
    click.echo(f"model:       {m['key']} ({m['backbone']}, {m['embedding_dim']}-d, {m['input_size']} px)")
    q = m.get("quantization")
    if q:
        click.echo(f"             {q['precision']} ({q.get('method')} ranges from {q.get('calibration_images')} images) of "
                   f"{q.get('fp32_model')}; ONNX Runtime on the CPU only")
    click.echo(f"threshold:   {m['threshold']:.4f} (1:1, verify; {m['distance']} distance; match when distance "
               "<= threshold)")
    for op in m.get("operating_points") or []:
        click.echo(f"  --far {op['far']:g}: {op['threshold']:.4f} (accepts {100 * op['tar']:.1f}% of genuine "
                   f"held-out pairs)")
    ident = m.get("identification") or {}
    if ident.get("available"):
        click.echo(f"1:N (query): FPIR thresholds at {ident['gallery_identities']} identities "
                   f"(calibrated on {ident['source']}):")
        for row in ident["thresholds"]:
            click.echo(f"  --fpir {row['fpir']:g}: {row['threshold']:.4f} ({row['status']})"
                       + ("  [default]" if row["default"] else ""))
    elif ident:
        click.echo(f"1:N (query): {ident['warning']}")
    click.echo(f"identities:  {d['identities']}")
    click.echo(f"faces:       {d['faces']}")
    ix = d["index"]
    if "error" in ix:
        click.echo(f"index:       unusable: {ix['error']}")
    else:
        probe = f", {ix['nprobe']} lists probed" if ix.get("nprobe") else ""
        click.echo(f"index:       {ix['type']} on {ix['backend']}, {ix['size']} vectors{probe} "
                   f"({ix.get('file') or ix.get('vectors')})")
    drift = ix.get("drift")
    if drift and not drift["in_sync"]:
        click.echo(f"drift:       {drift['missing']} faces not in the vectors, {drift['extra']} vectors not in the "
                   f"store, {drift['stale_in_sample']} stale in a sample: run `facesearch reindex --repair`")
    click.echo(f"device:      {d['device']}")
    click.echo(f"detector:    {d['detector']}")
    fa = d.get("faiss") or {}
    dists = ", ".join(f"{k} {v}" for k, v in (fa.get("distributions") or {}).items())
    click.echo(f"faiss:       {dists or 'none'}" + (f"  PROBLEM: {fa['problem']}" if fa.get("problem") else ""))
