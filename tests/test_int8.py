"""int8 artifacts (dynamically quantized MatMul weights): the export, its validation mode (which
must pass on the tiny random models and fail on a damaged graph), and the engine on them. Answer
quality is tested on the trained demo model (test_demo_model.py)."""

import shutil

import numpy as np
import onnx
from onnx import numpy_helper

from ledserve.engine.engine import Engine
from ledserve.export.validate import validate
from ledserve.manifest import Manifest


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_int8_artifacts_quantize_the_weight_matmuls(exported):
    manifest = Manifest.read(exported["int8"])
    assert manifest.dtype == "int8"
    for graph in ("encoder", "decoder"):
        ops = _ops(exported["int8"] / f"{graph}.onnx")
        assert "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops, ops
        weights = onnx.load(str(exported["int8"] / f"{graph}.onnx")).graph.initializer
        assert any(t.data_type == onnx.TensorProto.INT8 for t in weights)
    # The fused local attention stays a float kernel.
    assert "MultiHeadAttention" in _ops(exported["int8"] / "encoder.onnx")


def test_int8_validation_passes_on_random_models(checkpoint, exported):
    _, model = checkpoint
    report = validate(model, exported["int8"], "int8")
    worst = max(c.rms_rel for c in report.checks)
    print(f"int8 worst rms_rel {worst:.3f}, argmax agreement {report.argmax_agreement:.3f}")
    assert report.passed, report
    assert report.criterion == "rms_rel <= 0.25"
    assert 0.0 < worst  # quantization changes something: the metric is live
    assert report.argmax_agreement > 0.5


def test_int8_validation_fails_on_a_damaged_weight(checkpoint, exported, tmp_path):
    """A quantized weight's scale off by 2x (a realistic conversion bug) fails the tolerance."""
    _, model = checkpoint
    folder = tmp_path / "damaged"
    shutil.copytree(exported["int8"], folder)
    path = folder / "encoder.onnx"
    graph = onnx.load(str(path))
    scales = [t for t in graph.graph.initializer if t.name.endswith("_scale")]
    assert scales
    for tensor in scales:  # every weight of the encoder: the error reaches every output
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2, tensor.name))
    onnx.save(graph, str(path))
    report = validate(model, folder, "int8")
    assert not report.passed
    damaged = max(c.rms_rel for c in report.checks if c.graph == "encoder")
    print(f"damaged int8 encoder: worst rms_rel {damaged:.3f}")
    assert damaged > 0.25


def test_engine_serves_int8_artifacts(checkpoint, exported, rng):
    """Same API, batched with padding; tokens mostly equal to fp32's on a random model."""
    engine = Engine.from_artifacts(exported["int8"], device="cpu")
    reference = Engine.from_artifacts(exported["fp32"], device="cpu")
    try:
        assert engine.manifest.dtype == "int8"
        vocab = engine.vocab_size
        rows = [rng.integers(5, vocab, int(n)).tolist() for n in rng.integers(3, 40, 4)]
        got = engine.generate(rows, max_new_tokens=12, min_new_tokens=12)
        want = reference.generate(rows, max_new_tokens=12, min_new_tokens=12)
        assert [len(r) for r in got] == [len(r) for r in want]
        pairs = zip(got, want, strict=True)
        same = np.mean([a == b for g, w in pairs for a, b in zip(g, w, strict=True)])
        print(f"int8 tokens equal to fp32 at {same:.2f} of positions (random tiny model)")
        assert same > 0.3  # the decoder start token alone is 1/13
    finally:
        engine.stop()
        reference.stop()
