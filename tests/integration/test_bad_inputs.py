"""The table of bad inputs: each one a line (what is given, the exit code, the message), run through the
real CLI on one real gallery (SQLite, FAISS, an ImageNet-trunk model, LFW faces).

Every case must end in a clear message and its exit code: never a traceback (the runner does not catch
exceptions, so one fails its case by name), and never a change to what is enrolled (the gallery's faces
are counted before and after every case). ``FACESEARCH_BAD_INPUT_TABLE=FILE`` writes the table as
Markdown (input, exit code, message) for the notes.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facesearch.cli import cli
from tests.conftest import LFW_ZIP, PEOPLE, needs_lfw

CORPUS = Path(__file__).resolve().parents[1] / "data" / "decode-corpus"

pytestmark = needs_lfw


def _png(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _texture(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * 7 + w).integers(0, 255, (h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, model_dir):
    """A gallery of 4 people x 2 faces, and a folder of bad things to give it."""
    root = tmp_path_factory.mktemp("bad-inputs")
    good = root / "good"
    with zipfile.ZipFile(LFW_ZIP) as z:
        for p in PEOPLE[:4]:
            (good / p).mkdir(parents=True)
            for i in (1, 2):
                (good / p / f"{p}_{i:04d}.webp").write_bytes(z.read(f"lfw-deepfunneled-112/{p}/{p}_{i:04d}.webp"))
        probe = z.read(f"lfw-deepfunneled-112/{PEOPLE[0]}/{PEOPLE[0]}_0003.webp")
    home = root / "home"
    r = CliRunner().invoke(cli, ["--home", str(home), "--device", "cpu", "--model", str(model_dir), "enroll",
                                 str(good)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    b = root / "bad"
    b.mkdir()
    files = {
        "probe": probe, "empty.jpg": b"", "text.jpg": b"hello, I am not an image\n",
        "truncated.webp": probe[: len(probe) // 3], "header-only.png": _png(_texture(64, 64))[:40],
        "html.png": b"<html><body>not a picture</body></html>", "zip.jpg": b"PK\x03\x04" + b"\x00" * 100,
        "tiny.png": _png(_texture(1, 1)), "strip.png": _png(np.zeros((1, 4000, 3), np.uint8)),
        "small.png": _png(_texture(20, 20)), "panorama.png": _png(_texture(30, 900)),
        "black.png": _png(np.zeros((112, 112, 3), np.uint8)), "white.png": _png(np.full((112, 112, 3), 255, np.uint8)),
        "gray.png": _png(np.full((112, 112, 3), 128, np.uint8)),
        "rational.tif": (CORPUS / "tiff-stripoffsets-rational-64.tif").read_bytes(),
        "pdf.jpg": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",
    }
    for name, data in files.items():
        (b / name).write_bytes(data)
    # a decompression bomb: 8000 x 8000 pixels of one bit, a few kB on disk
    Image.new("1", (8000, 8000)).save(b / "bomb.png")
    (b / "huge.jpg").write_bytes(b"")
    os.truncate(b / "huge.jpg", 65 * 1024 * 1024)  # sparse: over the 64 MiB file limit
    (b / "a-folder.jpg").mkdir()
    os.symlink(b / "nothing-here.jpg", b / "dangling.jpg")
    os.mkfifo(b / "fifo.jpg")
    (b / os.fsdecode(b"photo\xff.webp")).write_bytes(probe)
    # folders to enroll
    (b / "empty-folder").mkdir()
    (b / "flat").mkdir()
    (b / "flat" / "x.webp").write_bytes(probe)
    (b / "damaged.zip").write_bytes(b"PK\x03\x04 this zip is cut short")
    (b / "file.txt").write_text("not a folder")
    for ident in (os.fsdecode(b"Jos\xe9"), ".hidden-ish"):
        (b / "names" / ident).mkdir(parents=True, exist_ok=True)
    (b / "names" / os.fsdecode(b"Jos\xe9") / "a.webp").write_bytes(probe)
    # databases and models that are not what they claim
    with sqlite3.connect(b / "app.db") as c:
        c.execute("CREATE TABLE users (id INTEGER)")
    (b / "garbage.db").write_bytes(b"this is not a database" * 100)
    (b / "model-empty").mkdir()
    (b / "model-badjson").mkdir()
    (b / "model-badjson" / "model.json").write_text("{not json")
    shutil.copy(Path(model_dir) / "weights.pt", b / "model-badjson" / "weights.pt")
    (b / "model-notconfig").mkdir()
    (b / "model-notconfig" / "model.json").write_text('["a list, not a model config"]')
    shutil.copy(Path(model_dir) / "weights.pt", b / "model-notconfig" / "weights.pt")
    (b / "model-noweights").mkdir()
    shutil.copy(Path(model_dir) / "model.json", b / "model-noweights" / "model.json")
    (b / "model-badweights").mkdir()
    shutil.copy(Path(model_dir) / "model.json", b / "model-badweights" / "model.json")
    (b / "model-badweights" / "weights.pt").write_bytes(b"\x80\x04not a checkpoint")
    (b / "pairs-bad.txt").write_text("10\t300\nthis line is not a pair\n")
    return {"home": home, "bad": b, "good": good, "model": Path(model_dir)}


B = "{bad}"
P = "{bad}/probe"
#: (case, arguments after the global options, exit code, what the message says); ``{bad}`` is the folder
#: of bad files, ``{good}`` the gallery's source folder, ``{model}`` its model
CASES: list[tuple[str, list[str], int, str]] = [
    # ---- images given to query
    ("query: empty file", ["query", f"{B}/empty.jpg"], 1, r"empty.jpg: error: empty file \(0 bytes\)"),
    ("query: text file named .jpg", ["query", f"{B}/text.jpg"], 1, r"text.jpg: error: not an image file PIL can read"),
    ("query: truncated WebP", ["query", f"{B}/truncated.webp"], 1, r"truncated.webp: error: (truncated or corrupt|not an image)"),
    ("query: PNG header only", ["query", f"{B}/header-only.png"], 1, r"header-only.png: error: (truncated or corrupt|not an image)"),
    ("query: HTML named .png", ["query", f"{B}/html.png"], 1, r"html.png: error: not an image file"),
    ("query: zip named .jpg", ["query", f"{B}/zip.jpg"], 1, r"zip.jpg: error: not an image file"),
    ("query: PDF named .jpg", ["query", f"{B}/pdf.jpg"], 1, r"pdf.jpg: error: not an image file"),
    ("query: 1x1 image", ["query", f"{B}/tiny.png"], 1, r"tiny.png: error: image too small to hold a face \(1x1"),
    ("query: 4000x1 black strip", ["query", f"{B}/strip.png"], 1, r"strip.png: error: image too small to hold a face \(4000x1"),
    ("query: 20x20 image", ["query", f"{B}/small.png"], 1, r"small.png: error: image too small .*at least 24"),
    ("query: 900x30 panorama", ["query", f"{B}/panorama.png"], 1, r"panorama.png: error: not a face image: 900x30"),
    ("query: black image", ["query", f"{B}/black.png"], 1, r"black.png: error: the image is nearly uniform"),
    ("query: white image", ["query", f"{B}/white.png"], 1, r"white.png: error: the image is nearly uniform"),
    ("query: gray image", ["query", f"{B}/gray.png"], 1, r"gray.png: error: the image is nearly uniform"),
    ("query: TIFF with a RATIONAL StripOffsets", ["query", f"{B}/rational.tif"], 1,
     r"rational.tif: error: the image decoder failed on it \(TypeError"),
    ("query: decompression bomb (64 MP)", ["query", f"{B}/bomb.png"], 1, r"bomb.png: error: image too large \(8000x8000.*bomb"),
    ("query: 65 MiB file", ["query", f"{B}/huge.jpg"], 1, r"huge.jpg: error: file too large"),
    ("query: a folder named .jpg (no images in it)", ["query", f"{B}/a-folder.jpg"], 2, r"no image files found"),
    ("query: dangling symlink", ["query", f"{B}/dangling.jpg"], 1, r"dangling.jpg: error: no such file"),
    ("query: FIFO named .jpg", ["query", f"{B}/fifo.jpg"], 1, r"fifo.jpg: error: not a regular file"),
    ("query: missing file", ["query", f"{B}/missing.jpg"], 1, r"missing.jpg: error: no such file"),
    ("query: file name not UTF-8", ["query", f"{B}/" + os.fsdecode(b"photo\xff.webp")], 1,
     r"photo\\xff.webp: error: the file name is not valid UTF-8"),
    ("query: one good probe, one bad", ["query", P, f"{B}/text.jpg"], 3, r"text.jpg: error: not an image file"),
    # ---- query options
    ("query --top-k 0", ["query", P, "--top-k", "0"], 2, r"--top-k.*0"),
    ("query --top-k -3", ["query", P, "--top-k", "-3"], 2, r"--top-k"),
    ("query --top-k abc", ["query", P, "--top-k", "abc"], 2, r"'abc' is not a valid integer"),
    ("query --threshold -0.1", ["query", P, "--threshold", "-0.1"], 2, r"threshold"),
    ("query --threshold 2.5", ["query", P, "--threshold", "2.5"], 2, r"threshold"),
    ("query --threshold nan", ["query", P, "--threshold", "nan"], 2, r"threshold"),
    ("query --far 0", ["query", P, "--far", "0"], 2, r"far"),
    ("query --far 1.5", ["query", P, "--far", "1.5"], 2, r"far"),
    ("query --far 1e-9 (no such operating point)", ["query", P, "--far", "1e-9"], 2, r"far|FAR"),
    ("query --fpir 0", ["query", P, "--fpir", "0"], 2, r"fpir|FPIR"),
    ("query --fpir 2", ["query", P, "--fpir", "2"], 2, r"fpir|FPIR"),
    ("query --far with --threshold", ["query", P, "--far", "0.01", "--threshold", "0.3"], 2, r"one of|at most|not both"),
    ("query --fpir with --far", ["query", P, "--fpir", "0.01", "--far", "0.01"], 2, r"one of|at most|not both"),
    ("query without a probe", ["query"], 2, r"Missing argument|no probe|IMAGE"),
    # ---- verify
    ("verify: second image missing", ["verify", P, f"{B}/missing.jpg"], 1, r"missing.jpg: no such file"),
    ("verify: second image not an image", ["verify", P, f"{B}/text.jpg"], 1, r"text.jpg: not an image file"),
    ("verify: one image only", ["verify", P], 2, r"Missing argument"),
    # ---- enroll: folders
    ("enroll: missing folder", ["enroll", f"{B}/no-such-folder"], 2, r"no-such-folder does not exist"),
    ("enroll: empty folder", ["enroll", f"{B}/empty-folder"], 1, r"no identity folders with files found"),
    ("enroll: images not in identity folders", ["enroll", f"{B}/flat"], 1, r"no identity folders.*not in an identity folder"),
    ("enroll: damaged zip", ["enroll", f"{B}/damaged.zip"], 1, r"damaged.zip: not a readable zip file"),
    ("enroll: a text file as the folder", ["enroll", f"{B}/file.txt"], 1, r"file.txt: expected a folder of identities"),
    ("enroll: identity folder name not UTF-8", ["enroll", f"{B}/names"], 1, r"no identity folders with files found"),
    # ---- enroll: files and identity names
    ("enroll -i '' (empty name)", ["enroll", "-i", "", P], 1, r"identity name is empty"),
    ("enroll -i ' Ann' (leading space)", ["enroll", "-i", " Ann", P], 1, r"leading or trailing spaces"),
    ("enroll -i 'a/b' (separator)", ["enroll", "-i", "a/b", P], 1, r"contains a path separator"),
    ("enroll -i 'a\\b' (separator)", ["enroll", "-i", "a\\b", P], 1, r"contains a path separator"),
    ("enroll -i '..'", ["enroll", "-i", "..", P], 1, r"may not start with '\.'"),
    ("enroll -i '.hidden'", ["enroll", "-i", ".hidden", P], 1, r"may not start with '\.'"),
    ("enroll -i with a newline", ["enroll", "-i", "a\nb", P], 1, r"control characters"),
    ("enroll -i with a NUL byte", ["enroll", "-i", "a\x00b", P], 1, r"control characters"),
    ("enroll -i with a zero-width space", ["enroll", "-i", "a\u200bb", P], 1, r"control characters"),
    ("enroll -i with right-to-left override", ["enroll", "-i", "a\u202eb", P], 1, r"control characters"),
    ("enroll -i not UTF-8", ["enroll", "-i", os.fsdecode(b"a\xff"), P], 1, r"'a\\xff' is not valid Unicode text"),
    ("enroll -i 201 characters", ["enroll", "-i", "x" * 201, P], 1, r"longer than 200 characters"),
    ("enroll -i 150 characters, 300 once composed", ["enroll", "-i", "\u0958" * 150, P], 1, r"once composed"),
    ("enroll -i without files", ["enroll", "-i", "Ann"], 2, r"Missing argument|no files"),
    ("enroll -i of a bad file", ["enroll", "-i", "Ann", f"{B}/text.jpg"], 1, r"text.jpg: not an image file"),
    ("enroll -i of a uniform image", ["enroll", "-i", "Ann", f"{B}/black.png"], 1, r"black.png: the image is nearly uniform"),
    ("enroll -i of a file name not UTF-8", ["enroll", "-i", "Ann", f"{B}/" + os.fsdecode(b"photo\xff.webp")], 1,
     r"photo\\xff.webp: the file name is not valid UTF-8"),
    # ---- identities
    ("identities rename: unknown identity", ["identities", "rename", "Nobody_Here", "X"], 1, r"Nobody_Here"),
    ("identities rename: onto an existing name", ["identities", "rename", PEOPLE[0], PEOPLE[1]], 1, r"exists|already"),
    ("identities rename: to a name not UTF-8", ["identities", "rename", PEOPLE[0], os.fsdecode(b"a\xff")], 1,
     r"not valid Unicode text"),
    ("identities rename: to a path", ["identities", "rename", PEOPLE[0], "../../etc/passwd"], 1, r"path separator"),
    ("identities remove: unknown identity", ["identities", "remove", "Nobody_Here", "--yes"], 1, r"Nobody_Here"),
    ("identities show: unknown identity", ["identities", "show", "Nobody_Here"], 1, r"Nobody_Here"),
    # ---- databases and homes
    ("--db mysql:// (no driver)", ["--db", "mysql://x", "info"], 1, r"its driver is not installed.*SQLite.*PostgreSQL"),
    ("--db foo:// (unknown kind)", ["--db", "foo://x", "info"], 1, r"unknown database kind"),
    ("--db not a URL", ["--db", "not a url", "info"], 1, r"database URL is not valid"),
    ("--db SQLite in a missing folder", ["--db", "sqlite:////nonexistent-facesearch/dir/x.db", "info"], 1,
     r"folder /nonexistent-facesearch/dir does not exist"),
    ("--db another application's database", ["--db", f"sqlite:///{B}/app.db", "info"], 1,
     r"not a facesearch database: it holds tables \(users\)"),
    ("--db a file that is not a database", ["--db", f"sqlite:///{B}/garbage.db", "info"], 1,
     r"cannot open database .*garbage.db: file is not a database"),
    ("--home is a file", ["--home", f"{B}/file.txt", "info"], 2, r"file.txt' is a file"),
    # ---- models
    ("--model a missing folder", ["--model", f"{B}/no-such-model", "query", P], 1, r"no-such-model"),
    ("--model an empty folder", ["--model", f"{B}/model-empty", "query", P], 1,
     r"not a facesearch model directory .*model.json and weights.pt missing"),
    ("--model model.json not JSON", ["--model", f"{B}/model-badjson", "query", P], 1, r"model.json is not valid"),
    ("--model model.json not a config", ["--model", f"{B}/model-notconfig", "query", P], 1, r"model.json is not valid"),
    ("--model without weights", ["--model", f"{B}/model-noweights", "query", P], 1, r"weights.pt missing"),
    ("--model other weights than the gallery's", ["--model", f"{B}/model-badweights", "query", P], 1,
     r"embeddings of different models cannot be compared"),
    ("--model weights not a checkpoint (new gallery)", ["--model", f"{B}/model-badweights", "--home",
                                                        f"{B}/new-home", "verify", P, P], 1, r"cannot load weights"),
    ("query on a home without a gallery (mistyped --home)", ["--home", f"{B}/no-such-home", "query", P], 1,
     r"no gallery in .*no-such-home"),
    ("--model unknown built-in name", ["--model", "no-such-builtin", "query", P], 1, r"no-such-builtin"),
    ("reindex --model a missing folder", ["reindex", "--model", f"{B}/no-such-model"], 1, r"no-such-model"),
    # ---- other commands
    ("evaluate lfw: missing pairs file", ["evaluate", "lfw", "--pairs", f"{B}/missing.txt", "--images", str(LFW_ZIP)], 2,
     r"missing.txt"),
    ("evaluate lfw: malformed pairs file", ["evaluate", "lfw", "--pairs", f"{B}/pairs-bad.txt", "--images",
                                            str(LFW_ZIP)], 1, r"pairs-bad.txt"),
    ("align: missing folder", ["align", f"{B}/no-such-folder", f"{B}/out"], 2, r"no-such-folder"),
    ("db upgrade: unknown revision", ["db", "upgrade", "zzzz"], 1, r"unknown schema revision 'zzzz' \(known: 0001"),
    ("db backup: onto an existing file", ["db", "backup", f"{B}/file.txt"], 1, r"exists"),
]

def _faces(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "facesearch.db") as c:
        return c.execute("SELECT f.id, f.content_sha256, i.name FROM faces f JOIN identities i ON i.id = f.identity_id ORDER BY f.id").fetchall()


@pytest.mark.parametrize("case, args, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(bench, case, args, code, message):
    import re

    fill = {k: str(v) for k, v in bench.items()}
    argv = [a.format(**fill) if "{" in a else a for a in args]
    has_model = argv[0] == "--model"  # a case about the model gives its own
    base = ["--home", fill["home"], "--device", "cpu"] + ([] if has_model else ["--model", fill["model"]])
    before = _faces(bench["home"])
    r = CliRunner().invoke(cli, base + argv, catch_exceptions=False)
    text = r.output.strip()
    line = next((ln for ln in reversed(text.splitlines()) if re.search(message, ln)), text.splitlines()[-1] if text else "")
    out = os.environ.get("FACESEARCH_BAD_INPUT_TABLE")
    if out:  # the table for the notes, one row per case as it runs
        with open(out, "a") as f:
            f.write(f"| {case} | {r.exit_code} | {line.strip().replace('|', '/')[:180]} |\n")
    assert r.exit_code == code, text
    assert re.search(message, text), text
    assert "Traceback" not in text
    assert _faces(bench["home"]) == before, "a bad input changed what is enrolled"
