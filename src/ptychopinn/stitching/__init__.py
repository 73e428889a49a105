"""Stitching: patches at their positions onto one object canvas, their phases synchronised.

:mod:`~ptychopinn.stitching.canvas` holds the canvas on the object pixel grid
(:class:`CanvasGeometry`, :class:`Stitcher`, :func:`stitch`, :func:`hilbert_order`);
:mod:`~ptychopinn.stitching.phase_sync` the synchronisation of the patches' constant phases.
"""

from ptychopinn.stitching.canvas import CanvasGeometry, Stitcher, hilbert_order, stitch
from ptychopinn.stitching.phase_sync import synchronize_phases

__all__ = ["CanvasGeometry", "Stitcher", "hilbert_order", "stitch", "synchronize_phases"]
