"""Tolstoy: a small multi-tenant workflow automation service."""

__version__ = "0.1.0"
