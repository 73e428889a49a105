"""Compatibility layer: the seed command-line interface and the Ptychodus 1.7.0 API surface.

Adapters only; every call lands in :mod:`ptychopinn`. The core never imports this package.
"""
