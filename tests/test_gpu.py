"""The CUDA provider: the validation of `ledserve export --validate --device cuda`, and the
engine's sessions there (the engine's parity grid runs on CUDA too: tests/test_engine.py)."""

import pytest
import torch

from ledserve.engine.artifacts import Artifacts
from ledserve.engine.runtime import Runtime
from ledserve.export.validate import session, validate

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_validation_on_cuda(checkpoint, exported, dtype):
    _, model = checkpoint
    report = validate(model, exported[dtype], dtype, device="cuda")
    assert report.passed, report


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_sessions_run_fp32_matmuls_in_fp32(exported):
    """ONNX Runtime's CUDA provider uses TF32 unless told not to; transformers' tokens need
    fp32 (ledserve/providers.py)."""
    runtime = Runtime(Artifacts.load(exported["fp32"]), "cuda")
    validating = session(exported["fp32"] / "decoder.onnx", "cuda")
    for created in (runtime.encoder, runtime.decoder, validating):
        assert created.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
