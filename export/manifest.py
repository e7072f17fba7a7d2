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
    EXTRACTIVE_QA,
    GENERATION,
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
    """The manifest of an export of the transformers `model`, an LED or a Longformer with a
    question-answering head (its `files` are filled when it is written)."""
    config = model.config
    extractive = config.model_type == "longformer"
    return Manifest(
        source=Source(
            model=source,
            revision=getattr(config, "_commit_hash", None),
            model_type=config.model_type,
        ),
        dtype=dtype,
        opset=opset,
        packages=package_versions(),
        graphs=graphs,
        validation=validation,
        **(_extractive_fields(config) if extractive else _generation_fields(config, generation)),
    )


def _generation_fields(config, generation) -> dict:
    return dict(
        task=GENERATION,
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
        tensor_names=TensorNames(
            past_key=PAST_KEY,
            past_value=PAST_VALUE,
            present_key=PRESENT_KEY,
            present_value=PRESENT_VALUE,
            cross_key=CROSS_KEY,
            cross_value=CROSS_VALUE,
        ),
    )


def _extractive_fields(config) -> dict:
    windows = config.attention_window
    windows = [windows] * config.num_hidden_layers if isinstance(windows, int) else windows
    return dict(
        task=EXTRACTIVE_QA,
        model=ModelShape(
            d_model=config.hidden_size,
            encoder_layers=config.num_hidden_layers,
            decoder_layers=0,
            encoder_attention_heads=config.num_attention_heads,
            decoder_attention_heads=0,
            head_dim=config.hidden_size // config.num_attention_heads,
            attention_window=tuple(windows),
            # RoBERTa's positions start after the padding index (two reserved embeddings)
            max_encoder_positions=config.max_position_embeddings - config.pad_token_id - 1,
            max_decoder_positions=0,
            vocab_size=config.vocab_size,
        ),
        special_tokens=SpecialTokens(
            pad=config.pad_token_id,
            bos=config.bos_token_id,
            eos=config.sep_token_id,
            decoder_start=None,
            forced_bos=None,
            forced_eos=None,
        ),
        input_template=None,
        generation_defaults={},
        tensor_names=None,
    )
