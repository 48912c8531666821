"""``facesearch serve`` as clients see it: two real server processes on one gallery, on 127.0.0.1.

``secure`` needs keys and has small limits (1 MiB bodies, 5 requests a second per key, bursts of 20); ``open_`` runs
``--no-auth`` on loopback, on the same gallery. The built-in model (SFace) decides, so the identities
the service names can be checked; every JSON answer is checked against the CLI's schema and values.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import struct
import threading
import zlib
from pathlib import Path

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from tests import cdp, serving
from tests.conftest import ORIGINALS, PEOPLE, REPO, extract_people, needs_lfw

pytestmark = needs_lfw
SCHEMAS = REPO / "docs" / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def cli_json(home: Path, *args: str, code: int = 0):
    r = CliRunner().invoke(cli, ["--home", str(home), "--device", "cpu", *args], catch_exceptions=False)
    assert r.exit_code == code, r.output
    return json.loads(r.stdout) if "--json" in args else r.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A gallery of 6 LFW people (3 images each; images 4+ are probes), its keys, and two servers on it."""
    root = tmp_path_factory.mktemp("serve")
    src = extract_people(root / "src", {p: 4 for p in PEOPLE})
    gallery = root / "gallery"
    for p in PEOPLE:
        (gallery / p).mkdir(parents=True)
        for f in sorted((src / p).iterdir())[:3]:
            (gallery / p / f.name).write_bytes(f.read_bytes())
    home = root / "home"
    cli_json(home, "enroll", str(gallery), "--json")
    keys = {scope: cli_json(home, "keys", "create", "--scope", scope, "--name", f"test {scope}", "--json")
            for scope in ("read", "write", "admin")}
    keys["flood"] = cli_json(home, "keys", "create", "--scope", "read", "--json")
    keys["revoked"] = cli_json(home, "keys", "create", "--scope", "admin", "--json")
    cli_json(home, "keys", "revoke", str(keys["revoked"]["id"]), "--json")
    secure = serving.start(home, "-v", "--rate", "5", "--burst", "20", "--max-body-mb", "1", "--max-files", "4")
    try:
        open_ = serving.start(home, "--no-auth", "--rate", "100000", "--burst", "100000")
    except BaseException:
        secure.stop()
        raise
    yield {"home": home, "src": src, "keys": {k: v["key"] for k, v in keys.items()}, "key_ids": keys,
           "secure": secure, "open": open_, "root": root}
    for server in (secure, open_):  # both stopped before anything is checked: no server outlives the tests
        server.stop()
    for server in (secure, open_):  # SIGTERM: a graceful stop, nothing logged as an error
        assert server.proc.returncode in (0, -15), server.output()[-3000:]  # uvicorn re-raises SIGTERM at the end
        assert "Traceback" not in server.output(), server.output()[-3000:]
    assert "stopped: the batcher" in secure.output()  # (-v: said at INFO)


def client(site, which="secure", key: str | None = "read") -> httpx.Client:
    headers = {"Authorization": f"Bearer {site['keys'][key]}"} if key else {}
    return httpx.Client(base_url=site[which].url, headers=headers, timeout=60)


def probe(site, person: str, i: int = 4) -> Path:
    return site["src"] / person / f"{person}_{i:04d}.webp"


def upload(*paths: Path, field: str = "probe"):
    return [(field, (p.name, p.read_bytes(), "image/webp")) for p in paths]


