"""The package as a user gets it: the wheel builds without setuptools warnings, holds what facesearch
needs at run time (migrations, the built-in models, py.typed, the licence), and, installed away from the
checkout, runs ``--help`` and a real enroll and query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import LFW_ZIP, REPO, needs_lfw


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out)], capture_output=True, text=True, timeout=600, cwd=out)
    assert r.returncode == 0, r.stderr
    wheels = list(out.glob("facesearch-*.whl"))
    assert len(wheels) == 1
    return wheels[0], r.stdout + r.stderr


def test_the_wheel_builds_without_warnings_and_holds_what_runs(wheel):
    path, log = wheel
    assert "warn" not in log.lower(), log
    names = set(zipfile.ZipFile(path).namelist())
    for needed in ("facesearch/py.typed", "facesearch/model/builtin/sface/weights.pt",
                   "facesearch/model/builtin/sface/model.json", "facesearch/model/builtin/lfw-mobilenet/weights.pt",
                   "facesearch/_migrations/env.py", "facesearch/_migrations/versions/0001_initial.py",
                   "facesearch/_migrations/versions/0008_pgvector.py", "facesearch/serve/web/index.html",
                   "facesearch/serve/web/app.js", "facesearch/serve/web/style.css"):
        assert needed in names, needed
    assert not any(n.endswith(".onnx") for n in names)  # generated at first use, never shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)


@needs_lfw
def test_installed_away_from_the_checkout_it_enrolls_and_queries(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel[0]) as z:  # what pip does with a pure-Python wheel: unpack into site-packages
        z.extractall(site)
    deps = sysconfig.get_paths()["purelib"]  # torch, faiss, ... from this environment; facesearch is not there
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), deps]), PYTHONNOUSERSITE="1")
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()

    def fs(*args):
        return subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path[:0] = sys.argv[1].split(':'); "
                               "sys.argv = ['facesearch'] + sys.argv[2:]; from facesearch.cli import main; main()",
                               env["PYTHONPATH"], *args], capture_output=True, text=True, cwd=run_dir, env=env,
                              timeout=300)

    r = fs("--help")
    assert r.returncode == 0 and "enroll" in r.stdout and "query" in r.stdout, r.stderr
    where = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path[:0] = sys.argv[1].split(':'); "
                            "import facesearch; print(facesearch.__file__)", env["PYTHONPATH"]],
                           capture_output=True, text=True, cwd=run_dir, env=env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # not the checkout's copy
    people = tmp_path / "people"
    with zipfile.ZipFile(LFW_ZIP) as z:
        for name in ("Colin_Powell", "Tony_Blair"):
            (people / name).mkdir(parents=True)
            for i in (1, 2):
                (people / name / f"{i}.webp").write_bytes(z.read(f"lfw-deepfunneled-112/{name}/{name}_{i:04d}.webp"))
        (tmp_path / "probe.webp").write_bytes(z.read("lfw-deepfunneled-112/Tony_Blair/Tony_Blair_0005.webp"))
    home = str(tmp_path / "home")
    r = fs("--home", home, "--model", "lfw-mobilenet", "--device", "cpu", "enroll", str(people), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 4
    r = fs("--home", home, "--device", "cpu", "query", str(tmp_path / "probe.webp"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["matches"][0]["identity"] == "Tony_Blair"


@needs_lfw
def test_pip_install_into_a_fresh_venv_gives_a_working_facesearch_command(wheel, tmp_path):
    """`pip install` of the wheel into a new virtual environment: pip writes the `facesearch` script and the
    package data, and that script enrolls and queries. The dependencies (torch, FAISS, ...) are this
    environment's, seen through a .pth file, so nothing is downloaded; facesearch itself is the wheel's."""
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    # the borrowed packages, without this checkout's editable facesearch
    (Path(site) / "borrowed.pth").write_text(deps + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                        str(wheel[0])], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    exe = env_dir / "bin" / "facesearch"
    assert exe.exists()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import facesearch; print(facesearch.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=clean)
    assert where.stdout.startswith(site), where.stdout + where.stderr  # the installed copy, not the checkout
    people = tmp_path / "people"
    with zipfile.ZipFile(LFW_ZIP) as z:
        for name in ("Colin_Powell", "Tony_Blair"):
            (people / name).mkdir(parents=True)
            (people / name / "1.webp").write_bytes(z.read(f"lfw-deepfunneled-112/{name}/{name}_0001.webp"))
        (tmp_path / "probe.webp").write_bytes(z.read("lfw-deepfunneled-112/Colin_Powell/Colin_Powell_0002.webp"))
    run = dict(capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=300)
    r = subprocess.run([str(exe), "--home", str(tmp_path / "h"), "--model", "lfw-mobilenet", "--device", "cpu",
                        "enroll", str(people), "-q"], **run)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "--home", str(tmp_path / "h"), "query", str(tmp_path / "probe.webp"), "--json",
                        "-q"], **run)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["identity"] == "Colin_Powell", r.stderr


def test_faiss_gpu_build_swap_script(tmp_path):
    """Why there is no ``gpu`` extra, and what replaces it, on the real wheels from the registry: faiss-cpu
    and faiss-gpu-cu12 installed together break ``import faiss`` and ``facesearch info`` names the problem;
    ``scripts/use-faiss-gpu.sh`` leaves the GPU build alone, which imports and searches (on the CPU where
    there is no GPU), and ``--cpu`` brings faiss-cpu back."""
    from facesearch.index.faiss_install import GPU_BUILD

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = dict(os.environ, PYTHONPATH=str(REPO))  # faiss_install needs only the standard library

    def run(*args, check=True):
        r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
        assert not check or r.returncode == 0, r.stdout + r.stderr
        return r

    run(py, "-m", "pip", "install", "-q", "numpy", "faiss-cpu", GPU_BUILD)
    broken = run(py, "-c", "import faiss", check=False)
    assert broken.returncode != 0, "faiss-cpu and the GPU build together were expected to break `import faiss`"
    described = run(py, "-c", "import json; from facesearch.index.faiss_install import describe; "
                              "print(json.dumps(describe()))")
    d = json.loads(described.stdout)
    assert set(d["distributions"]) == {"faiss-cpu", "faiss-gpu-cu12"} and "overwrite" in d["problem"], d

    swapped = run("bash", "scripts/use-faiss-gpu.sh", py)
    assert "GPU build" in swapped.stdout, swapped.stdout
    search = ("import faiss, numpy as np; x = np.random.default_rng(0).random((500, 16), np.float32); "
              "i = faiss.index_factory(16, 'IVF8,Flat'); i.train(x); i.add(x); "
              "print(int(i.search(x[:1], 1)[1][0, 0]), hasattr(faiss, 'StandardGpuResources'))")
    assert run(py, "-c", search).stdout.split() == ["0", "True"]
    back = run("bash", "scripts/use-faiss-gpu.sh", "--cpu", py)
    assert "CPU build" in back.stdout, back.stdout
    assert run(py, "-c", search).stdout.split() == ["0", "False"]
