"""The package's shape: one top-level name (`ledserve`), imports that point one way (server ->
engine; the engine and the exporter stand alone; demo and benchmarks on top), and a client
command that starts without torch, onnxruntime, transformers, onnx or optimum."""

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# The repository's folders, installed as ledserve.<folder>: never importable under these names.
GENERIC = ("engine", "export", "server", "proto", "benchmarks", "demo")
FORBIDDEN = {
    "engine": (
        *("grpc", "grpc_health", "grpc_reflection"),
        *("ledserve.proto", "ledserve.server", "ledserve.export", "ledserve.benchmarks"),
        "ledserve.demo",
    ),
    "server": ("onnxruntime", "ledserve.benchmarks"),
    "export": ("ledserve.engine", "ledserve.server", "ledserve.benchmarks", "ledserve.demo"),
    "ledserve": ("torch", "onnxruntime", "transformers", "onnx", "optimum", "numpy", "grpc"),
}
HEAVY = ("torch", "onnxruntime", "transformers", "onnx", "optimum", "numpy")


def _imports(path: Path) -> list[str]:
    """Every absolute import of a file, as full dotted names (`from a.b import c` -> a.b.c)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _is_under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            assert not _is_under(name, FORBIDDEN[package]), f"{path}: imports {name}"


def test_project_code_is_imported_by_its_namespaced_name():
    """Also the generated stubs and the tests: `engine.x` would load a second copy of a module."""
    paths = [ROOT / "setup.py", *sorted((ROOT / "tests").glob("*.py"))]
    paths += [p for folder in (*GENERIC, "ledserve") for p in sorted((ROOT / folder).rglob("*.py"))]
    for path in paths:
        for name in _imports(path):
            assert not _is_under(name, GENERIC), f"{path}: imports {name}; use ledserve.{name}"


_TRY_IMPORTS = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError as e:
        found[name] = f"missing {e.name}"
print(json.dumps(found))
"""


def test_only_ledserve_is_importable_at_top_level(tmp_path):
    """From outside the checkout: the generic names fail, their ledserve.* names load this
    checkout's files (the editable install's mapping)."""
    namespaced = ["ledserve.engine.engine", "ledserve.server.app", "ledserve.export.convert",
                  "ledserve.proto.ledserve.v1.ledserve_pb2_grpc", "ledserve.benchmarks.run",
                  "ledserve.demo.model", "ledserve.cli", "ledserve.manifest"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", _TRY_IMPORTS, *GENERIC, *namespaced],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    for name in GENERIC:
        assert found[name] == f"missing {name}"
    for name in namespaced:
        folder = name.split(".")[1] if name.count(".") > 1 else "ledserve"
        assert Path(found[name]).is_relative_to(ROOT / folder), (name, found[name])


def _loaded_modules(command: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run with PYTHONPROFILEIMPORTTIME=1: the process and the names of every module it imported."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.startswith("import time:")]
    return run, {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # [0] is the header


def test_client_command_loads_no_heavy_module():
    """`ledserve --help`, `ledserve ask --help`, `ledserve ask` itself and a program using the
    Python Client import grpcio and protobuf, never torch and the like."""
    script = Path(sys.executable).with_name("ledserve")
    ledserve = [str(script)] if script.exists() else [sys.executable, "-m", "ledserve"]
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    client = "from ledserve.server.client import Client; Client('" + dead + "').close()"
    cases = [
        ([*ledserve, "--help"], 0, "ask"),
        ([*ledserve, "ask", "--help"], 0, "--max-new-tokens"),
        (
            [*ledserve, "ask", "--server", dead, "--question", "q?", "--context", "c."],
            1,
            "error: UNAVAILABLE",
        ),
        ([sys.executable, "-c", client], 0, ""),
    ]
    for command, status, said in cases:
        run, modules = _loaded_modules(command)
        assert run.returncode == status, (command, run.stderr[-2000:])
        assert said in run.stdout + run.stderr
        assert "grpc" in modules or "--help" in command
        heavy = sorted(m for m in modules if _is_under(m, HEAVY))
        assert not heavy, f"{command[1:]} imported {heavy[:5]}"
