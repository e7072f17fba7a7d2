"""Generates the gRPC stubs from proto/**/*.proto with grpcio-tools at build time (also for
editable installs), so that generated code is never committed. Everything else is in
pyproject.toml."""

from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


def generate_stubs(out: Path = ROOT):
    """proto/**/x.proto -> out/proto/**/x_pb2.py, x_pb2.pyi, x_pb2_grpc.py."""
    from grpc_tools import protoc

    for source in sorted((ROOT / "proto").rglob("*.proto")):
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(source),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source}")


class BuildProtos(Command):
    description = "generate the gRPC stubs from proto/"
    user_options: ClassVar[list] = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        generate_stubs()


class BuildPy(build_py):
    def run(self):
        self.run_command("build_protos")
        super().run()


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import generate_stubs
    setup(cmdclass={"build_protos": BuildProtos, "build_py": BuildPy})
