"""Decoding engine over the exported ONNX graphs (issue 3: not built yet)."""
