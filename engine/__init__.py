"""Decoding engine over the exported ONNX graphs: `engine.engine.Engine` is the entry point."""
