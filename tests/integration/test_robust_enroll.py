"""One bad name, one odd file, one unreadable folder or a full disk never stops the rest: the
reproductions of the reliability issue, run as a user would (the real CLI in a process of its own, a
real full filesystem), each checked for what was enrolled and what was reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from tests.conftest import LFW_ZIP, REPO, needs_lfw

pytestmark = needs_lfw
CORPUS = REPO / "tests" / "data" / "decode-corpus"


def _lfw(name: str, i: int) -> bytes:
    with zipfile.ZipFile(LFW_ZIP) as z:
        return z.read(f"lfw-deepfunneled-112/{name}/{name}_{i:04d}.webp")


def _unprivileged() -> list[str] | None:
    """A command prefix under which file permissions hold: nothing for an ordinary user; for root,
    ``setpriv`` dropping the capabilities that bypass them (root reads a mode-000 folder otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_folder_with_bad_names_a_crafted_tiff_and_an_unreadable_folder_enrolls_the_rest(tmp_path):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: an unreadable folder cannot be made")
    people = tmp_path / "people"
    for name in ("Colin_Powell", "Tony_Blair", "George_W_Bush"):
        (people / name).mkdir(parents=True)
        for i in (1, 2):
            (people / name / f"{name}_{i:04d}.webp").write_bytes(_lfw(name, i))
    bad_folder = people / os.fsdecode(b"Jos\xe9")  # Latin-1 bytes, not UTF-8
    bad_folder.mkdir()
    (bad_folder / "a.webp").write_bytes(_lfw("Hugo_Chavez", 1))
    (people / "Tony_Blair" / os.fsdecode(b"photo\xff.webp")).write_bytes(_lfw("Tony_Blair", 3))
    shutil.copy(CORPUS / "tiff-stripoffsets-rational-64.tif", people / "Colin_Powell" / "evil.tif")
    locked = people / "Locked_Person"
    locked.mkdir()
    (locked / "a.webp").write_bytes(_lfw("Serena_Williams", 1))
    locked.chmod(0)
    try:
        r = subprocess.run(prefix + [sys.executable, "-m", "facesearch", "--home", str(tmp_path / "home"),
                                     "--model", "lfw-mobilenet", "--device", "cpu", "enroll", str(people), "--json"],
                           capture_output=True, cwd=REPO, timeout=300)
    finally:
        locked.chmod(0o700)
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    assert r.returncode == 3, r.stderr.decode(errors="replace")  # 3: some files failed, the rest is enrolled
    rep = json.loads(r.stdout)
    assert rep["added"] == 6 and sorted(rep["identities"]) == ["Colin_Powell", "George_W_Bush", "Tony_Blair"]
    # a name that is not UTF-8 is reported with its odd bytes written as \xNN
    why = {os.path.relpath(f["source"], people): f["reason"] for f in rep["failures"]}
    assert set(why) == {"Jos\\xe9/a.webp", "Tony_Blair/photo\\xff.webp", "Colin_Powell/evil.tif", "Locked_Person"}, why
    assert "identity folder's name is not valid UTF-8" in why["Jos\\xe9/a.webp"]
    assert "file name is not valid UTF-8" in why["Tony_Blair/photo\\xff.webp"]
    assert "decoder failed on it (TypeError" in why["Colin_Powell/evil.tif"]
    assert "cannot read the identity folder: Permission denied" in why["Locked_Person"]
    # readable again, the same command adds just that folder; the report prints the odd names escaped
    r2 = subprocess.run(prefix + [sys.executable, "-m", "facesearch", "--home", str(tmp_path / "home"),
                                  "enroll", str(people)], capture_output=True, cwd=REPO, timeout=300)
    assert r2.returncode == 3 and b"Traceback" not in r2.stderr
    assert b"added: 1  skipped (already enrolled): 6  failed: 3" in r2.stdout
    assert b"photo\\xff.webp: the file name is not valid UTF-8" in r2.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB filesystem (tmpfs) that can be filled; root only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
    with open(filler, "ab", buffering=0) as f:  # the last few bytes too
        for _ in range(1 << 16):
            try:
                f.write(b"\0")
            except OSError:
                break
    return filler


def test_read_commands_work_on_a_full_disk_and_nothing_is_lost(small_disk, tmp_path):
    people = tmp_path / "people"
    for name in ("Colin_Powell", "Tony_Blair"):
        (people / name).mkdir(parents=True)
        for i in (1, 2):
            (people / name / f"{name}_{i:04d}.webp").write_bytes(_lfw(name, i))
    probe = tmp_path / "probe.webp"
    probe.write_bytes(_lfw("Tony_Blair", 3))
    home = small_disk / "home"

    def run(*args):
        return CliRunner().invoke(cli, ["--home", str(home), "--model", "lfw-mobilenet", "--device", "cpu", *args],
                                  catch_exceptions=False)

    assert run("enroll", str(people)).exit_code == 0
    filler = _fill(small_disk)
    assert shutil.disk_usage(small_disk).free < 8192
    q = run("query", str(probe), "--json")
    assert q.exit_code == 0, q.output
    assert json.loads(q.stdout)[0]["identity"] == "Tony_Blair"
    assert "opened read-only" in q.stderr
    info = run("info", "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["faces"] == 4
    extra = tmp_path / "more" / "Serena_Williams"
    extra.mkdir(parents=True)
    (extra / "s.webp").write_bytes(_lfw("Serena_Williams", 1))
    e = run("enroll", str(extra.parent))
    assert e.exit_code == 1 and "Traceback" not in e.output
    filler.unlink()  # space again: everything enrolled before is there, and enrolling works
    after = run("enroll", str(extra.parent), "--json")
    assert after.exit_code == 0, after.output
    assert json.loads(run("info", "--json").stdout)["faces"] == 5
