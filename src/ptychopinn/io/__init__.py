"""Readers and writers; every reader returns a validated :class:`ScanData`."""

from ptychopinn.io.npz import read_npz, write_scan_npz
from ptychopinn.io.scan import ScanData

__all__ = ["ScanData", "read_npz", "write_scan_npz"]
