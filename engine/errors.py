"""Typed engine errors; the server maps each to one gRPC status code."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequest(EngineError):
    """A request or parameter the engine refuses; the message names the field and the limit."""


class CapacityExceeded(EngineError):
    """The engine is full (queue or memory budget); retry later."""


class ArtifactError(EngineError):
    """An artifacts folder that is missing, altered or of an unknown format."""
