"""Structured logs: one JSON object per line on stderr, with the request id where there is one."""

import json
import logging
import sys
import time

logger = logging.getLogger("ledserve")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info"):
    """ledserve's events at `level`; other libraries' warnings and errors (asyncio, grpc) go
    through the same JSON lines, so that stderr stays one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def log(event: str, level: int = logging.INFO, exc_info=None, **fields):
    logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)
