import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facesearch import images
from facesearch.errors import FaceSearchError, InvalidIdentityError, ModelMismatchError
from facesearch.gallery.facade import FaceSearch
from tests.conftest import PEOPLE, REPO


def gallery_with_holdout(src: Path, dest: Path, n: int = 3) -> Path:
    """dest/<person>/ with the first n images of each person in src (the rest are probes)."""
    for p in PEOPLE:
        (dest / p).mkdir(parents=True)
        for f in sorted((src / p).iterdir())[:n]:
            shutil.copy(f, dest / p / f.name)
    return dest


def test_enroll_query_verify_one_distance(fs, gallery_src, tmp_path):
    g = gallery_with_holdout(gallery_src, tmp_path / "g")
    rep = fs.enroll_folder(g)
    assert rep.added == 3 * len(PEOPLE) and not rep.failed and not rep.skipped
    assert rep.identities == set(PEOPLE)
    assert fs.index().ntotal == fs.store.count_faces() == rep.added

    probe = gallery_src / "Tony_Blair" / "Tony_Blair_0004.webp"
    res = fs.query(probe, top_k=len(PEOPLE))
    assert len(res.matches) == len(PEOPLE)  # one entry per identity
    assert len({m.identity for m in res.matches}) == len(PEOPLE)
    assert [m.distance for m in res.matches] == sorted(m.distance for m in res.matches)
    for i, m in enumerate(res.matches):  # the distance query reports is the distance verify reports
        v = fs.verify(probe, m.source)
        assert v.distance == pytest.approx(m.distance, abs=1e-4)
        assert v.same == (m.distance <= fs.threshold)
        assert m.match == (i == 0 and v.same)  # 1:N accepts one identity at most
    assert res.identity == (res.matches[0].identity if res.matches[0].match else None)


def test_exact_image_is_its_own_nearest_face(fs, gallery_src, tmp_path):
    g = gallery_with_holdout(gallery_src, tmp_path / "g")
    fs.enroll_folder(g)
    f = g / "Bill_Gates" / "Bill_Gates_0002.webp"
    res = fs.query(f)
    assert res.matches[0].identity == "Bill_Gates" and res.matches[0].distance == pytest.approx(0.0, abs=1e-5)
    assert res.identity == "Bill_Gates"


def test_enroll_is_idempotent(fs, gallery_src, tmp_path):
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    first = fs.enroll_folder(g)
    again = fs.enroll_folder(g)
    assert again.added == 0 and len(again.skipped) == first.added
    # the same content under another name and identity is still skipped, and says who has it
    dup = tmp_path / "dup.webp"
    shutil.copy(g / "Bill_Gates" / "Bill_Gates_0001.webp", dup)
    r = fs.enroll_files("Someone_Else", [dup])
    assert r.added == 0 and r.skipped == [(str(dup), "Bill_Gates")]
    assert fs.store.count_faces() == first.added


