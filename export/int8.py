"""int8 conversion of the exported fp32 graphs with ONNX Runtime's dynamic quantization.

Only MatMuls with a constant weight are quantized: the weight once, to signed int8 with one scale
per tensor; activations per run (`DynamicQuantizeMatMul`). Attention products, softmax, layer
norms and the logits' bias stay fp32. A weight also read by another node (the tied embedding,
gathered for the input tokens) keeps its fp32 copy for that node. The encoder's global-attention
key and value weights stay fp32: its MatMuls take them as the first operand
(export/attention.py, global_attention).

Measured on the LED-base shape, 2-core AVX-512-VNNI CPU: per-channel and unsigned weights were no
faster and no closer to fp32 than signed per-tensor.
"""

import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic


def to_int8(path: Path) -> onnx.ModelProto:
    """Quantize the fp32 graph saved at `path` (weights beside it are read too)."""
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        output = Path(scratch) / path.name
        quantize_dynamic(
            path,
            output,
            op_types_to_quantize=["MatMul"],
            per_channel=False,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,  # any size; save_onnx decides the final layout
            extra_options={"MatMulConstBOnly": True},
        )
        return onnx.load(str(output))
