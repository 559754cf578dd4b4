"""The HTTP API: ``create_app(engine)`` builds the FastAPI application."""

from .app import create_app

__all__ = ["create_app"]
