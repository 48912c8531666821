#!/usr/bin/env bash
# Swap faiss-cpu for FAISS's GPU build in one environment (default: ./.venv), as `make setup-gpu` does.
#
# Why a script and not `pip install 'facesearch[gpu]'`: faiss-cpu and faiss-gpu-cu12 install the same
# `faiss` package, so an extra that adds the GPU build next to facesearch's faiss-cpu leaves a mix of both
# wheels' files and `import faiss` fails (see facesearch/index/faiss_install.py). The GPU wheel needs an
# NVIDIA driver >= R520 to use a GPU, and searches on the CPU without one.
#
#   scripts/use-faiss-gpu.sh [PYTHON]        # back to the CPU build: scripts/use-faiss-gpu.sh --cpu [PYTHON]
set -euo pipefail
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
PY=${1:-.venv/bin/python}
GPU_BUILD=$("$PY" -c "from facesearch.index.faiss_install import GPU_BUILD; print(GPU_BUILD)")
# every FAISS distribution out first: uninstalling one after the other was installed would delete shared files
"$PY" -m pip uninstall -q -y faiss-cpu faiss-gpu-cu12 faiss-gpu-cu11 faiss-gpu 2>/dev/null || true
if [ "$cpu" = 1 ]; then
  "$PY" -m pip install -q "faiss-cpu>=1.7.4"
else
  "$PY" -m pip install -q "$GPU_BUILD"
fi
"$PY" - <<'PY'
import faiss
from facesearch.index.faiss_install import describe
d = describe()
assert d["problem"] is None, d["problem"]
gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
print(f"faiss {faiss.__version__} from {', '.join(d['distributions'])}: "
      f"{'GPU build, ' + str(gpus) + ' GPU(s) visible' if d['gpu_build'] else 'CPU build'}")
PY
