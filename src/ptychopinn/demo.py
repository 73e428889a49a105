"""``ptychopinn demo``: simulate a scan, train the default recipe, reconstruct, score.

Everything here is what the plain commands do: ``Config()`` is the default recipe and the
reconstruction is the default inference (the network, then ``refine="auto"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.io.outputs import output_set

logger = logging.getLogger("ptychopinn")

#: The demo scan: a natural image (camera-man phase, astronaut amplitude) under a defocused
#: disk probe, 10^6 photons per pattern.
DEMO_N = 64
DEMO_POSITIONS = 576
DEMO_PHOTONS = 1e6
#: Training time limit of the demo when neither epochs nor time are given: with the
#: simulation, the reconstruction and the scores the demo ends within about 4 minutes on 2 CPU
#: cores (where the default recipe's 20 epochs take about 3 min 40 s; a GPU trains all 20).
DEMO_TRAINING_S = 195.0
#: What the demo writes into its output directory.
DEMO_OUTPUTS = ("scan.npz", "run", "reconstruction", "demo_metrics.json")


def demo_config(
    max_epochs: int | None, max_time: float | None, seed: int, accelerator: str
) -> Config:
    """The default recipe, with the demo's few departures given on its command line (without
    either limit, the recipe's epochs or :data:`DEMO_TRAINING_S`, whichever ends first)."""
    training: dict[str, Any] = {"seed": seed, "accelerator": accelerator}
    if max_epochs is None and max_time is None:
        max_time = DEMO_TRAINING_S
    if max_epochs is not None:
        training["max_epochs"] = max_epochs
    if max_time is not None:
        training["max_time"] = max_time
    return Config(
        model=ModelConfig(N=DEMO_N), training=dataclasses.replace(TrainingConfig(), **training)
    )


def run_demo(
    out_dir: Path,
    max_epochs: int | None = None,
    max_time: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Run the whole job on simulated data; returns the metrics (also in ``demo_metrics.json``).

    Writes ``scan.npz``, the training run ``run/``, and the reconstruction ``reconstruction/``
    (the default inference: refined) with the network alone in ``reconstruction/network/``,
    each with amplitude and phase images, ``metrics.json`` and a comparison figure.
    """
    from ptychopinn.data.simulate import simulate_scan
    from ptychopinn.device import torch_device
    from ptychopinn.io.npz import write_json, write_scan_npz
    from ptychopinn.workflows import (
        load_bundle,
        network_reconstruction,
        refine_reconstruction,
        train,
        write_metrics,
    )

    with output_set(out_dir, DEMO_OUTPUTS, overwrite) as work:
        t0 = time.perf_counter()
        scan = simulate_scan(
            n=DEMO_N, object_kind="image", n_positions=DEMO_POSITIONS,
            photons_per_pattern=DEMO_PHOTONS, seed=seed,
        )  # fmt: skip
        write_scan_npz(work / "scan.npz", scan)
        logger.info("simulated %d patterns", scan.n_patterns)
        config = demo_config(max_epochs, max_time, seed, accelerator)
        run = train(config, scan, work / "run")
        device = torch_device(accelerator)
        bundle = load_bundle(run.bundle_path, map_location=device)
        t_infer = time.perf_counter()
        network = network_reconstruction(bundle, scan, device=device)
        infer_s = time.perf_counter() - t_infer
        final = refine_reconstruction(bundle, scan, network, "auto", device=device)
        refine_s = time.perf_counter() - t_infer - infer_s
        rec_dir = work / "reconstruction"
        final.save(rec_dir)
        network.save(rec_dir / "network")
        assert scan.object is not None
        network_metrics = write_metrics(network, scan.object, rec_dir / "network")
        metrics = write_metrics(final, scan.object, rec_dir, network_metrics=network_metrics)
        metrics.update(
            recipe=run.recipe,
            n_patterns=scan.n_patterns,
            photons_per_pattern=DEMO_PHOTONS,
            training_s=run.metrics.get("training_s"),
            epochs=run.metrics.get("epochs"),
            inference_s=infer_s,
            refine_s=refine_s,
            total_s=time.perf_counter() - t0,
        )
        write_json(work / "demo_metrics.json", metrics)
    logger.info(
        "demo: network alone phase SSIM %.3f, refined (%d passes) %.3f; %.0f s in all; "
        "outputs in %s",
        network_metrics["phase_ssim"],
        final.refinement.passes if final.refinement else 0,
        metrics["phase_ssim"],
        metrics["total_s"],
        out_dir,
    )
    return json.loads(json.dumps(metrics, default=float))
