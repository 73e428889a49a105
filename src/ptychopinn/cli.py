"""``ptychopinn`` command line: simulate, check, train, infer, evaluate, demo.

The seed interface (``python -m ptycho_torch.train`` / ``.inference``,
``ptycho_train``, ``ptycho_inference``, ``ptycho_evaluate``) maps onto the same
parsers, so one vocabulary of flags works everywhere. User errors exit with
status 2 and one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptychopinn import __version__
from ptychopinn.errors import DataError, OutputExistsError, PtychoPINNError

logger = logging.getLogger("ptychopinn")

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _flag(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> None:
    """Add an option under each spelling given plus its dash/underscore twin."""
    spellings: list[str] = []
    for name in names:
        for variant in (name, "--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
            if variant not in spellings:
                spellings.append(variant)
    parser.add_argument(*spellings, **kwargs)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def _hardware(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--accelerator",
        choices=["auto", "cpu", "gpu", "cuda", "mps"],
        default=None,
        help="compute device (default cpu; auto picks a GPU when present)",
    )
    parser.add_argument("--device", dest="deprecated_device", default=None, help=argparse.SUPPRESS)
    _flag(
        parser,
        "--n_images",
        "--n_groups",
        dest="n_groups",
        type=_positive_int,
        default=None,
        help="number of groups (= patterns at gridsize 1); default: all",
    )
    _flag(
        parser,
        "--diffraction_units",
        choices=["auto", "amplitude", "counts"],
        default="auto",
        help="float diffraction data are amplitudes sqrt(counts) unless 'counts' (default auto)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ptychopinn", description="Physics-informed neural network ptychography")
    parser.add_argument("--version", action="version", version=f"ptychopinn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="simulate a scan and write a scan NPZ or HDF5 file")
    _common(p)
    add_simulate_arguments(p)

    p = sub.add_parser("check", help="validate a data file and print a summary")
    _common(p)
    p.add_argument("file", help="scan NPZ, chunked HDF5 scan, or Ptychodus product .h5")
    _flag(p, "--diffraction_units", choices=["auto", "amplitude", "counts"], default="auto")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("train", help="train a model; writes RUN/wts.h5.zip, checkpoints, logs")
    _common(p)
    add_train_arguments(p)

    p = sub.add_parser("infer", help="reconstruct a scan with a trained bundle")
    _common(p)
    add_infer_arguments(p)

    p = sub.add_parser("evaluate", help="compare a reconstruction with a reference object")
    _common(p)
    add_evaluate_arguments(p)

    p = sub.add_parser(
        "demo", help="simulate, train a small model, reconstruct, score (minutes on a CPU)"
    )
    _common(p)
    _flag(
        p,
        "--output_dir",
        default="ptychopinn_demo",
        help="output directory (default ptychopinn_demo)",
    )
    _flag(
        p,
        "--max_epochs",
        "--nepochs",
        dest="max_epochs",
        type=_positive_int,
        default=None,
        help="training epochs (default: the demo preset)",
    )
    _flag(
        p,
        "--gridsize",
        type=int,
        choices=[1, 2],
        default=1,
        help="patterns per group along one axis",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's outputs")
    _flag(p, "--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"], default="cpu")
    return parser


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    _flag(
        p,
        "--output",
        "--output_file",
        required=True,
        help="file to write: .npz (SPEC §4.1 keys) or .h5 (chunked HDF5, streamed to disk)",
    )
    p.add_argument("--N", type=int, default=64, help="pattern size in pixels, power of two (64)")
    _flag(
        p,
        "--n_images",
        "--n_positions",
        dest="n_images",
        type=_positive_int,
        default=512,
        help="number of scan positions (512)",
    )
    p.add_argument(
        "--object",
        choices=["lines", "grf", "image"],
        default="grf",
        help="object: random lines, Gaussian random field, natural image (grf)",
    )
    p.add_argument(
        "--probe",
        choices=["disk", "gaussian"],
        default="disk",
        help="probe: defocused disk (Fresnel-zone-like) or Gaussian (disk)",
    )
    _flag(p, "--probe_file", default=None, help="NPZ whose probeGuess is used as the probe")
    p.add_argument(
        "--scan",
        choices=["raster", "spiral", "random"],
        default="raster",
        help="scan pattern (raster, with jitter)",
    )
    _flag(
        p, "--step_px", type=_positive_float, default=None, help="scan step in object pixels (N/10)"
    )
    _flag(p, "--jitter_px", type=float, default=0.5, help="random position jitter in pixels (0.5)")
    _flag(
        p,
        "--photons",
        "--nphotons",
        dest="photons",
        type=float,
        default=1e6,
        help="mean photons per pattern, Poisson noise; 0 = noise-free amplitudes (1e6)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _flag(
        p,
        "--train_data_file",
        "--train_data",
        required=True,
        help="training scan (NPZ, chunked HDF5 scan or Ptychodus .h5)",
    )
    _flag(
        p,
        "--test_data_file",
        "--test_data",
        default=None,
        help="validation scan (default: held-out groups)",
    )
    _flag(p, "--output_dir", required=True, help="run directory")
    p.add_argument(
        "--preset",
        choices=["overlap"],
        default=None,
        help="overlap: overlap-constrained training of the CPU network (--gridsize 3 "
        "--per_pattern --group_stride 2 --merge_weights probe --norm_layer layer --max_epochs 20 "
        "--batch_size 2 --learning_rate 1e-3 --scheduler cosine --warmup_fraction 0.06 "
        "--adam_beta2 0.99, bf16-mixed where native); flags and --config override its values",
    )
    _flag(
        p,
        "--max_epochs",
        "--nepochs",
        "--epochs",
        dest="max_epochs",
        type=_positive_int,
        default=None,
        help="training epochs (default 50)",
    )
    _flag(
        p,
        "--gridsize",
        type=int,
        choices=[1, 2, 3, 4],
        default=None,
        help="patterns per group along one axis (default 1)",
    )
    _flag(
        p,
        "--group_stride",
        type=int,
        choices=range(1, 9),
        metavar="{1..8}",
        default=None,
        help="at gridsize > 1: spacing of a group's members in scan steps (default 1, the "
        "nearest neighbours; 2 spreads each group over twice the object)",
    )
    _flag(p, "--batch_size", type=_positive_int, default=None, help="groups per batch (default 16)")
    _flag(
        p,
        "--learning_rate",
        "--lr",
        dest="learning_rate",
        type=_positive_float,
        default=None,
        help="Adam learning rate (default 1e-3)",
    )
    _flag(
        p,
        "--scheduler",
        choices=["constant", "plateau", "cosine"],
        default=None,
        help="learning-rate schedule, per optimiser step (default constant; cosine: annealed "
        "to zero over the run; plateau: halved after 3 epochs without improvement)",
    )
    _flag(
        p,
        "--warmup_fraction",
        type=float,
        default=None,
        help="fraction of the optimiser steps, in [0, 1), over which the learning rate first "
        "rises linearly from zero (default 0; constant and cosine schedules)",
    )
    _flag(
        p,
        "--adam_beta2",
        type=float,
        default=None,
        help="Adam's second-moment decay, in (0, 1) (default 0.999)",
    )
    _flag(
        p,
        "--loss",
        choices=["poisson", "mae"],
        default=None,
        help="unsupervised loss (default poisson)",
    )
    _flag(p, "--mode", choices=["unsupervised", "supervised"], default=None, help="training mode")
    _flag(
        p,
        "--nphotons",
        type=_positive_float,
        default=None,
        help="photons per pattern for the Poisson scale (default: measured from the data)",
    )
    _flag(
        p,
        "--n_filters_scale",
        type=_positive_float,
        default=None,
        help="filter multiplier (default 2; on a CPU, when none of this, --stem_stride and "
        "--architecture is given: 1, with --stem_stride 2 and --architecture backprop_unet)",
    )
    _flag(
        p,
        "--stem_stride",
        type=int,
        choices=[1, 2],
        default=None,
        help="first-conv stride (2 = cheaper)",
    )
    _flag(
        p,
        "--architecture",
        choices=["ptychopinn", "backprop_unet"],
        default=None,
        help="network: ptychopinn (encoder + two decoders, default) or backprop_unet "
        "(back-propagated estimate + real-space U-Net; the default on a CPU when no "
        "network size is given either)",
    )
    _flag(
        p,
        "--per_pattern",
        action="store_true",
        default=None,
        help="at gridsize > 1: one network per pattern (shared weights) instead of the group's "
        "patterns as channels; the group still shares one object in the loss",
    )
    _flag(
        p,
        "--merge_weights",
        choices=["probe", "support"],
        default=None,
        help="at gridsize > 1: weight of each patch's pixels when a group's patches are merged "
        "into the object of the loss: the probe amplitude on the support (default) or flat",
    )
    _flag(
        p,
        "--norm_layer",
        choices=["batch", "layer", "group", "none"],
        default=None,
        help="normalisation after each convolution: batch (default), layer (LayerNorm over "
        "the channels of each pixel), group, none",
    )
    _flag(p, "--amp_activation", choices=["softplus", "sigmoid", "exp", "relu"], default=None)
    _flag(
        p,
        "--probe_big",
        action="store_true",
        default=None,
        help="learn the object outside the N/2 support",
    )
    _flag(
        p,
        "--probe_mask",
        action="store_true",
        default=None,
        help="mask the probe with a disk of diameter N/2",
    )
    _flag(
        p,
        "--val_fraction",
        type=float,
        default=None,
        help="held-out fraction without --test_data_file (0.05)",
    )
    _flag(
        p,
        "--early_stopping_patience",
        type=_positive_int,
        default=None,
        help="epochs without improvement",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms"
    )
    _flag(
        p,
        "--num_workers",
        "--num-workers",
        dest="num_workers",
        type=int,
        default=None,
        help="loader workers (0)",
    )
    p.add_argument("--devices", default=None, help="devices per node (int or 'auto'; default 1)")
    _flag(p, "--num_nodes", type=_positive_int, default=None, help="nodes (default 1)")
    p.add_argument(
        "--strategy", default=None, help="Lightning strategy: auto, ddp, ddp_spawn, ... (auto)"
    )
    p.add_argument(
        "--precision",
        default=None,
        help="Lightning precision: 32-true (default), bf16-mixed (same quality, 1.5x faster on "
        "CPUs with AMX or AVX512-BF16 and on GPUs of compute capability 8+), 16-mixed",
    )
    p.add_argument(
        "--logger", choices=["csv", "tensorboard", "mlflow", "none"], default=None, help="(csv)"
    )
    _flag(p, "--disable_mlflow", action="store_true", help="same as --logger none")
    _flag(p, "--mlflow_tracking_uri", default=None, help="MLflow URI (default: RUN/mlruns)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt")
    p.add_argument(
        "--config", default=None, help="JSON config file ({'model': {...}, 'training': {...}})"
    )
    _hardware(p)


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "--model_path", required=True, help="run directory or wts.h5.zip")
    _flag(
        p,
        "--test_data",
        "--test_data_file",
        "--data",
        dest="test_data",
        required=True,
        help="scan to reconstruct",
    )
    _flag(p, "--output_dir", required=True, help="output directory")
    _flag(
        p,
        "--batch_size",
        type=_positive_int,
        default=None,
        help="groups per forward pass (default 32 on a CPU, 256 on a GPU)",
    )
    _flag(p, "--gridsize", type=int, default=None, help="must match the bundle's (checked)")
    p.add_argument("--N", type=int, default=None, help="must match the bundle's (checked)")
    _flag(
        p,
        "--stitch_weights",
        choices=["support", "probe", "intensity"],
        default="probe",
        help="overlap weighting on the object support: the probe's amplitude, its intensity, "
        "or flat (probe)",
    )
    _flag(
        p,
        "--phase_sync",
        choices=["auto", "on", "off"],
        default="auto",
        help="align each patch's phase to its neighbours before stitching: on, off, or auto "
        "(on for a network that sees one pattern at a time: gridsize 1 or --per_pattern; for "
        "a channel model trained on groups, whichever stitching the measured patterns are "
        "more likely under) (auto)",
    )
    _flag(
        p,
        "--precision",
        choices=["32", "bf16"],
        default="32",
        help="network precision: 32 (float32) or bf16 (bfloat16 autocast, faster on CPUs with "
        "bf16 support and on GPUs; see the README for its accuracy cost) (32)",
    )
    _flag(
        p,
        "--pixel_size_m",
        type=_positive_float,
        default=None,
        help="object pixel size for FRC resolution",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="PASSES",
        help="passes of maximum-likelihood refinement of the stitched object over all patterns (0)",
    )
    _flag(p, "--refine_probe", action="store_true", help="refine the probe as well")
    _flag(
        p,
        "--refine_from",
        choices=["network", "flat"],
        default="network",
        help="refinement start: the network's reconstruction or a flat object (network)",
    )
    _hardware(p)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _flag(
        p, "--reconstruction", required=True, help="reconstruction.npz (or an NPZ with objectGuess)"
    )
    _flag(
        p,
        "--reference",
        "--test_data",
        dest="reference",
        required=True,
        help="NPZ holding objectGuess",
    )
    _flag(p, "--output_dir", required=True, help="where metrics.json and the figure go")
    _flag(p, "--pixel_size_m", type=_positive_float, default=None, help="object pixel size (m)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs")


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING if level == logging.INFO else level)


def _resolve_deprecated(args: argparse.Namespace) -> None:
    device = getattr(args, "deprecated_device", None)
    if device is not None:
        warnings.warn("--device is deprecated; use --accelerator", FutureWarning, stacklevel=2)
        logger.warning("--device is deprecated; use --accelerator")
        if args.accelerator is None:
            if device not in ("auto", "cpu", "gpu", "cuda", "mps"):
                raise DataError(
                    f"--device: expected one of auto, cpu, gpu, cuda, mps, got {device!r}"
                )
            args.accelerator = device


def refuse_existing(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Raise when ``out_dir`` already holds any of ``names`` and ``overwrite`` is off."""
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out_dir}: already holds {', '.join(existing)} from an earlier run; pass --overwrite"
        )


class _Terminated(BaseException):
    """Raised on SIGTERM (outside training, which stops gracefully by itself) so that the
    stack unwinds and locks and temporary files are removed; not an ``Exception``, so no
    ``except Exception`` in the library swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser()
    if prog:
        parser.prog = prog
    args = parser.parse_args(argv)
    _setup_logging(args)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        from ptychopinn import commands

        _resolve_deprecated(args)
        return int(getattr(commands, f"run_{args.command}")(args) or 0)
    except PtychoPINNError as exc:
        if args.debug:
            raise
        print(f"ptychopinn {args.command}: error: {exc}", file=sys.stderr)
        # a NaN loss stops training with 3, a signal with 128 + its number
        return int(getattr(exc, "exit_status", EXIT_USAGE))
    except KeyboardInterrupt:
        print(f"ptychopinn {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"ptychopinn {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def seed_main(command: str, argv: Sequence[str] | None = None) -> int:
    """Entry for the seed scripts: ``ptycho_train`` etc. map onto a ``ptychopinn`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main([command, *argv])


def print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
