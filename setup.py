"""Generates the gRPC stubs from proto/**/*.proto with grpcio-tools at build time (also for
editable installs), so that generated code is never committed. Everything else is in
pyproject.toml."""

import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


def generate_stubs(out: Path = ROOT):
    """proto/**/x.proto -> out/proto/**/x_pb2.py, x_pb2.pyi, x_pb2_grpc.py. The stubs import each
    other by the installed name (`ledserve.proto.…`): protoc sees proto/ as ledserve/proto."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as scratch:
        for source in sorted((ROOT / "proto").rglob("*.proto")):
            args = [
                "grpc_tools.protoc",
                f"-Iledserve/proto={ROOT / 'proto'}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                f"--grpc_python_out={scratch}",
                str(source),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {source}")
        generated = Path(scratch, "ledserve", "proto")
        for stub in sorted(generated.rglob("*_pb2*")):
            target = out / "proto" / stub.relative_to(generated)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stub, target)


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
