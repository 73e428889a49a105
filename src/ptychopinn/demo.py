"""``ptychopinn demo``: simulate a scan, train a CPU-sized model, reconstruct, score."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ptychopinn.commands import CPU_PRESET
from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.errors import OutputExistsError

logger = logging.getLogger(__name__)

#: The demo preset: the CPU network (the physics-informed U-Net of ``commands.CPU_PRESET``),
#: which trains in a few minutes on 2 CPU cores.
DEMO_N = 64
DEMO_POSITIONS = 576
DEMO_PHOTONS = 1e6
DEMO_EPOCHS = 30
DEMO_REFINE_PASSES = 100


def demo_config(gridsize: int, max_epochs: int, seed: int, accelerator: str) -> Config:
    return Config(
        model=ModelConfig(N=DEMO_N, gridsize=gridsize, **CPU_PRESET),
        training=TrainingConfig(
            max_epochs=max_epochs,
            batch_size=16,
            learning_rate=2e-3,
            scheduler="cosine",
            seed=seed,
            accelerator=accelerator,
        ),
    )


def run_demo(
    out_dir: Path,
    gridsize: int = 1,
    max_epochs: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    accelerator: str = "cpu",
) -> dict[str, Any]:
    """Run the whole job on simulated data; returns the metrics (also in ``demo_metrics.json``).

    Writes ``scan.npz``, the training run ``run/``, the network's reconstruction
    ``reconstruction/`` and the likelihood-refined one ``refined/``, each with
    amplitude and phase images, ``metrics.json`` and a comparison figure.
    """
    from ptychopinn.commands import write_metrics
    from ptychopinn.data.simulate import simulate_scan
    from ptychopinn.io.npz import write_json, write_scan_npz
    from ptychopinn.workflows import load_bundle, reconstruct, refine_reconstruction, train

    summary_path = out_dir / "demo_metrics.json"
    if summary_path.exists() and not overwrite:
        raise OutputExistsError(
            f"{out_dir}: holds an earlier demo (demo_metrics.json); pass --overwrite"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scan = simulate_scan(
        n=DEMO_N,
        object_kind="image",
        probe_kind="disk",
        scan_kind="raster",
        n_positions=DEMO_POSITIONS,
        photons_per_pattern=DEMO_PHOTONS,
        seed=seed,
    )
    write_scan_npz(out_dir / "scan.npz", scan)
    logger.info("simulated %d patterns -> %s", scan.n_patterns, out_dir / "scan.npz")
    config = demo_config(gridsize, max_epochs or DEMO_EPOCHS, seed, accelerator)
    run = train(config, scan, out_dir / "run", overwrite=overwrite)
    bundle = load_bundle(run.bundle_path)
    t_infer = time.perf_counter()
    rec = reconstruct(bundle, scan)
    infer_s = time.perf_counter() - t_infer
    rec_dir = out_dir / "reconstruction"
    rec.save(rec_dir)
    assert scan.object is not None
    network = write_metrics(rec, scan.object, rec_dir, None)
    t_refine = time.perf_counter()
    refined = refine_reconstruction(bundle, scan, rec, passes=DEMO_REFINE_PASSES)
    refine_s = time.perf_counter() - t_refine
    refined_dir = out_dir / "refined"
    refined.save(refined_dir)
    metrics = write_metrics(refined, scan.object, refined_dir, None, network)
    metrics.update(
        gridsize=gridsize,
        n_patterns=scan.n_patterns,
        photons_per_pattern=DEMO_PHOTONS,
        training_s=run.metrics.get("training_s"),
        epochs=config.training.max_epochs,
        inference_s=infer_s,
        inference_patterns_per_s=scan.n_patterns / infer_s,
        refine_passes=DEMO_REFINE_PASSES,
        refine_s=refine_s,
        total_s=time.perf_counter() - t0,
    )
    write_json(summary_path, metrics)
    logger.info("demo outputs in %s", out_dir)
    return json.loads(json.dumps(metrics, default=float))
