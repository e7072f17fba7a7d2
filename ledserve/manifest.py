"""manifest.json, the contract of an artifacts folder, typed once: the exporter writes it; the
engine, the server and the benchmarks read it and trust it for file names, tensor-name templates,
model dimensions, special tokens, the input template and default generation options.

Standard library only, so that every part of ledserve can import it.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

FORMAT_VERSION = 2  # 2: decoder rows name their request (request_rows, row_slots)
"""Bumped by any change a reader of an older version would misread (a graph contract, a field)."""
MANIFEST = "manifest.json"
INPUT_TEMPLATE = "question: {question} context: {context}"
"""The exporter's input template (the fine-tuned QA model's, and the demo model's training)."""


class ManifestError(Exception):
    """An artifacts folder without a readable manifest of this format, or whose files differ."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Source:
    model: str
    """The hub id or folder the exporter loaded."""
    revision: str | None
    """The hub commit, when loaded from the hub."""
    model_type: str


@dataclass(frozen=True)
class ModelShape:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    head_dim: int
    attention_window: tuple[int, ...]
    """Per encoder layer: the two-sided window (transformers' `attention_window`)."""
    max_encoder_positions: int
    max_decoder_positions: int
    vocab_size: int


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    bos: int
    eos: int
    decoder_start: int
    forced_bos: int | None
    forced_eos: int | None


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    """numpy's name of the element type: float32, float16, int64."""
    shape: tuple[int | str, ...]
    """A symbolic axis by name, a fixed one by size."""


@dataclass(frozen=True)
class Graph:
    file: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class TensorNames:
    """Per-layer tensor-name templates of the graphs (`{layer}` is replaced)."""

    past_key: str
    past_value: str
    present_key: str
    present_value: str
    cross_key: str
    cross_value: str

    def name(self, kind: str, layer: int) -> str:
        """kind: past_key, past_value, present_key, present_value, cross_key, cross_value."""
        return getattr(self, kind).format(layer=layer)


@dataclass(frozen=True)
class Check:
    """One output of one graph on one validation case against transformers."""

    graph: str
    output: str
    case: str
    max_abs: float
    max_rel: float
    passed: bool
    rms_rel: float = 0.0
    """root-mean-square error relative to the reference's (0.0 in manifests that predate it)."""


@dataclass(frozen=True)
class Validation:
    seed: int
    device: str
    dtype: str
    criterion: str
    """e.g. "max_abs <= 0.0001"."""
    passed: bool
    checks: tuple[Check, ...]
    argmax_agreement: float | None = None
    """Share of teacher-forced decoder steps whose logits' argmax equals transformers' (None in
    manifests that predate it)."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    source: Source
    dtype: str
    """fp32, fp16 (of the weights and of every float tensor but logits and hidden states) or int8
    (of the MatMul weights)."""
    opset: int
    packages: dict[str, str | None]
    """Versions of the packages that made the artifacts."""
    model: ModelShape
    special_tokens: SpecialTokens
    input_template: str
    generation_defaults: dict
    """The checkpoint's generation_config, as transformers' `to_diff_dict` gives it."""
    graphs: dict[str, Graph]
    """"encoder" and "decoder"."""
    tensor_names: TensorNames
    validation: Validation | None
    """None when the export ran without --validate."""
    files: dict[str, FileEntry] = field(default_factory=dict)
    """Every file of the folder but the manifest (filled by `write`)."""
    format_version: int = FORMAT_VERSION

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        body = asdict(self)
        return {"format_version": body.pop("format_version"), **body}

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Raises KeyError or TypeError for a missing or unknown field."""
        validation = data["validation"]
        if validation is not None:
            checks = tuple(Check(**c) for c in validation["checks"])
            validation = Validation(**{**validation, "checks": checks})
        return cls(
            format_version=data["format_version"],
            source=Source(**data["source"]),
            dtype=data["dtype"],
            opset=data["opset"],
            packages=dict(data["packages"]),
            model=ModelShape(
                **{**data["model"], "attention_window": tuple(data["model"]["attention_window"])}
            ),
            special_tokens=SpecialTokens(**data["special_tokens"]),
            input_template=data["input_template"],
            generation_defaults=dict(data["generation_defaults"]),
            graphs={name: _graph(g) for name, g in data["graphs"].items()},
            tensor_names=TensorNames(**data["tensor_names"]),
            validation=validation,
            files={name: FileEntry(**entry) for name, entry in data["files"].items()},
        )

    # -- the folder -----------------------------------------------------------------------
    def write(self, folder: Path) -> "Manifest":
        """Record every file now in `folder` (sha256, size) and write manifest.json there."""
        files = {
            p.name: FileEntry(sha256(p), p.stat().st_size)
            for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name != MANIFEST
        }
        manifest = replace(self, files=files, format_version=FORMAT_VERSION)
        (Path(folder) / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        return manifest

    @classmethod
    def read(cls, folder, verify: bool = False) -> "Manifest":
        """The folder's manifest; with `verify`, every listed file's size and sha256 checked.
        Raises ManifestError with a message that says what to do."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ManifestError(f"{folder} is not an artifacts folder (no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON: {e}") from e
        found = data.get("format_version") if isinstance(data, dict) else None
        if found != FORMAT_VERSION:
            raise ManifestError(
                f"{path} has format_version {found!r}; this ledserve reads version "
                f"{FORMAT_VERSION}: re-export the model with this version's `ledserve export`"
            )
        try:
            manifest = cls.from_dict(data)
        except (KeyError, TypeError) as e:
            raise ManifestError(
                f"{path} lacks or misnames a field ({e}): re-export the model with this "
                "version's `ledserve export`"
            ) from e
        if verify:
            manifest.verify(folder)
        return manifest

    def verify(self, folder: Path):
        for name, entry in self.files.items():
            file = Path(folder) / name
            if not file.is_file():
                raise ManifestError(f"{file} is listed in the manifest but missing")
            if file.stat().st_size != entry.bytes or sha256(file) != entry.sha256:
                raise ManifestError(f"{file} does not match its sha256 in the manifest")


def _graph(data: dict) -> Graph:
    def tensors(key):
        return tuple(Tensor(**{**t, "shape": tuple(t["shape"])}) for t in data[key])

    return Graph(data["file"], tensors("inputs"), tensors("outputs"))
