"""Session fixtures: tiny random LEDs built and saved here, exported once per session."""

import os

import numpy as np
import pytest
from transformers import LEDForConditionalGeneration

from ledserve.demo.tiny import build_random_led
from ledserve.export.convert import ExportConfig, export_model
from ledserve.server.app import BackgroundServer, ServerConfig

# Two shapes with odd, per-layer one-sided windows (6, 2, 3 and 5, 5); transformers itself needs
# every window to divide the largest one.
CONFIGS = {
    "tiny3": dict(eos_bias=1.7),  # EOS then ends generation at varied lengths
    "tiny2": dict(
        eos_bias=1.7,
        d_model=24,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=3,
        attention_window=[10, 10],
    ),
}


@pytest.fixture(scope="session", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    """(folder, model): a saved random LED checkpoint and the transformers model loaded from it."""
    folder = tmp_path_factory.mktemp(f"checkpoint-{request.param}")
    build_random_led(folder, **CONFIGS[request.param])
    return folder, LEDForConditionalGeneration.from_pretrained(folder).eval()


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """dtype -> artifacts folder of the checkpoint, each dtype exported once."""
    folder, _ = checkpoint
    out = {}
    for dtype in ("fp32", "fp16", "int8"):
        target = tmp_path_factory.mktemp(f"artifacts-{dtype}") / "artifacts"
        export_model(ExportConfig(model=str(folder), output=target, dtype=dtype))
        out[dtype] = target
    return out


@pytest.fixture
def rng():
    """Fresh random inputs every run; the seed is in the test id's output on failure, and
    LEDSERVE_TEST_SEED=<seed> replays it."""
    seed = int(os.environ.get("LEDSERVE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"random seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """(checkpoint folder, artifacts folder): the tiny random LED the server tests serve (fp32)."""
    folder = tmp_path_factory.mktemp("served")
    build_random_led(folder / "checkpoint", seed=3, eos_bias=1.7)
    export_model(ExportConfig(model=str(folder / "checkpoint"), output=folder / "artifacts"))
    return folder / "checkpoint", folder / "artifacts"


@pytest.fixture(scope="session")
def served(served_model):
    """A real gRPC server on a free loopback port (metrics on another), SERVING."""
    config = ServerConfig(artifacts=served_model[1], port=0, device="cpu", metrics_port=0)
    server = BackgroundServer(config)
    yield server
    server.stop()
