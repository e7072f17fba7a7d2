"""ONNX Runtime execution providers by device name, for every session ledserve opens (the
engine's and the exporter's validation). Standard library only, like manifest.py.

CUDA: ONNX Runtime runs fp32 MatMuls in TF32 by default (`use_tf32` is on unless set), which
keeps 10 of fp32's 23 mantissa bits; PyTorch does not (`torch.backends.cuda.matmul.allow_tf32`
is off by default), so fp32 artifacts would not give transformers' tokens. Off here.
"""

PROVIDERS = {
    "cpu": [("CPUExecutionProvider", {})],
    "cuda": [("CUDAExecutionProvider", {"use_tf32": "0"})],
}


def provider_name(device: str) -> str:
    """The provider a session on `device` must run on first (no silent fallback)."""
    return PROVIDERS[device][0][0]
