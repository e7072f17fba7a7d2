"""LED checkpoint -> ONNX artifacts (encoder, decoder with KV cache, fp32/fp16, manifest)."""
