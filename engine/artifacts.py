"""An exported artifacts folder, checked against its manifest before anything runs.

The manifest (written by `ledserve export`) is the engine's only source for file names,
tensor-name templates, model dimensions, special tokens and default generation options.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ArtifactError

FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifacts:
    folder: Path
    manifest: dict

    @classmethod
    def load(cls, folder, verify: bool = True) -> "Artifacts":
        """Read manifest.json; with `verify`, check every listed file's size and sha256."""
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise ArtifactError(f"{folder} is not an artifacts folder (no manifest.json)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path} is not valid JSON: {e}") from e
        found = manifest.get("format_version")
        if found != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format_version {found!r}; this ledserve reads version "
                f"{FORMAT_VERSION}: re-export the model with this version's `ledserve export`"
            )
        if verify:
            for name, entry in manifest["files"].items():
                file = folder / name
                if not file.is_file():
                    raise ArtifactError(f"{file} is listed in the manifest but missing")
                if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
                    raise ArtifactError(f"{file} does not match its sha256 in the manifest")
        return cls(folder, manifest)

    def graph(self, name: str) -> Path:
        return self.folder / self.manifest["graphs"][name]["file"]

    def tensor_name(self, kind: str, layer: int) -> str:
        """kind: past_key, past_value, present_key, present_value, cross_key, cross_value."""
        return self.manifest["tensor_names"][kind].format(layer=layer)

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def special_tokens(self) -> dict:
        return self.manifest["special_tokens"]
