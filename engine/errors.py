"""Typed engine errors and failure kinds; the server maps each to one gRPC status code."""

import enum


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequest(EngineError):
    """A request or parameter the engine refuses; the message names the field and the limit."""


class CapacityExceeded(EngineError):
    """The engine is full (queue or memory budget); retry later."""


class WrongTask(EngineError):
    """A call the loaded model's task does not serve (an answer span asked of a generative
    model, or the reverse)."""


class ArtifactError(EngineError):
    """An artifacts folder that is missing, altered or of an unknown format."""


class Failure(enum.Enum):
    """Why a request ended without an answer; the server maps each to one status code."""

    CANCELLED = "cancelled"
    """By its caller (or by the server, for a client that went away)."""
    OUT_OF_MEMORY = "out of memory"
    """A capacity failure: the same request may succeed later, or with a shorter input."""
    ERROR = "error"
    """A bug or a numerical failure (non-finite logits); the detail is for the log only."""


def failure_of(error: BaseException) -> Failure:
    """OUT_OF_MEMORY for an allocation failure (Python's, torch's or ONNX Runtime's), else ERROR."""
    text = str(error).lower()
    if isinstance(error, MemoryError) or any(s in text for s in _OUT_OF_MEMORY):
        return Failure.OUT_OF_MEMORY
    return Failure.ERROR


# torch: "CUDA out of memory", "DefaultCPUAllocator: can't allocate memory"; ONNX Runtime:
# "Failed to allocate memory for requested buffer", "bad allocation" / "std::bad_alloc".
_OUT_OF_MEMORY = ("out of memory", "failed to allocate", "can't allocate memory", "bad_alloc",
                  "bad allocation")  # fmt: skip
