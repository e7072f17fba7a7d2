"""The export command: artifacts and manifest, validation output, and its refusals."""

import json
import os
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import BartConfig

from ledserve.cli import main as ledserve
from ledserve.export.convert import ExportConfig, ExportError, export_model, save_onnx
from ledserve.manifest import FORMAT_VERSION, INPUT_TEMPLATE, Validation, sha256


def test_manifest_describes_the_artifacts(exported):
    folder = exported["fp16"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["dtype"] == "fp16"
    assert manifest["input_template"] == INPUT_TEMPLATE
    for name in (
        "encoder.onnx",
        "decoder.onnx",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
    ):
        entry = manifest["files"][name]
        assert entry["sha256"] == sha256(folder / name)
        assert entry["bytes"] == (folder / name).stat().st_size
    decoder = manifest["graphs"]["decoder"]
    logits = next(o for o in decoder["outputs"] if o["name"] == "logits")
    assert logits["dtype"] == "float32"  # logits stay fp32 in fp16 artifacts
    present = next(o for o in decoder["outputs"] if o["name"] == "present.0.key")
    assert present["dtype"] == "float16"
    assert present["shape"] == [
        "batch",
        manifest["model"]["decoder_attention_heads"],
        "total_tokens",
        manifest["model"]["head_dim"],
    ]
    assert manifest["packages"]["onnxruntime-gpu"] == ort.__version__
    assert manifest["validation"] is None


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_export_with_validation_prints_table(checkpoint, tmp_path, capsys, dtype):
    folder, _ = checkpoint
    out = tmp_path / "a"
    code = ledserve(["export", "--model", str(folder), "--output", str(out), "--dtype", dtype,
                     "--validate"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "validation passed" in err and "cross_key_values.0.key" in err and "logits" in err
    assert "rms rel" in err and "argmax equal to transformers'" in err
    report = json.loads((out / "manifest.json").read_text())["validation"]
    assert report["passed"] and report["dtype"] == dtype and len(report["checks"]) >= 8
    assert 0.5 < report["argmax_agreement"] <= 1.0
    assert all(c["rms_rel"] > 0 for c in report["checks"])  # no reference is reproduced exactly


def test_refuses_non_led_model(tmp_path):
    BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1).save_pretrained(
        tmp_path
    )
    with pytest.raises(ExportError, match=r"'bart' model.*model_type 'led'"):
        export_model(ExportConfig(model=str(tmp_path), output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    code = ledserve(["export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "model folder not found" in capsys.readouterr().err


def test_file_system_refusal_is_a_clear_error(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "artifacts"
    assert ledserve(["export", "--model", str(checkpoint[0]), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("error: ") and str(tmp_path / "file") in last and "Traceback" not in err


def test_existing_output_needs_force(checkpoint, tmp_path):
    folder, _ = checkpoint
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model(ExportConfig(model=str(folder), output=out))
    assert (out / "keep.txt").read_text() == "mine"
    export_model(ExportConfig(model=str(folder), output=out, force=True))
    assert (out / "encoder.onnx").exists() and not (out / "keep.txt").exists()
    link = tmp_path / "link"  # a link to the folder: the folder is replaced, the link stays
    link.symlink_to(out)
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model(ExportConfig(model=str(folder), output=link))
    (out / "keep.txt").write_text("old")
    export_model(ExportConfig(model=str(folder), output=link, force=True))
    assert link.is_symlink() and link.resolve() == out.resolve()
    assert (out / "encoder.onnx").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out"]  # no work folder left


def test_failure_leaves_nothing_behind(checkpoint, tmp_path, monkeypatch):
    folder, _ = checkpoint

    def failing_validation(*args, **kwargs):
        return Validation(
            seed=0, device="cpu", dtype="fp32", criterion="max_abs <= 0.0001", passed=False,
            checks=(),
        )  # fmt: skip

    monkeypatch.setattr("ledserve.export.convert.validate", failing_validation)
    with pytest.raises(ExportError, match="validation failed"):
        export_model(ExportConfig(model=str(folder), output=tmp_path / "out", validate=True))
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary folder


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    """A hub id goes through from_pretrained's hub path; offline, the error says what failed."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledserve.export",
            "--model",
            "someone/led-model",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 2
    assert "could not load a model config from 'someone/led-model'" in run.stderr
    assert "Traceback" not in run.stderr


def test_python_dash_m_ledserve_export(checkpoint, tmp_path):
    folder, _ = checkpoint
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledserve.export",
            "--model",
            str(folder),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "exporting encoder.onnx" in run.stderr and "encoder.onnx" in run.stdout


def test_external_data_is_loadable(exported, tmp_path):
    model = onnx.load(str(exported["fp32"] / "decoder.onnx"))
    save_onnx(model, tmp_path / "decoder.onnx", external_bytes=0)
    assert (tmp_path / "decoder.onnx.data").stat().st_size > 0
    ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_validation_without_gpu_is_a_clear_error(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    args = ["--validate", "--device", "cuda"]
    code = ledserve(["export", "--model", str(folder), "--output", str(tmp_path / "o"), *args])
    assert code == 2
    assert "validation could not run on cuda" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
