"""The CUDA provider: the validation of `ledserve export --validate --device cuda`."""

import pytest
import torch

from ledserve.export.validate import validate

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_validation_on_cuda(checkpoint, exported, dtype):
    _, model = checkpoint
    report = validate(model, exported[dtype], dtype, device="cuda")
    assert report.passed, report
