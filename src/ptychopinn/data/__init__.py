"""Data: grouping of scan positions, datasets and data module, simulated scans."""