def assert_error(r: httpx.Response, status: int, says: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    jsonschema.validate(body, schema("http-error"))
    assert body["status"] == status
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert says in body["error"], body
    return body


# ---- searching ------------------------------------------------------------------------------------
def test_query_answers_as_the_cli_does(site):
    probes = [probe(site, "Tony_Blair"), probe(site, "Serena_Williams")]
    with client(site) as c:
        r = c.post("/v1/query", params={"top_k": 3},
                   files=upload(*probes) + [("probe", ("notes.png", b"not an image at all", "image/png"))])
    assert r.status_code == 200, r.text
    got = r.json()
    jsonschema.validate(got, schema("query"))
    assert [e["probe"] for e in got] == ["upload:Tony_Blair_0004.webp", "upload:Serena_Williams_0004.webp",
                                         "upload:notes.png"]
    assert got[0]["identity"] == "Tony_Blair" and got[1]["identity"] == "Serena_Williams"
    assert "error" in got[2] and "image" in got[2]["error"]
    cli = cli_json(site["home"], "query", "--top-k", "3", "--json", *map(str, probes))
    for mine, theirs in zip(got, cli):  # the same distances, faces and decision as the command line's
        assert [m["face_id"] for m in mine["matches"]] == [m["face_id"] for m in theirs["matches"]]
        for a, b in zip(mine["matches"], theirs["matches"]):
            assert a["distance"] == pytest.approx(b["distance"], abs=1e-5)
        assert mine["decision"] == theirs["decision"] and mine["threshold"] == theirs["threshold"]


def test_query_with_detect_lists_every_face_of_a_photo(site):
    photo = next(p for p in sorted(ORIGINALS.rglob("*.jpg")))
    with client(site) as c:
        r = c.post("/v1/query", params={"detect": "true"}, files=[("probe", (photo.name, photo.read_bytes(),
                                                                              "image/jpeg"))])
    assert r.status_code == 200, r.text
    [entry] = r.json()
    jsonschema.validate([entry], schema("query"))
    assert entry["probe"] == f"upload:{photo.name}" and entry["faces"]
    box = entry["faces"][0]["face"]["box"]
    assert len(box) == 4 and box[2] >= 32 and box[3] >= 32


def test_verify_same_and_different_people(site):
    a, b, other = probe(site, "Colin_Powell"), site["src"] / "Colin_Powell" / "Colin_Powell_0001.webp", \
        probe(site, "Hugo_Chavez")
    with client(site) as c:
        same = c.post("/v1/verify", files=upload(a, field="a") + upload(b, field="b"))
        diff = c.post("/v1/verify", files=upload(a, field="a") + upload(other, field="b"))
        bad = c.post("/v1/verify", files=upload(a, field="a") + [("b", ("x.png", b"nope", "image/png"))])
    assert same.status_code == diff.status_code == 200
    for r in (same, diff):
        jsonschema.validate(r.json(), schema("verify"))
    assert same.json()["same"] and not diff.json()["same"]
    theirs = cli_json(site["home"], "verify", str(a), str(b), "--json")
    assert same.json()["distance"] == pytest.approx(theirs["distance"], abs=1e-5)
    assert_error(bad, 422, "image")


# ---- the gallery, from two processes ------------------------------------------------------------------
def test_an_enrollment_through_one_server_is_found_through_the_other(site):
    newcomer = "Jennifer_Aniston"
    src = extract_people(site["root"] / "more", {newcomer: 5})
    files = sorted((src / newcomer).iterdir())
    with client(site, key="write") as w, client(site, "open", key=None) as other:
        before = other.post("/v1/query", files=upload(files[4])).json()[0]
        assert before["identity"] is None or before["identity"] != newcomer
        r = w.post("/v1/enroll", data={"identity": newcomer}, files=upload(*files[:3], field="image"))
        assert r.status_code == 200, r.text
        jsonschema.validate(r.json(), schema("enroll"))
        assert r.json()["added"] == 3 and r.json()["identities"] == [newcomer]
        again = w.post("/v1/enroll", data={"identity": newcomer}, files=upload(files[0], field="image")).json()
        assert again["added"] == 0 and again["skipped"] == 1  # content enrolled already
        after = other.post("/v1/query", files=upload(files[4])).json()[0]
        assert after["identity"] == newcomer  # the other process saw the store change
        shown = other.get(f"/v1/identities/{newcomer}").json()
        jsonschema.validate(shown, schema("identities-show"))
        assert [f["source"] for f in shown["faces"]] == [f"upload:{f.name}" for f in files[:3]]

        assert w.patch(f"/v1/identities/{newcomer}", json={"to": "J_Aniston"}).json() == \
            {"renamed": newcomer, "to": "J_Aniston"}
        listed = other.get("/v1/identities").json()
        jsonschema.validate(listed, schema("identities-list"))
        assert "J_Aniston" in {row["identity"] for row in listed}
        face = shown["faces"][0]["face_id"]
        png = other.get(f"/v1/faces/{face}/image")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG")
        assert w.delete(f"/v1/faces/{face}").json() == {"removed": 1, "not_enrolled": 0}
        assert_error(w.delete(f"/v1/faces/{face}"), 404, "no face")
        assert w.delete("/v1/identities/J_Aniston").json() == {"removed": "J_Aniston", "faces": 2}
        gone = other.post("/v1/query", files=upload(files[4])).json()[0]
        assert all(m["identity"] != "J_Aniston" for m in gone["matches"])
        assert_error(other.get("/v1/identities/J_Aniston"), 404, "no identity")


def test_info_and_faces_list(site):
    with client(site) as c:
        info = c.get("/v1/info").json()
        faces = c.get("/v1/faces", params={"identity": "Bill_Gates"}).json()
    jsonschema.validate(info, schema("info"))
    assert info["faces"] >= 18
    assert [f["identity"] for f in faces] == ["Bill_Gates"] * 3


# ---- keys ------------------------------------------------------------------------------------------
def test_every_request_needs_a_valid_key_of_a_scope_that_allows_it(site):
    with client(site, key=None) as anon:
        assert_error(anon.get("/v1/identities"), 401, "API key is needed")
        assert anon.get("/v1/identities").headers["www-authenticate"] == "Bearer"
        assert_error(anon.get("/v1/identities", headers={"Authorization": "Bearer fsk_" + "x" * 43}), 401, "not valid")
        assert_error(anon.get("/v1/identities", headers={"X-API-Key": "wrong"}), 401, "not valid")
        assert_error(anon.get("/v1/info", headers={"X-API-Key": site["keys"]["revoked"]}), 401, "not valid")
        assert anon.get("/v1/identities", headers={"X-API-Key": site["keys"]["read"]}).status_code == 200
        assert anon.get("/healthz").json() == {"status": "ok"}  # health needs no key
        assert anon.get("/readyz").json()["ready"] is True
    with client(site, key="read") as reader:
        assert_error(reader.post("/v1/enroll", data={"identity": "X"},
                                 files=upload(probe(site, "Bill_Gates"), field="image")), 403, "scope is read")
        assert_error(reader.delete("/v1/identities/Bill_Gates"), 403, "needs write")
        assert_error(reader.get("/v1/keys"), 403, "needs admin")
        assert reader.get("/v1/whoami").json()["scope"] == "read"
    with client(site, key="write") as writer:
        assert_error(writer.post("/v1/keys", json={"scope": "admin"}), 403, "needs admin")
    with client(site, key="admin") as admin:
        made = admin.post("/v1/keys", json={"scope": "read", "name": "made over http"})
        assert made.status_code == 201 and made.json()["key"].startswith("fsk_")
        new = made.json()
        jsonschema.validate(new, schema("keys-create"))
        listed = admin.get("/v1/keys").json()
        jsonschema.validate(listed, schema("keys-list"))
        assert new["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
        with client(site, key=None) as anon:
            assert anon.get("/v1/info", headers={"X-API-Key": new["key"]}).status_code == 200
            revoked = admin.delete(f"/v1/keys/{new['id']}").json()
            jsonschema.validate(revoked, schema("keys-revoke"))
            assert revoked["active"] is False
            assert_error(anon.get("/v1/info", headers={"X-API-Key": new["key"]}), 401, "not valid")
    # only the hash is kept: the key itself is nowhere in the database file
    db = (site["home"] / "facesearch.db").read_bytes()
    assert new["key"].encode() not in db and new["key"][4:].encode() not in db


def test_no_auth_is_refused_off_loopback(site):
    r = CliRunner().invoke(cli, ["--home", str(site["home"]), "serve", "--no-auth", "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "only on a loopback address" in r.output


# ---- limits ------------------------------------------------------------------------------------------
def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 70-byte PNG that says it is 30000 x 30000 (900 megapixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    ihdr = bytes(png[12:16]) + struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(png)


def test_oversized_bodies_bombs_and_non_images_are_refused(site):
    with client(site) as c:
        big = c.post("/v1/query", files=[("probe", ("big.png", b"\0" * (1024 * 1024 + 1), "image/png"))])
        assert_error(big, 413, "larger than 1048576 bytes")
        many = c.post("/v1/query", files=upload(*[probe(site, "Bill_Gates")] * 5))
        assert_error(many, 413, "at most 4 files")
        text = c.post("/v1/query", files=[("probe", ("a.txt", b"hello", "text/plain"))])
        assert_error(text, 415, "upload images")
        bomb = c.post("/v1/query", files=[("probe", ("bomb.png", bomb_png(), "image/png"))])
        assert bomb.status_code == 200 and "pixels" in bomb.json()[0]["error"]
        pair = c.post("/v1/verify", files=[("a", ("bomb.png", bomb_png(), "image/png"))]
                      + upload(probe(site, "Bill_Gates"), field="b"))
        assert_error(pair, 422, "pixels")
        assert_error(c.post("/v1/query", params={"top_k": 0}, files=upload(probe(site, "Bill_Gates"))), 422, "top_k")
        assert_error(c.post("/v1/query", params={"far": 0.01, "threshold": 0.5},
                            files=upload(probe(site, "Bill_Gates"))), 400, "one of")
        assert_error(c.post("/v1/query"), 422, "probe")
        assert_error(c.get("/static/../../etc/passwd"), 404)
        assert_error(c.get("/static/index.html"), 404)  # only the page's own files, by name


def test_a_path_given_in_a_field_never_reaches_the_disk(site):
    before = {p for p in site["root"].rglob("*")}
    evil = probe(site, "Hugo_Chavez")
    with client(site, key="write") as w:
        r = w.post("/v1/enroll", data={"identity": "../../escaped"}, files=upload(evil, field="image"))
        assert_error(r, 422, "path separator")
        r = w.post("/v1/enroll", data={"identity": "Hugo_Chavez"},
                   files=[("image", ("../../../../tmp/x/../evil.webp", evil.read_bytes(), "image/webp"))])
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        fid = r.json()["face_ids"][0]
        assert w.get("/v1/faces?identity=Hugo_Chavez").json()[-1] == \
            {"face_id": fid, "identity": "Hugo_Chavez", "source": "upload:evil.webp"}
        assert w.delete(f"/v1/faces/{fid}").status_code == 200
    created = {p for p in site["root"].rglob("*")} - before  # only the gallery's own files changed
    assert all(site["home"] in p.parents for p in created), created
    assert not Path("/tmp/evil.webp").exists() and not (site["home"] / "escaped").exists()


def test_a_flood_past_the_rate_limit_is_slowed_down(site):
    codes, retry = [], set()
    with client(site, key="flood") as c:
        for _ in range(100):
            r = c.get("/v1/whoami")
            codes.append(r.status_code)
            if r.status_code == 429:
                retry.add(r.headers["retry-after"])
                assert_error(r, 429, "too many requests")
    assert codes[:15] == [200] * 15  # the burst (20) goes through
    assert codes.count(429) >= 25 and retry and all(int(s) >= 1 for s in retry)
    with client(site, key="read") as other:  # the limit is per key: another key is not slowed
        assert other.get("/v1/whoami").status_code == 200
        text = other.get("/metrics").text
    limited = [line for line in text.splitlines() if line.startswith("facesearch_rate_limited_total ")]
    assert limited and float(limited[0].split()[1]) >= 20


# ---- the service ---------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text(site):
    with client(site, "open", key=None) as c:
        c.post("/v1/query", files=upload(probe(site, "Bill_Gates")))
        r = c.get("/metrics")
        faces = c.get("/v1/info").json()["faces"]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['facesearch_requests_total{route="/v1/query",method="POST",status="200"}'] >= 1
    assert samples['facesearch_request_duration_seconds_count{route="/v1/query"}'] >= 1
    assert samples['facesearch_request_duration_seconds_bucket{route="/v1/query",le="+Inf"}'] == \
        samples['facesearch_request_duration_seconds_count{route="/v1/query"}']
    assert samples["facesearch_gallery_faces"] == faces and samples["facesearch_model_loaded"] == 1


def test_the_served_openapi_schema_is_the_committed_one(site):
    from facesearch.serve.app import openapi

    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    with client(site, key=None) as c:
        served = c.get("/openapi.json").json()
    assert served == openapi() == committed, "regenerate: facesearch serve --openapi > docs/openapi.json"
    assert {"/v1/query", "/v1/verify", "/v1/enroll", "/v1/identities", "/v1/faces/{face_id}", "/v1/info",
            "/healthz", "/readyz", "/metrics"} <= set(served["paths"])


def test_pages_have_security_headers_and_cors_is_off(site):
    with client(site, key=None) as c:
        page = c.get("/")
        api = c.get("/v1/whoami", headers={"Origin": "https://elsewhere.example", "X-API-Key": site["keys"]["read"]})
    assert page.status_code == 200 and "<title>facesearch</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert api.status_code == 200 and "access-control-allow-origin" not in api.headers
    assert api.headers["cache-control"] == "no-store"


def test_many_concurrent_clients_get_the_answers_one_client_gets(site):
    """32 clients at once on the batching server: every answer is the one a lone request gets, and the
    service did embed requests together (batches of more than one crop)."""
    people = PEOPLE * 2
    with client(site, "open", key=None) as c:
        alone = {p: c.post("/v1/query", files=upload(probe(site, p))).json()[0] for p in PEOPLE}
    answers, errors = [], []

    def worker(person: str):
        try:
            with client(site, "open", key=None) as c:
                for _ in range(4):
                    r = c.post("/v1/query", files=upload(probe(site, person)))
                    answers.append((person, r.status_code, r.json()[0]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(people[i % len(people)],)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(answers) == 128
    for person, status, got in answers:
        assert status == 200 and got["identity"] == alone[person]["identity"] == person
        assert [m["face_id"] for m in got["matches"]] == [m["face_id"] for m in alone[person]["matches"]]
        for a, b in zip(got["matches"], alone[person]["matches"]):
            assert a["distance"] == pytest.approx(b["distance"], abs=1e-4)
    with client(site, "open", key=None) as c:
        text = c.get("/metrics").text
    counts = {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("facesearch_embed_batch_size_bucket")}
    assert counts["+Inf"] > counts["1"], "no two requests were ever embedded together"


# ---- the web page, in a real browser ------------------------------------------------------------------
@pytest.mark.skipif(cdp.CHROMIUM is None, reason="no Chromium here (.ci/run installs it)")
def test_the_page_searches_a_dropped_photo_and_enrolls_and_lists(site, tmp_path):
    """Headless Chromium: choose a probe on the page, read the ranked identities and the decision off it;
    enroll through the form; see the identity in the list. Screenshots stay in tmp_path."""
    shots = Path(os.environ.get("FACESEARCH_SCREENSHOTS") or tmp_path)
    photo = probe(site, "George_W_Bush")
    with cdp.Browser() as b:
        b.goto(site["open"].url + "/")
        assert b.wait_for("document.getElementById('who').textContent", "whoami") == "no key needed (loopback)"
        b.eval("document.getElementById('probe-detect').checked = false")  # an aligned crop, as enrolled
        b.set_files("#probe", photo)
        b.wait_for("document.body.dataset.searched === '1'", "search results")
        ranked = b.eval("[...document.querySelectorAll('#results .face li')].map(li => li.dataset.identity)")
        verdict = b.eval("document.querySelector('#results .face h3').textContent")
        thumbs = b.wait_for("[...document.querySelectorAll('#results img')].every(i => i.complete && "
                            "i.naturalWidth > 0) && document.querySelectorAll('#results img').length",
                            "thumbnails")
        b.screenshot(shots / "serve-search.png")
        with client(site, "open", key=None) as c:
            api = c.post("/v1/query", params={"top_k": 5}, files=upload(photo)).json()[0]
        assert ranked == [m["identity"] for m in api["matches"]] and ranked[0] == "George_W_Bush"
        assert "match: George_W_Bush" in verdict and thumbs == len(ranked)

        group = next(p for p in sorted(ORIGINALS.rglob("*.jpg")))  # an ordinary photo: faces found and boxed
        b.eval("document.body.dataset.searched = ''; document.getElementById('probe-detect').checked = true")
        b.set_files("#probe", group)
        b.wait_for("document.body.dataset.searched === '1'", "detect results")
        with client(site, "open", key=None) as c:
            api = c.post("/v1/query", params={"top_k": 5, "detect": "true", "detect_fallback": "true"},
                         files=[("probe", (group.name, group.read_bytes(), "image/jpeg"))]).json()[0]
        assert b.eval("document.querySelectorAll('#results .face').length") == len(api["faces"]) >= 1
        assert b.eval("document.getElementById('probe-canvas').width") > 112  # the photo, drawn with its boxes
        b.screenshot(shots / "serve-detect.png")

        extra = extract_people(tmp_path / "new", {"Jennifer_Lopez": 2})
        b.goto(site["open"].url + "/#enroll")
        b.eval("document.getElementById('enroll-identity').value = 'Jennifer_Lopez';"
               "document.getElementById('enroll-detect').checked = false")
        b.set_files("#enroll-files", *sorted((extra / "Jennifer_Lopez").iterdir()))
        b.eval("document.getElementById('enroll-form').requestSubmit()")
        report = b.wait_for("document.getElementById('enroll-report').textContent", "enroll report")
        assert report.startswith("added 2, skipped 0, failed 0"), report
        b.screenshot(shots / "serve-enroll.png")

        b.goto(site["open"].url + "/#identities")
        rows = b.wait_for("[...document.querySelectorAll('#identity-rows tr')].map(tr => "
                          "[tr.dataset.identity, tr.children[1].textContent])", "identities")
        assert ["Jennifer_Lopez", "2"] in rows and ["Bill_Gates", "3"] in rows
        b.screenshot(shots / "serve-identities.png")
    with client(site, key="write") as w:
        assert w.delete("/v1/identities/Jennifer_Lopez").json()["faces"] == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl here")
def test_the_readme_curl_examples_work_as_written(site, tmp_path):
    """Every curl line of the README's serve section, run by bash against the no-auth server, in a folder
    holding the files they name; each answers 200 with JSON (or the PNG it writes), never an error."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### The HTTP service: `serve`"):]
    block = section[section.index("Each endpoint, with"):]
    block = block[block.index("```bash\n") + 8:]
    block = block[:block.index("\n```")]
    lines = [ln for ln in block.splitlines() if ln.startswith("curl")]
    assert len(lines) >= 20
    photos = sorted(next(d for d in sorted(ORIGINALS.iterdir()) if len(list(d.glob("*.jpg"))) >= 2).glob("*.jpg"))
    for name, src in {"probe.jpg": probe(site, "Tony_Blair"), "a.jpg": probe(site, "Tony_Blair"),
                      "b.jpg": site["src"] / "Tony_Blair" / "Tony_Blair_0002.webp", "group.jpg": photos[0],
                      "ann1.jpg": photos[0], "ann2.jpg": photos[1]}.items():
        shutil.copy(src, tmp_path / name)
    with client(site, "open", key=None) as c:  # the merge example needs a second name of Ann
        extra = extract_people(tmp_path / "x", {"Jennifer_Lopez": 1})
        c.post("/v1/enroll", data={"identity": "A. Smith"}, files=upload(*(extra / "Jennifer_Lopez").iterdir(),
                                                                         field="image"))
    env = dict(os.environ, K=site["keys"]["admin"], S=site["open"].url)
    face_id = key_id = None
    for line in lines:
        if face_id is not None:
            line = line.replace("/v1/faces/12", f"/v1/faces/{face_id}")
        if key_id is not None:
            line = line.replace("/v1/keys/4", f"/v1/keys/{key_id}")
        r = subprocess.run(["bash", "-c", line.replace("curl ", "curl -w '\\n%{http_code}\\n' ")], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
        out = [x for x in r.stdout.split("\n") if x.strip()]
        codes, body = [x for x in out if x.isdigit() and len(x) == 3], [x for x in out if not x.isdigit()]
        assert r.returncode == 0 and codes and all(c in ("200", "201") for c in codes), (line, r.stdout)
        if "-o " in line:
            assert (tmp_path / line.split("-o ")[1].split()[0]).read_bytes().startswith(b"\x89PNG")
            continue
        if "/metrics" in line:
            assert any(x.startswith("facesearch_requests_total") for x in body)
            continue
        for part in body:  # the healthz line prints two answers
            doc = json.loads(part)
            assert not (isinstance(doc, dict) and "error" in doc), (line, doc)
            if "/v1/enroll" in line:
                face_id = doc["face_ids"][0]
            if "/v1/keys" in line and "-d " in line:
                key_id = doc["id"]


def test_an_unexpected_error_is_a_json_500_and_a_lost_database_a_503(tmp_path, caplog):
    """In process (httpx over the real ASGI app and gallery), with a failure put into the gallery handle:
    the client gets one JSON object, the traceback goes to the server's log only."""
    import asyncio

    from sqlalchemy.exc import OperationalError

    from facesearch.gallery import FaceSearch
    from facesearch.serve import ServeConfig, Service, create_app

    def lost():
        raise OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    async def requests(fs, app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            fs.info = lambda: {}["no such key"]
            r = await c.get("/v1/info")
            assert_error(r, 500, "internal error")
            assert "KeyError" not in r.text and "no such key" not in r.text
            assert any(rec.exc_info and rec.exc_info[0] is KeyError for rec in caplog.records)
            fs.info = lost
            assert_error(await c.get("/v1/info"), 503, "database is not available")
            fs.store.revision = lost
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["store"] is False and r.json()["ready"] is False

    with FaceSearch.open(home=tmp_path / "home", device="cpu") as fs:
        svc = Service(fs, ServeConfig(auth=False, batching=False))
        try:
            asyncio.run(requests(fs, create_app(svc)))
        finally:
            svc.close()
