#!/usr/bin/env bash
# The GPU session's steps, prepared on a CPU machine so that the device minutes go to measuring
# (issue: "Run the CUDA path on a GPU"). The lent machine is offline, runs Python 3.12 with its
# own torch (CUDA 13) and transformers 5.x; ledserve pins transformers 4.57 (optimum-onnx 0.1.0
# needs it), so the pinned packages travel as wheels in .gpuwheels/ (git-ignored) and load first.
#
#   bash benchmarks/gpu.sh pack      # here: wheels into .gpuwheels/ parts (prints the calls)
#   bash benchmarks/gpu.sh install   # there, first working call: wheels + ledserve, checked
#   bash benchmarks/gpu.sh test      # there: pytest -m gpu (the CUDA tests)
#   bash benchmarks/gpu.sh suite     # there: the whole suite, stopped short of a call's 10 min
#   bash benchmarks/gpu.sh bench [ARGS...]  # there: ledserve bench --device cuda (LED-base shape)
#
# `test`, `suite` and `bench` put .gpuwheels/site first on PYTHONPATH themselves; any other
# command there needs `export PYTHONPATH=$PWD/.gpuwheels/site`. Logs go to $OUT (the device
# tool's folder) when it is set, else to ./gpu-out.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.gpuwheels
out=${OUT:-gpu-out}

# The pinned packages the GPU image lacks or has in other versions (constraints.txt).
PINNED=(
  transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2
  optimum==2.1.0 optimum-onnx==0.1.0 onnx==1.23.2
  grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1
  grpcio-reflection==1.85.1 protobuf==7.36.2 pypdf==7.1.0
)

use_wheels() {
  export PYTHONPATH="$PWD/$wheels/site${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
}

case "${1:-}" in
  pack)
    tool=../shared/tools/gpu-wheels.sh
    [ -x "$tool" ] || { echo "error: $tool not found (run from a checkout beside shared/)" >&2; exit 2; }
    "$tool" "$wheels" "${PINNED[@]}"
    ;;
  install)
    (cd "$wheels" && sha256sum -c --quiet parts.sha256 && cat part-* | tar -xf - \
      && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target site whl/*.whl)
    use_wheels
    # Editable, as the README's install: setup.py generates the gRPC stubs with grpcio-tools.
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    python3 - <<'EOF'
import torch, onnxruntime as ort, transformers
import ledserve.engine.engine, ledserve.server.app  # the stubs and the package import
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("transformers", transformers.__version__)
assert "CUDAExecutionProvider" in ort.get_available_providers(), "no CUDA provider"
EOF
    ;;
  test)
    use_wheels
    mkdir -p "$out"
    python3 -m pytest -m gpu -v -rs 2>&1 | tee "$out/pytest-gpu.log"
    ;;
  suite)
    use_wheels
    mkdir -p "$out"
    timeout 540 python3 -m pytest -q 2>&1 | tee "$out/pytest-all.log"
    ;;
  bench)
    shift
    use_wheels
    mkdir -p "$out"
    python3 -m ledserve bench --device cuda --workdir bench-work --out "$out/bench" "$@" 2>&1 \
      | tee "$out/bench.log"
    ;;
  *)
    sed -n '2,15p' "$0"
    exit 2
    ;;
esac
