"""What the exporter records in an artifacts folder's manifest (`ledserve.manifest` defines it):
the source, package versions, graph signatures, the model's dimensions and special tokens, the
input template and default generation options, and the validation results."""

from importlib.metadata import PackageNotFoundError, version

import onnx

from ledserve.export.graphs import (
    CROSS_KEY,
    CROSS_VALUE,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
)
from ledserve.manifest import (
    INPUT_TEMPLATE,
    Graph,
    Manifest,
    ModelShape,
    Source,
    SpecialTokens,
    Tensor,
    TensorNames,
    Validation,
)

PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime-gpu")


def package_versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def graph_signature(model: onnx.ModelProto, file: str) -> Graph:
    """Inputs and outputs: name, element type, and shape (symbolic axes by name)."""

    def describe(value) -> Tensor:
        tensor = value.type.tensor_type
        return Tensor(
            name=value.name,
            dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            shape=tuple(d.dim_param or d.dim_value for d in tensor.shape.dim),
        )

    return Graph(
        file=file,
        inputs=tuple(describe(v) for v in model.graph.input),
        outputs=tuple(describe(v) for v in model.graph.output),
    )


def build_manifest(
    source: str,
    dtype: str,
    opset: int,
    model,
    generation,
    graphs: dict[str, Graph],
    validation: Validation | None,
) -> Manifest:
    """The manifest of an export of the transformers `model` (its `files` are filled when it is
    written)."""
    config = model.config
    return Manifest(
        source=Source(
            model=source,
            revision=getattr(config, "_commit_hash", None),
            model_type=config.model_type,
        ),
        dtype=dtype,
        opset=opset,
        packages=package_versions(),
        model=ModelShape(
            d_model=config.d_model,
            encoder_layers=config.encoder_layers,
            decoder_layers=config.decoder_layers,
            encoder_attention_heads=config.encoder_attention_heads,
            decoder_attention_heads=config.decoder_attention_heads,
            head_dim=config.d_model // config.decoder_attention_heads,
            attention_window=tuple(config.attention_window),
            max_encoder_positions=config.max_encoder_position_embeddings,
            max_decoder_positions=config.max_decoder_position_embeddings,
            vocab_size=config.vocab_size,
        ),
        special_tokens=SpecialTokens(
            pad=config.pad_token_id,
            bos=config.bos_token_id,
            eos=config.eos_token_id,
            decoder_start=config.decoder_start_token_id,
            forced_bos=generation.forced_bos_token_id,
            forced_eos=generation.forced_eos_token_id,
        ),
        input_template=INPUT_TEMPLATE,
        generation_defaults=generation.to_diff_dict(),
        graphs=graphs,
        tensor_names=TensorNames(
            past_key=PAST_KEY,
            past_value=PAST_VALUE,
            present_key=PRESENT_KEY,
            present_value=PRESENT_VALUE,
            cross_key=CROSS_KEY,
            cross_value=CROSS_VALUE,
        ),
        validation=validation,
    )
