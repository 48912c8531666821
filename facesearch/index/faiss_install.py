"""Which FAISS build is installed, read from the package metadata (faiss itself is not imported).

FAISS ships on PyPI as several distributions that all install the same ``faiss`` package: ``faiss-cpu``
(facesearch's dependency) and the GPU builds ``faiss-gpu-cu12``, ``faiss-gpu-cu11`` and the older
``faiss-gpu``. Two of them in one environment overwrite each other's files, and ``import faiss`` then fails
(measured with faiss-cpu 1.15.1 and faiss-gpu-cu12 1.14.1.post1 installed together: ``AttributeError:
module 'faiss._swigfaiss' has no attribute 'delete_GpuResourcesVector'``). That is why facesearch has no
``gpu`` extra (an extra can only add a package, never remove faiss-cpu): ``make setup-gpu`` (or
``scripts/use-faiss-gpu.sh``) swaps one for the other, and ``facesearch info`` reports what is there.
"""

from __future__ import annotations

#: the distributions that install the ``faiss`` package, CPU build first
DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")
#: the GPU build ``make setup-gpu`` installs (CUDA 12; its wheel also imports and searches on a machine
#: without a GPU, on the CPU)
GPU_BUILD = "faiss-gpu-cu12==1.14.1.post1"


def installed() -> dict[str, str]:
    """``{distribution: version}`` of the FAISS distributions installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in DISTRIBUTIONS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def describe() -> dict:
    """``facesearch info``'s ``faiss``: the distributions, whether one is a GPU build, and the problem when
    the environment holds none or several."""
    found = installed()
    problem = None
    if not found:
        problem = "no FAISS distribution is installed: pip install faiss-cpu"
    elif len(found) > 1:
        problem = (f"{' and '.join(sorted(found))} are installed together and overwrite each other's files "
                   f"(import faiss fails or loads a mix): keep one, e.g. pip uninstall -y "
                   f"{' '.join(sorted(found))} && pip install {GPU_BUILD if any('gpu' in n for n in found) else 'faiss-cpu'}")
    return {"distributions": found, "gpu_build": any("gpu" in n for n in found), "problem": problem}
