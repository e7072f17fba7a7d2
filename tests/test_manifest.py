"""The manifest contract (ledserve/manifest.py): what the exporter writes reads back as the same
typed value, and an artifacts folder that is not what its manifest says is refused with a message
naming the problem."""

import json
import shutil

import pytest

from ledserve.engine.artifacts import Artifacts
from ledserve.engine.errors import ArtifactError
from ledserve.manifest import FORMAT_VERSION, MANIFEST, Manifest


def test_the_written_manifest_reads_back_unchanged(exported):
    for dtype, folder in exported.items():
        text = (folder / MANIFEST).read_text()
        manifest = Manifest.read(folder, verify=True)
        assert json.dumps(manifest.to_dict(), indent=2) + "\n" == text
        assert manifest.format_version == FORMAT_VERSION and manifest.dtype == dtype
        assert manifest.graphs["decoder"].file == "decoder.onnx"
        assert manifest.tensor_names.name("present_value", 2) == "present.2.value"
        assert isinstance(manifest.model.attention_window, tuple)


def _edit(change):
    def damage(folder):
        data = json.loads((folder / MANIFEST).read_text())
        change(data)
        (folder / MANIFEST).write_text(json.dumps(data))

    return damage


DAMAGES = {
    "no manifest": (lambda f: (f / MANIFEST).unlink(), "is not an artifacts folder"),
    "not JSON": (lambda f: (f / MANIFEST).write_text("{"), "is not valid JSON"),
    "another format": (
        _edit(lambda d: d.update(format_version=FORMAT_VERSION + 1)),
        f"has format_version {FORMAT_VERSION + 1}; this ledserve reads version {FORMAT_VERSION}",
    ),
    "a field missing": (_edit(lambda d: d.pop("special_tokens")), "lacks or misnames a field"),
    "an unknown field": (_edit(lambda d: d["model"].update(extra=1)), "lacks or misnames a field"),
    "a file altered": (
        lambda f: (f / "decoder.onnx").write_bytes((f / "decoder.onnx").read_bytes() + b"\0"),
        "decoder.onnx does not match its sha256",
    ),
    "a file missing": (
        lambda f: (f / "tokenizer.json").unlink(),
        "tokenizer.json is listed in the manifest but missing",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_folder_is_refused_clearly(exported, tmp_path, case):
    damage, message = DAMAGES[case]
    folder = tmp_path / "artifacts"
    shutil.copytree(exported["fp32"], folder)
    Artifacts.load(folder)  # intact
    damage(folder)
    with pytest.raises(ArtifactError, match=message):
        Artifacts.load(folder)
