"""fp16 conversion of the exported graphs with onnxruntime's float16 tool.

Weights and activations become fp16; the named float outputs (logits, the encoder's hidden state)
stay fp32 through casts at the graph edge. Masked attention scores are *replaced* by the most
negative fp32 value, which the tool clamps to -65504: exp() of it is still 0, so clamping can never
turn a masked slot into an attended one.
"""

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16


def to_fp16(path: Path, keep_fp32: tuple[str, ...]) -> onnx.ModelProto:
    """Convert the fp32 graph saved at `path`; `keep_fp32` names float inputs/outputs kept fp32.

    Given a path, the tool infers shapes file to file, which also works past protobuf's 2 GiB.

    The tool's default op block list is kept (integer and index ops). Blocking Softmax too (fp32
    softmax, as transformers computes LED's encoder attention) left the encoder's relative error on
    the tiny test model unchanged (1.07e-3 both ways), so it runs in fp16 and costs no casts.
    """
    return convert_float_to_float16(str(path), keep_io_types=list(keep_fp32))
