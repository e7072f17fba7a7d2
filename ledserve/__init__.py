"""ledserve: long-document question answering with LED, exported to ONNX and served over gRPC.

Its parts install under this one name: `ledserve.export` (LED -> ONNX), `ledserve.engine` (the
decoding engine), `ledserve.server` and `ledserve.proto` (gRPC), `ledserve.demo` (the embedded
demo model), `ledserve.benchmarks`; `ledserve.cli` is the `ledserve` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ledserve")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