def test_reenroll_decodes_only_new_content(fs, gallery_src, tmp_path, monkeypatch):
    """Content enrolled already is recognised by its bytes' hash, before any decoding: re-running
    enroll on a grown folder costs a read and a hash per old file, not a decode (or a detection)."""
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    first = fs.enroll_folder(g)
    decoded = []
    real = images.decode
    monkeypatch.setattr(images, "decode", lambda data, name="<bytes>": (decoded.append(name), real(data, name))[1])
    new = g / "Bill_Gates" / "new.webp"
    shutil.copy(sorted((gallery_src / "Bill_Gates").iterdir())[-1], new)  # held out above
    (g / "Bill_Gates" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    r = fs.enroll_folder(g)
    assert r.added == 1 and len(r.skipped) == first.added
    assert [f.source for f in r.failed] == [str(g / "Bill_Gates" / "broken.jpg")]
    assert sorted(decoded) == sorted([str(new), str(g / "Bill_Gates" / "broken.jpg")])


def test_two_databases_sharing_a_home_never_share_an_index(gallery_src, model_dir, tmp_path):
    """Two --db URLs with one --home write one index file. Both galleries below reach the same revision
    with the same number of faces, so only the store's change id tells their index files apart."""
    home = tmp_path / "home"
    a, b = PEOPLE[:2], PEOPLE[2:4]
    src = gallery_with_holdout(gallery_src, tmp_path / "g", 2)

    def open_db(name):
        return FaceSearch.open(home=home, db_url=f"sqlite:///{tmp_path / name}", model=model_dir,
                               device="cpu", backend="faiss-cpu")

    revisions = []
    for name, people in (("a.db", a), ("b.db", b)):
        with open_db(name) as fs:
            rep = fs.enroll_items((p, str(f), f) for p in people for f in sorted((src / p).iterdir()))
            assert rep.added == 4
            revisions.append(fs.store.revision())
    assert revisions[0] == revisions[1]
    with open_db("a.db") as fs:  # a new handle: it would load b's index file if it took it
        probe = sorted((gallery_src / a[0]).iterdir())[-1]
        res = fs.query(probe, top_k=4)
        # every distance is the one to that face's own stored embedding (b's file has other vectors
        # under the same face ids 1..4)
        q = fs.embed([probe])[0]
        stored = fs.store.embeddings([m.face_id for m in res.matches])
        np.testing.assert_allclose([m.distance for m in res.matches], 1.0 - stored @ q, atol=1e-5)


def test_copies_of_a_file_are_reported_like_the_first_copy(fs, gallery_src, tmp_path):
    """Within one run a later copy of the same bytes is settled by its first copy: failed with the
    same reason when that one failed, skipped as the first copy's identity when it was enrolled."""
    g = tmp_path / "g"
    good = sorted((gallery_src / "Bill_Gates").iterdir())[0]
    for who in ("Alice", "Bob"):
        (g / who).mkdir(parents=True)
        (g / who / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
        shutil.copy(good, g / who / "good.webp")
    rep = fs.enroll_folder(g)
    assert rep.added == 1 and rep.identities == {"Alice"}
    assert sorted(f.source.split("/")[-2] for f in rep.failed) == ["Alice", "Bob"]
    assert len({f.reason for f in rep.failed}) == 1
    assert rep.skipped == [(str(g / "Bob" / "good.webp"), "Alice")]
    assert rep.elsewhere == [(str(g / "Bob" / "good.webp"), "Bob", "Alice")]


def test_a_name_in_another_unicode_form_is_not_another_identity(fs, gallery_src, tmp_path):
    nfd = "Jose\u0301_Ramos"  # how macOS writes the folder name
    g = tmp_path / "g"
    (g / nfd).mkdir(parents=True)
    for f in sorted((gallery_src / "Bill_Gates").iterdir())[:2]:
        shutil.copy(f, g / nfd / f.name)
    assert fs.enroll_folder(g).added == 2
    again = fs.enroll_folder(g)
    assert again.added == 0 and len(again.skipped) == 2 and again.elsewhere == []
    assert [i.name for i in fs.identities()] == ["Jos\u00e9_Ramos"]


def _zip_of(dest: Path, files: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return dest


def test_a_damaged_zip_member_fails_alone(fs, gallery_src, tmp_path):
    import zipfile

    good = sorted((gallery_src / "Bill_Gates").iterdir())[:2]
    bad = sorted((gallery_src / "Tony_Blair").iterdir())[0]
    z = _zip_of(tmp_path / "people.zip", {f"people/Bill_Gates/{f.name}": f.read_bytes() for f in good}
                | {f"people/Tony_Blair/{bad.name}": bad.read_bytes()})
    with zipfile.ZipFile(z) as zf:  # flip bytes in the middle of Tony_Blair's compressed data
        info = zf.getinfo(f"people/Tony_Blair/{bad.name}")
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(z.read_bytes())
    for k in range(info.compress_size // 2, info.compress_size // 2 + 8):
        raw[start + k] ^= 0xFF
    z.write_bytes(bytes(raw))
    rep = fs.enroll_folder(z)
    assert rep.added == 2 and rep.identities == {"Bill_Gates"}
    assert [f.source for f in rep.failed] == [f"people/Tony_Blair/{bad.name}"]
    assert "cannot read it from the zip" in rep.failed[0].reason


def test_sub_folders_are_reported_the_same_from_a_folder_and_a_zip(fs, gallery_src, tmp_path):
    """people/<identity>/<files> only: files one level deeper are reported, never enrolled as an
    identity named after the sub-folder; macOS's __MACOSX entries are left out."""
    a, b = sorted((gallery_src / "Bill_Gates").iterdir())[:2]
    c = sorted((gallery_src / "Colin_Powell").iterdir())[0]
    layout = {f"people/Bill_Gates/{a.name}": a.read_bytes(), f"people/Bill_Gates/2019/{b.name}": b.read_bytes(),
              f"people/Colin_Powell/{c.name}": c.read_bytes(), f"__MACOSX/people/Bill_Gates/._{a.name}": b"junk",
              "people/cover.webp": c.read_bytes()}
    folder = tmp_path / "dir"
    for name, data in layout.items():
        if not name.startswith("__MACOSX"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    from_dir = fs.enroll_folder(folder / "people")
    assert from_dir.added == 2 and from_dir.identities == {"Bill_Gates", "Colin_Powell"}
    assert sorted((f.source, f.reason.split(":")[0]) for f in from_dir.failed) == [
        (str(folder / "people/Bill_Gates/2019"), "a sub-folder of an identity folder"),
        (str(folder / "people/cover.webp"), "not in an identity folder")]
    from_zip = fs.enroll_folder(_zip_of(tmp_path / "people.zip", layout))
    assert from_zip.added == 0 and len(from_zip.skipped) == 2  # the same two files, already enrolled
    assert sorted((f.source, f.reason.split(":")[0]) for f in from_zip.failed) == [
        (f"people/Bill_Gates/2019/{b.name}", "in a sub-folder of an identity folder"),
        ("people/cover.webp", "not in an identity folder")]
    assert {i.name for i in fs.identities()} == {"Bill_Gates", "Colin_Powell"}
    # one person's zip with only sub-folders: nothing enrolled under the sub-folders' names
    only = _zip_of(tmp_path / "one.zip", {f"people/Bill_Gates/2019/{a.name}": a.read_bytes(),
                                          f"people/Bill_Gates/2020/{b.name}": b.read_bytes()})
    with pytest.raises(FaceSearchError, match="left out, e.g. people/Bill_Gates/20.*sub-folder"):
        fs.enroll_folder(only)
    assert {i.name for i in fs.identities()} == {"Bill_Gates", "Colin_Powell"}


def test_bad_files_are_reported_and_the_rest_enrolled(fs, gallery_src, tmp_path):
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    (g / "Bill_Gates" / "notes.txt").write_text("not an image")
    (g / "Bill_Gates" / "empty.jpg").write_bytes(b"")
    good = (g / "Tony_Blair" / "Tony_Blair_0001.webp").read_bytes()
    (g / "Tony_Blair" / "cut.webp").write_bytes(good[: len(good) // 2])
    bad_name = g / "bad\x07name"
    bad_name.mkdir()
    shutil.copy(gallery_src / "Hugo_Chavez" / "Hugo_Chavez_0004.webp", bad_name / "x.webp")
    rep = fs.enroll_folder(g)
    reasons = {Path(f.source).name: f.reason for f in rep.failed}
    assert set(reasons) == {"notes.txt", "empty.jpg", "cut.webp", "x.webp"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.txt"]
    assert "control characters" in reasons["x.webp"]
    assert rep.added == 2 * len(PEOPLE)
    assert fs.store.count_faces() == rep.added == fs.index().ntotal
    assert "bad\x07name" not in {i.name for i in fs.identities()}


def test_clear_errors_for_missing_and_empty_inputs(fs, tmp_path):
    with pytest.raises(FaceSearchError, match="no such file"):
        fs.enroll_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceSearchError, match="no identity folders"):
        fs.enroll_folder(tmp_path / "empty")
    with pytest.raises(InvalidIdentityError):
        fs.enroll_files("../../etc", [tmp_path / "x.jpg"])
    with pytest.raises(FaceSearchError, match="no such file"):
        fs.query(tmp_path / "missing.jpg")
    assert fs.store.count_faces() == 0


def test_remove_identity_removes_it_from_search(fs, gallery_src, tmp_path):
    fs.enroll_folder(gallery_with_holdout(gallery_src, tmp_path / "g", 2))
    n = fs.remove_identity("Bill_Gates")
    assert n == 2
    res = fs.query(gallery_src / "Bill_Gates" / "Bill_Gates_0001.webp", top_k=10)
    assert "Bill_Gates" not in {m.identity for m in res.matches}
    assert fs.index().ntotal == fs.store.count_faces() == 2 * (len(PEOPLE) - 1)
    fs.rename_identity("Tony_Blair", "Anthony_Blair")
    res = fs.query(gallery_src / "Tony_Blair" / "Tony_Blair_0001.webp")
    assert res.matches[0].identity == "Anthony_Blair"


def test_index_file_is_stamped_and_rebuilt_when_stale_or_corrupt(tmp_path, model_dir, gallery_src):
    home = tmp_path / "home"
    with FaceSearch.open(home=home, model=model_dir) as fs:
        fs.enroll_folder(gallery_with_holdout(gallery_src, tmp_path / "g", 2))
        probe = gallery_src / "Colin_Powell" / "Colin_Powell_0004.webp"
        want = fs.query(probe).to_dict()
    idx_file = home / "index.fsx"
    assert stat.S_IMODE(idx_file.stat().st_mode) == 0o600
    for damage in ("delete", "flip", "truncate", "garbage"):
        data = idx_file.read_bytes() if idx_file.exists() else None
        if damage == "delete":
            idx_file.unlink()
        elif damage == "flip":
            b = bytearray(data)
            b[-100] ^= 0xFF
            idx_file.write_bytes(bytes(b))
        elif damage == "truncate":
            idx_file.write_bytes(data[: len(data) // 2])
        else:
            idx_file.write_bytes(b"\x00" * 64)
        with FaceSearch.open(home=home) as fs:
            assert fs.query(probe).to_dict() == want, damage
            assert fs.index().ntotal == fs.store.count_faces()


def test_inference_copy_folds_every_batch_norm_and_embeds_the_same(model_dir):
    import torch

    from facesearch.model import encoder
    from facesearch.model.inference import inference_copy as _inference_copy

    model = encoder.load(model_dir).eval()
    fast = _inference_copy(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.trunk.modules()) > 40
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.trunk.modules())
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 112, 112), dtype=np.uint8)
    assert np.abs(encoder.embed(model, x) - encoder.embed(fast, x)).max() < 1e-5
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.trunk.modules())


def test_threads_querying_at_once_all_get_answers(tmp_path, model_dir, gallery_src):
    # each thread with its own handle; the first embedding of each builds its CPU inference copy, which
    # once used torch.fx tracing: that patches nn.Module.__call__ process-wide, and the other threads'
    # embeddings failed with "module is not installed as a submodule"
    import threading

    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir, device="cpu") as fs:
        fs.enroll_folder(g)
    probe = gallery_src / "Colin_Powell" / "Colin_Powell_0004.webp"
    errors = []
    start = threading.Barrier(4)

    def work():
        try:
            for _ in range(4):  # each new handle builds its inference copy on its first embedding
                with FaceSearch.open(home=home, device="cpu") as mine:
                    start.wait(30)  # all at the same moment
                    for _ in range(3):
                        assert mine.query(probe).matches
        except Exception as e:  # surfaced below
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_second_handle_sees_changes_of_the_first(tmp_path, model_dir, gallery_src):
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir) as a, FaceSearch.open(home=home) as b:
        assert b.query(g / "Bill_Gates" / "Bill_Gates_0001.webp").matches == []
        a.enroll_folder(g)
        res = b.query(g / "Bill_Gates" / "Bill_Gates_0001.webp")
        assert res.matches[0].identity == "Bill_Gates"
        a.remove_identity("Bill_Gates")
        assert "Bill_Gates" not in {m.identity for m in b.query(g / "Bill_Gates" / "Bill_Gates_0001.webp", 10).matches}


def test_another_model_is_refused_until_reindex(tmp_path, model_dir, other_model_dir, gallery_src):
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir) as fs:
        fs.enroll_folder(g)
    with pytest.raises(ModelMismatchError, match="reindex"):
        FaceSearch.open(home=home, model=other_model_dir)
    with FaceSearch.open(home=home, model=other_model_dir, strict=False) as fs:
        r = fs.reindex(model=other_model_dir)
        assert r["reembedded"] == 2 * len(PEOPLE)
    with FaceSearch.open(home=home) as fs:  # the gallery's model is now the other one
        assert fs.config.name == "test-other" and fs.threshold == pytest.approx(0.25)
        assert fs.query(g / "Hugo_Chavez" / "Hugo_Chavez_0001.webp").matches[0].distance == pytest.approx(0, abs=1e-5)
    with pytest.raises(ModelMismatchError):
        FaceSearch.open(home=home, model=model_dir)


def test_an_interrupted_reindex_leaves_the_gallery_as_it_was_and_is_finished_where_it_stopped(
        tmp_path, model_dir, other_model_dir, gallery_src):
    """A `reindex --model` killed half-way has staged half the new embeddings. The gallery still answers
    with its model and embeddings (other processes never see a mix), and running the reindex again
    embeds only the other half."""
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    probe = g / "Bill_Gates" / "Bill_Gates_0001.webp"
    with FaceSearch.open(home=home, model=model_dir) as fs:
        total = fs.enroll_folder(g).added
        before = fs.query(probe)
        revision = fs.store.revision()
    with FaceSearch.open(home=home, model=other_model_dir, strict=False) as fs:
        rec = fs.store.register_model(fs.model_key, fs.config.to_dict(), "x", str(other_model_dir))
        half = [c for chunk in fs.store.iter_crops() for c in chunk][: total // 2]
        embs = fs.embed_crops([images.prepare(images.decode(png), fs.config) for _, _, png, *_ in half])
        fs.store.stage_embeddings(rec.id, [(fid, e) for (fid, *_), e in zip(half, embs)])  # what the killed run did
    with FaceSearch.open(home=home) as fs:
        assert fs.store.revision() == revision and fs.info()["index"]["size"] == total
        assert fs.query(probe).matches == before.matches
    with FaceSearch.open(home=home, model=other_model_dir, strict=False) as fs:
        left, done = [], []
        assert fs.reindex(model=other_model_dir, progress=done.append, total=left.append)["reembedded"] == \
            total - total // 2
        assert left == [total - total // 2] and sum(done) == total - total // 2  # what the bar shows
        assert fs.store.count_staged(rec.id) == 0
    with FaceSearch.open(home=home) as fs:
        assert fs.config.name == "test-other" and fs.store.count_faces(fs.model_id) == total
        assert fs.query(probe).matches[0].distance == pytest.approx(0, abs=1e-5)


def test_a_reindex_to_the_gallery_s_own_model_embeds_every_face_again(tmp_path, model_dir, gallery_src):
    """`reindex --model` with the gallery's own model is how a change in preparing faces is picked up:
    every face is embedded again by this code, even where an interrupted earlier run (perhaps of another
    facesearch version) left embeddings staged; those are dropped, never switched in."""
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir) as fs:
        total = fs.enroll_folder(g).added
        ids = [fid for chunk in fs.store.iter_crops() for fid, *_ in chunk]
        good = fs.store.embeddings(ids)
        stale = np.roll(good, 1, axis=0)  # what an older run staged: other vectors
        fs.store.stage_embeddings(fs.model_id, list(zip(ids[: total // 3], stale)))
        left, done = [], []
        assert fs.reindex(model=model_dir, progress=done.append, total=left.append)["reembedded"] == total
        assert left == [total] and sum(done) == total and fs.store.count_staged(fs.model_id) == 0
        np.testing.assert_allclose(fs.store.embeddings(ids), good, atol=1e-5)


def test_a_removed_face_s_id_is_never_given_to_another(tmp_path, model_dir, gallery_src):
    """SQLite gives a new row the largest id present plus one: removing the last face and enrolling
    another gave the newcomer its id, so a script holding the old id (from a query) could remove or
    report another person's face, and a reindex pass could stage the old crop's embedding for it."""
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir) as fs:
        fs.enroll_folder(g)
        last_id, _, png, _, sha = [r for c in fs.store.iter_crops() for r in c][-1]  # a reindex read it
        emb = fs.embed_crops([images.prepare(images.decode(png), fs.config)])[0]
        fs.remove_faces([last_id])
        newcomer = next(p for p in sorted((gallery_src / "Hugo_Chavez").iterdir())
                        if not (g / "Hugo_Chavez" / p.name).exists())
        fs.enroll_files("Hugo_Chavez", [newcomer])
    with FaceSearch.open(home=home) as fs:  # and after a reopen
        fs.remove_faces([max(fid for c in fs.store.iter_crops() for fid, *_ in c)])
        fs.enroll_files("Hugo_Chavez", [newcomer])
        ids = [fid for c in fs.store.iter_crops() for fid, *_ in c]
        assert ids[-1] == last_id + 2 and last_id not in ids and last_id + 1 not in ids
        fs.store.stage_embeddings(fs.model_id, [(last_id, emb)], {last_id: sha})  # gone: left out
        assert fs.store.count_staged(fs.model_id) == 0


def test_a_gallery_mixed_by_an_older_reindex_names_the_one_to_run(tmp_path, model_dir, other_model_dir,
                                                                  gallery_src):
    """Earlier versions wrote new embeddings in place: a gallery they left half-done says which
    `reindex --model` embeds it all with one model again, and `info` still answers."""
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir) as fs:
        total = fs.enroll_folder(g).added
    with FaceSearch.open(home=home, model=other_model_dir, strict=False) as fs:
        rec = fs.store.register_model(fs.model_key, fs.config.to_dict(), "x", str(other_model_dir))
        half = [c for chunk in fs.store.iter_crops() for c in chunk][: total // 2]
        embs = fs.embed_crops([images.prepare(images.decode(png), fs.config) for _, _, png, *_ in half])
        fs.store.replace_embeddings(rec.id, [(fid, e) for (fid, *_), e in zip(half, embs)])
    with FaceSearch.open(home=home) as fs:
        hint = f"reindex --model {other_model_dir.resolve()}"
        with pytest.raises(ModelMismatchError, match="more than one model") as e:
            fs.query(g / "Bill_Gates" / "Bill_Gates_0001.webp")
        assert hint in str(e.value) and hint in fs.info()["index"]["error"]
    with FaceSearch.open(home=home, model=other_model_dir, strict=False) as fs:
        assert fs.reindex(model=other_model_dir)["reembedded"] == total - total // 2


def test_enrolling_while_reindex_switches_models_never_mixes_them(tmp_path, model_dir, other_model_dir,
                                                                 gallery_src):
    """Faces an enroll stores while `reindex --model` runs (the old model still the gallery's) are
    re-embedded before the switch; a handle still on the old model is told to open the gallery again."""
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    late = sorted((gallery_src / "Bill_Gates").iterdir())[2:4]
    later = sorted((gallery_src / "Colin_Powell").iterdir())[2:3]
    with FaceSearch.open(home=home, model=model_dir) as old:
        total = old.enroll_folder(g).added
        new = FaceSearch.open(home=home, model=other_model_dir, strict=False)
        added = []

        def meanwhile(n):  # after each re-embedded chunk, before the switch: an enroll's transaction lands
            if not added:
                rows = [("Bill_Gates", str(f), f"{i:064x}", e, None) for i, (f, e) in enumerate(zip(late, old.embed(late)))]
                added.append(len(old.store.add_faces(old.model_id, rows)[0]))

        r = new.reindex(model=other_model_dir, progress=meanwhile)
        assert added == [2] and r["reembedded"] == total + 2 and r["faces"] == total + 2
        assert new.store.count_faces(new.model_id) == new.store.count_faces() == total + 2
        new.close()
        with pytest.raises(ModelMismatchError, match="another process switched the gallery"):
            old.enroll_files("Colin_Powell", later)  # this long-lived handle notices before embedding
    with FaceSearch.open(home=home) as fs:  # the re-run the message asks for uses the new model
        assert fs.enroll_files("Colin_Powell", later).added == 1
        assert fs.store.count_faces(fs.model_id) == fs.store.count_faces() == total + 3


def test_a_batch_embedded_by_the_old_model_after_the_switch_is_refused(tmp_path, model_dir, other_model_dir,
                                                                        gallery_src):
    """The race itself: enroll has started with the old model when a reindex switches models between two
    of its batches. The later batch is refused inside its transaction; nothing of it is stored."""
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    files = sorted((gallery_src / "Bill_Gates").iterdir())[2:4]
    with FaceSearch.open(home=home, model=model_dir) as old:
        total = old.enroll_folder(g).added
        new = FaceSearch.open(home=home, model=other_model_dir, strict=False)

        def switch_after_first_batch(n):
            if new.store.active_model().id != new.model_id:
                new.reindex(model=other_model_dir)

        with pytest.raises(ModelMismatchError, match="nothing of this batch was stored"):
            old.enroll_items((("Bill_Gates", str(f), f) for f in files), switch_after_first_batch, batch_size=1)
        assert new.store.count_faces() == new.store.count_faces(new.model_id) == total + 1
        new.close()


def test_a_model_directory_replaced_in_place_is_named(tmp_path, model_dir, other_model_dir, gallery_src):
    """The gallery's model directory now holds other weights (retrained with --overwrite): opening it,
    plainly or to reindex, says the files changed and which reindex re-embeds with them."""
    mine = tmp_path / "my-model"
    shutil.copytree(model_dir, mine)
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=mine) as fs:
        total = fs.enroll_folder(g).added
    shutil.copy(other_model_dir / "weights.pt", mine / "weights.pt")
    hint = f"model files at {mine.resolve()} are now"
    with pytest.raises(ModelMismatchError, match="replaced in place") as e:
        FaceSearch.open(home=home)
    assert hint in str(e.value)
    with FaceSearch.open(home=home, strict=False) as fs:
        with pytest.raises(ModelMismatchError, match="replaced in place") as e:
            fs.reindex()
        assert hint in str(e.value) and f"reindex --model {mine.resolve()}" in str(e.value)
        assert fs.reindex(model=mine)["reembedded"] == total


def test_the_same_weights_with_mirror_averaging_are_another_model(tmp_path, model_dir, gallery_src):
    import shutil

    from facesearch.model.config import ModelConfig

    flipped = tmp_path / "flipped"
    shutil.copytree(model_dir, flipped)
    cfg = ModelConfig.load(flipped / "model.json")
    cfg.flip_average = True
    cfg.save(flipped / "model.json")
    home = tmp_path / "home"
    g = gallery_with_holdout(gallery_src, tmp_path / "g", 2)
    with FaceSearch.open(home=home, model=model_dir) as fs:
        fs.enroll_folder(g)
    # same weights, but probes would be embedded another way than the gallery: refused
    with pytest.raises(ModelMismatchError, match="reindex"):
        FaceSearch.open(home=home, model=flipped)
    with FaceSearch.open(home=home, model=flipped, strict=False) as fs:
        fs.reindex(model=flipped)
        assert fs.config.flip_average is True
        probe = g / "Hugo_Chavez" / "Hugo_Chavez_0001.webp"
        assert fs.query(probe).matches[0].distance == pytest.approx(0, abs=1e-5)
        # the mirror image of an enrolled face is now (up to resampling) that face
        from PIL import Image, ImageOps

        mirror = tmp_path / "mirror.png"
        ImageOps.mirror(Image.open(probe)).save(mirror)
        assert fs.query(mirror).matches[0].distance == pytest.approx(0, abs=1e-4)


def test_an_interrupted_enroll_loses_nothing_enrolled(tmp_path, model_dir, gallery_src):
    home = tmp_path / "home"
    files = sorted(gallery_src.rglob("*.webp"))

    def items():
        for i, f in enumerate(files):
            if i == 10:
                raise KeyboardInterrupt  # the user presses Ctrl-C part-way
            yield (f.parent.name, str(f), f)

    with FaceSearch.open(home=home, model=model_dir) as fs:
        with pytest.raises(KeyboardInterrupt):
            fs.enroll_items(items(), batch_size=4)
        stored = fs.store.count_faces()
    assert stored in (4, 8)  # whole batches only
    with FaceSearch.open(home=home) as fs:
        assert fs.index().ntotal == fs.store.count_faces() == stored
        rep = fs.enroll_items(((f.parent.name, str(f), f) for f in files))
        assert rep.added == len(files) - stored and len(rep.skipped) == stored


def test_two_processes_enrolling_at_once(tmp_path, model_dir, gallery_src):
    home = tmp_path / "home"
    halves = [tmp_path / "h1", tmp_path / "h2"]
    for i, h in enumerate(halves):  # PEOPLE[1] is in both: its images must end up enrolled once
        for p in sorted(set(PEOPLE[i::2]) | {PEOPLE[1]}):
            shutil.copytree(gallery_src / p, h / p)
    with FaceSearch.open(home=home, model=model_dir):
        pass  # create the database first, as a user's first command would
    code = textwrap.dedent("""
        import sys
        from facesearch.gallery.facade import FaceSearch
        with FaceSearch.open(home=sys.argv[1]) as fs:
            r = fs.enroll_folder(sys.argv[2])
            print(r.added)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), str(h)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for h in halves]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    added = sum(int(o.strip()) for o, _ in outs)
    assert added == 4 * len(PEOPLE)
    with FaceSearch.open(home=home) as fs:
        assert fs.store.count_faces() == fs.index().ntotal == added
        assert fs.query(gallery_src / "Serena_Williams" / "Serena_Williams_0003.webp").matches[0].distance < 1e-4


def test_info_reports_counts_and_model(fs, gallery_src, tmp_path):
    fs.enroll_folder(gallery_with_holdout(gallery_src, tmp_path / "g", 1))
    info = fs.info()
    assert info["faces"] == info["index"]["size"] == len(PEOPLE)
    assert info["identities"] == len(PEOPLE)
    assert info["model"]["threshold"] == pytest.approx(0.3)
    assert info["index"]["type"] == "Flat" and info["device"] == "cpu"
    json.dumps(info, default=str)


def test_query_many_batches_and_reports_bad_files(fs, gallery_src, tmp_path):
    fs.enroll_folder(gallery_with_holdout(gallery_src, tmp_path / "g", 3))
    probes = [gallery_src / p / f"{p}_0004.webp" for p in PEOPLE]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    res = fs.query_many(probes + [bad], top_k=2, batch_size=4)
    singles = [fs.query(p, top_k=2) for p in probes]
    for r, s in zip(res[:-1], singles):
        assert [m.identity for m in r.matches] == [m.identity for m in s.matches]
        np.testing.assert_allclose([m.distance for m in r.matches], [m.distance for m in s.matches], atol=1e-4)
    assert res[-1].source == str(bad) and "not an image" in res[-1].reason


_IMPORTS_PROBE = """
import json, sys
from facesearch.gallery.facade import FaceSearch
from facesearch import index
fs = FaceSearch.open(home=sys.argv[1])  # device "auto"
info = fs.info()
after_info = {m: m in sys.modules for m in ("torch", "torchvision", "torch._dynamo")}
again = fs.enroll_folder(sys.argv[3])
after_reenroll = {m: m in sys.modules for m in ("torch", "torchvision", "torch._dynamo")}
r = fs.query(sys.argv[2])
after_query = {m: m in sys.modules for m in ("torch", "torchvision", "torch._dynamo")}
print(json.dumps({"gpu_driver": index.gpu_driver_present(), "faces": info["faces"], "device": info["device"],
                  "after_info": after_info, "again": [again.added, len(again.skipped)],
                  "after_reenroll": after_reenroll,
                  "after_query": after_query, "top": [r.matches[0].identity, r.matches[0].distance]}))
"""


def test_commands_that_embed_nothing_import_no_torch(tmp_path, model_dir, gallery_src):
    """A fresh process (as each CLI call is): info, and enrolling a folder enrolled already, need no
    torch at all, and a query needs torch but not torchvision, whose import pulls in torch._dynamo
    (seconds per call). The answer is the same."""
    import json
    import subprocess
    import sys

    g = gallery_with_holdout(gallery_src, tmp_path / "g", 1)
    probe = next((gallery_src / "Tony_Blair").iterdir())
    with FaceSearch.open(home=tmp_path / "home", model=model_dir, device="cpu") as fs:
        added = fs.enroll_folder(g).added
        expected = fs.query(probe).matches[0]
    out = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, str(tmp_path / "home"), str(probe), str(g)],
                         capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["faces"] == added > 0 and seen["again"] == [0, added]
    if not seen["gpu_driver"]:  # where a GPU driver is present, torch is asked whether it sees the GPU
        assert seen["after_info"] == {"torch": False, "torchvision": False, "torch._dynamo": False}
        assert seen["after_reenroll"] == {"torch": False, "torchvision": False, "torch._dynamo": False}
        assert seen["device"] == "cpu"  # "auto" where no GPU driver is: known without asking torch
    assert seen["after_query"] == {"torch": True, "torchvision": False, "torch._dynamo": False}
    assert seen["top"][0] == expected.identity
    assert seen["top"][1] == pytest.approx(expected.distance, abs=1e-5)


def test_a_bad_threshold_or_far_is_a_facesearch_error(fs):
    from facesearch.errors import FaceSearchError, ThresholdError

    for kwargs in ({"far": 1e-4}, {"threshold": 3.0}, {"far": 1e-2, "threshold": 0.5}):
        with pytest.raises(ThresholdError) as e:
            fs.threshold_at(**kwargs)
        assert isinstance(e.value, (FaceSearchError, ValueError))


def test_a_far_the_calibration_could_not_measure_says_why(tmp_path, model_dir):
    """With 18 impostor pairs (a small fine-tune), no FAR under 1/18 can be measured: such a threshold is
    neither stored by calibration nor used if an older calibration stored it; asking says what it needs."""
    d = tmp_path / "small-cal"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "model.json").read_text())
    # as a model calibrated before facesearch checked this stored them: a FAR 1e-2 and 1e-3 from 18 pairs
    cfg["calibration"] = dict(cfg.get("calibration") or {}, impostor_pairs=18,
                              operating_points=[{"far": 1e-2, "threshold": 0.2, "tar": 0.5},
                                                {"far": 1e-3, "threshold": 0.2, "tar": 0.5}])
    (d / "model.json").write_text(json.dumps(cfg))
    from facesearch.errors import ThresholdError

    with FaceSearch.open(home=tmp_path / "home", model=d) as fs:
        with pytest.raises(ThresholdError, match="had 18 impostor pairs, and measuring a FAR of 0.001 needs at "
                                                  "least 1000"):
            fs.threshold_at(far=1e-3)
        assert fs.operating_points() == []
