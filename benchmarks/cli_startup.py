#!/usr/bin/env python
"""Wall time of one CLI call, start to exit, against a hand-rolled torchvision + FAISS query script.

    python -m benchmarks.cli_startup [--rounds 5] [--people 20]

Every ``facesearch`` command is a fresh process, so what a user waits for is mostly imports and
loading, not the search. Set-up enrolls ``--people`` LFW identities (3 images each) into a temporary
home with the built-in model. Then, in rounds (the commands take turns, so machine noise hits all
of them alike), each of these runs in a fresh process:

* ``facesearch info --json``, ``facesearch identities list``: commands that embed nothing;
* ``facesearch query PROBE --json``, ``facesearch verify A B --json``;
* **baseline**, the script a user writes by hand: import torch, torchvision, faiss; build the same
  network with torchvision's MobileNetV2, load the same weights, embed the probe, search the same
  gallery embeddings in a ``faiss.IndexFlatIP``. It must name the same identity as ``facesearch query``;
* **floor**: ``python -c "import torch"``, what any torch program pays before its first line.

Writes benchmarks/results/cli-startup-<machine>.json and prints the median, the minimum and the ratio of
each median to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LFW_ZIP, machine, ratio, write_result  # noqa: E402

BASELINE = r"""
import sys
import faiss, numpy as np, torch, torchvision
from PIL import Image
from facesearch.model.config import ModelConfig
from facesearch.model.encoder import Encoder

model_dir, gallery, names, probe = sys.argv[1:5]
cfg = ModelConfig.load(model_dir + "/model.json")
net = Encoder(cfg, torchvision.models.mobilenet_v2(weights=None))
net.load_state_dict(torch.load(model_dir + "/weights.pt", map_location="cpu", weights_only=True))
net.eval()
index = faiss.IndexFlatIP(cfg.embedding_dim)
index.add(np.load(gallery))
img = np.asarray(Image.open(probe).convert("RGB").resize((cfg.input_size, cfg.input_size)))
with torch.inference_mode():
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    e = net(x).numpy()
sims, ids = index.search(e, 5)
print(open(names).read().split("\n")[ids[0][0]], 1 - sims[0][0])
"""


def _extract(dest: Path, people: int, per_person: int = 3) -> tuple[Path, list[Path]]:
    """The first ``people`` LFW people with at least ``per_person + 1`` images: ``per_person`` into an
    identity folder, the next one kept aside as a probe."""
    with zipfile.ZipFile(LFW_ZIP) as z:
        by_person: dict[str, list[str]] = {}
        for n in sorted(z.namelist()):
            parts = n.split("/")
            if len(parts) == 3 and parts[2]:
                by_person.setdefault(parts[1], []).append(n)
        chosen = [p for p, files in sorted(by_person.items()) if len(files) > per_person][:people]
        probes = []
        for p in chosen:
            (dest / "gallery" / p).mkdir(parents=True)
            for n in by_person[p][:per_person]:
                (dest / "gallery" / p / Path(n).name).write_bytes(z.read(n))
            probe = dest / "probes" / Path(by_person[p][per_person]).name
            probe.parent.mkdir(exist_ok=True)
            probe.write_bytes(z.read(by_person[p][per_person]))
            probes.append(probe)
    return dest / "gallery", probes


def _timed(argv: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not LFW_ZIP.exists():
        raise SystemExit(f"LFW pack not found at {LFW_ZIP}")
    from facesearch.gallery.facade import FaceSearch, builtin_model_dir

    info = machine()
    fs_bin = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    with tempfile.TemporaryDirectory(prefix="fs-cli-startup-") as tmp:
        tmp = Path(tmp)
        gallery, probes = _extract(tmp / "data", args.people)
        home = tmp / "home"
        with FaceSearch.open(home=home, device="cpu") as fs:
            enrolled = fs.enroll_folder(gallery).added
            names, emb = _gallery_embeddings(fs)
        np.save(tmp / "gallery.npy", emb)
        (tmp / "names.txt").write_text("\n".join(names))
        probe = probes[0]
        same_person = sorted((gallery / sorted(os.listdir(gallery))[0]).iterdir())[0]
        env = dict(os.environ, FACESEARCH_HOME=str(home))
        commands = {
            "facesearch info --json": [fs_bin, "info", "--json"],
            "facesearch identities list": [fs_bin, "identities", "list"],
            "facesearch query PROBE --json": [fs_bin, "query", str(probe), "--json"],
            "facesearch verify A B --json": [fs_bin, "verify", str(probe), str(same_person), "--json"],
            "baseline: hand-rolled query": [sys.executable, "-c", BASELINE, str(builtin_model_dir()),
                                            str(tmp / "gallery.npy"), str(tmp / "names.txt"), str(probe)],
            "floor: python -c 'import torch'": [sys.executable, "-c", "import torch"],
        }
        # the hand-rolled script answers like facesearch does (same model, same gallery)
        _, q = _timed(commands["facesearch query PROBE --json"], env)
        _, b = _timed(commands["baseline: hand-rolled query"], env)
        ours, theirs = json.loads(q)[0]["matches"][0], b.split()
        assert ours["identity"] == theirs[0], (ours, theirs)
        assert abs(ours["distance"] - float(theirs[1])) < 0.05, (ours, theirs)
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(_timed(cmd, env)[0])
    base = float(np.median(times["baseline: hand-rolled query"]))
    rows = [{"command": k, "median_s": round(float(np.median(v)), 3), "min_s": round(min(v), 3),
             "ratio_vs_baseline": ratio(float(np.median(v)), base), "runs_s": [round(x, 3) for x in v]}
            for k, v in times.items()]
    res = {"benchmark": "CLI call wall time, fresh process each, against a hand-rolled torchvision + FAISS query",
           "gallery": {"people": args.people, "faces": enrolled, "model": "builtin:default"},
           "rounds": args.rounds, "results": rows, "machine": info,
           "note": "medians over rounds in which the commands take turns; the baseline answers the same "
                   "identity as facesearch query (checked in the run)"}
    out = write_result(res, args.out, "cli-startup")
    print(f"\n{enrolled} faces of {args.people} people, {args.rounds} rounds, fresh process per call")
    print(f"{'command':36s} {'median s':>9s} {'min s':>7s} {'vs baseline':>12s}")
    for r in rows:
        print(f"{r['command']:36s} {r['median_s']:9.2f} {r['min_s']:7.2f} {r['ratio_vs_baseline']:11.2f}x")
    print(f"wrote {out}")
    return 0


def _gallery_embeddings(fs) -> tuple[list[str], np.ndarray]:
    """Identity name and stored embedding of every enrolled face, in one order."""
    ids, vectors = zip(*fs.store.iter_embeddings(fs.model_id))
    ids = np.concatenate(ids)
    who = fs.store.face_info(ids)
    return [who[int(i)].identity for i in ids], np.concatenate(vectors)


if __name__ == "__main__":
    sys.exit(main())
