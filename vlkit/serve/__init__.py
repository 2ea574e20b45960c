"""OpenAI-compatible HTTP server (``vlkit serve``)."""

from vlkit.serve.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
