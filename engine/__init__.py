"""Decoding engine over the exported ONNX graphs: `ledserve.engine.engine.Engine` is the entry
point."""
