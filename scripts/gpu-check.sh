#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (issue 22; docs/benchmarks.md "GPU"): install vlkit and its
# plugins offline into the machine's own Python (its torch, triton and transformers), run the CUDA tests,
# then `vlkit bench gpu` (W1 and the 7B-shaped LLaVA against HF generate batched, bf16). Everything it
# writes goes to $OUT (the device tool brings that folder back), default /tmp/vlkit-gpu.
#
#   scripts/gpu-check.sh              # about 5 minutes on an H100
#   VLKIT_GPU_BENCH=0 scripts/gpu-check.sh    # tests only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vlkit-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} | tee "$OUT/device.txt"
# Wheels carried in .whl/ (the image's transformers may be older than vlkit's minimum): prepare them here with
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl transformers==5.25.0 huggingface_hub==2.5.0
# and name .whl in the device tool's carry.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# no network there: no dependencies, no build isolation (setuptools is in the image)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . $(ls -d plugins/*/) 2>&1 | tail -3
"$PY" - <<'PY' | tee -a "$OUT/device.txt" || exit 1
import torch, triton, transformers, vlkit
from vlkit.contract.registry import get_registry
print("vlkit", vlkit.__version__, "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__,
      "transformers", transformers.__version__, "device", torch.cuda.get_device_name())
print("families", sorted(f.name for f in get_registry().families()))
PY
rc=0
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -x tests/engine/test_cuda.py 2>&1 | tee "$OUT/gpu-tests.log" || rc=1
if [ "${VLKIT_GPU_BENCH:-1}" = 1 ]; then
  timeout 480 "$PY" -m vlkit.bench.cli gpu --output-dir "$OUT" 2>&1 | tee "$OUT/bench.log" || rc=1
fi
exit $rc
