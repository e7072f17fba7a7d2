"""An exported artifacts folder, checked against its manifest before anything runs.

The manifest (`ledserve.manifest`, written by `ledserve export`) is the engine's only source for
file names, tensor-name templates, model dimensions, special tokens and default generation options.
"""

from dataclasses import dataclass
from pathlib import Path

from ledserve.engine.errors import ArtifactError
from ledserve.manifest import Manifest, ManifestError


@dataclass(frozen=True)
class Artifacts:
    folder: Path
    manifest: Manifest

    @classmethod
    def load(cls, folder, verify: bool = True) -> "Artifacts":
        """Read manifest.json; with `verify`, check every listed file's size and sha256."""
        try:
            manifest = Manifest.read(folder, verify=verify)
        except ManifestError as e:
            raise ArtifactError(str(e)) from e
        return cls(Path(folder), manifest)

    def graph(self, name: str) -> Path:
        return self.folder / self.manifest.graphs[name].file

    def tensor_name(self, kind: str, layer: int) -> str:
        """kind: past_key, past_value, present_key, present_value, cross_key, cross_value."""
        return self.manifest.tensor_names.name(kind, layer)
