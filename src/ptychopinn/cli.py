"""``ptychopinn`` command line: simulate, check, train, infer, evaluate, demo.

``train``'s model and training flags are generated from the config fields
(:mod:`ptychopinn.options`). The seed interface (``python -m ptycho_torch.train`` /
``.inference``, ``ptycho_train``, ``ptycho_inference``, ``ptycho_evaluate``) runs the same
parsers, which accept the seed spellings (``--test_data_file``, ``--test_data``, ...) as
hidden aliases of one canonical flag each. User errors exit with status 2 and one line on
stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ptychopinn import __version__
from ptychopinn.errors import ConfigError, PtychoPINNError
from ptychopinn.io.outputs import os_error_message
from ptychopinn.options import add_config_arguments, spellings

logger = logging.getLogger("ptychopinn")

EXIT_USAGE = 2
ACCELERATORS = ["auto", "cpu", "gpu", "cuda", "mps"]
UNITS = ["auto", "amplitude", "counts"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _flag(parser: Any, name: str, *aliases: str, **kwargs: Any) -> None:
    """An option under ``name`` and each alias, each with its dash/underscore twin."""
    parser.add_argument(
        *spellings(name.lstrip("-"), tuple(a.lstrip("-") for a in aliases)), **kwargs
    )


def _hidden(parser: Any, dest: str, *names: str, **kwargs: Any) -> None:
    """Other spellings of an option that ``--help`` does not list (the seed vocabulary)."""
    flags = [s for n in names for s in spellings(n.lstrip("-"))]
    parser.add_argument(*flags, dest=dest, default=None, help=argparse.SUPPRESS, **kwargs)


def _number(kind: type, low: float | None = None, what: str = "a number") -> Any:
    """argparse type: ``kind`` parsed and checked against ``low`` (inclusive)."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (
            (low is not None and not value >= low)
            or value != value
            or value
            in (
                float("inf"),
                float("-inf"),
            )
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


POSITIVE_INT = _number(int, 1, "a positive integer")
POSITIVE = _number(float, 1e-300, "a positive number")
NON_NEGATIVE = _number(float, 0.0, "a number >= 0")
SEED = _number(int, 0, "an integer from 0 to 2**32 - 1")


def _auto_or(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: ``auto`` or a finite ``kind`` (int, float) >= 0."""

    def parse(text: str) -> Any:
        if text == "auto":
            return "auto"
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected auto or {what} >= 0, got {text!r}")
        return value

    return parse


_refine_passes = _auto_or(int, "a number of passes")
_adapt_seconds = _auto_or(float, "seconds")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def _units(parser: Any) -> None:
    _flag(
        parser,
        "--diffraction_units",
        choices=UNITS,
        default="auto",
        help="float diffraction data are amplitudes sqrt(counts) unless 'counts' (default auto)",
    )


def _memory(parser: Any) -> None:
    _flag(
        parser,
        "--max_memory_gb",
        type=POSITIVE,
        default=None,
        help="largest single allocation an input may ask for [GiB] (default: half the memory); "
        "a glitched position or an absurd step is refused before it is made",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ptychopinn", description="Physics-informed neural network ptychography")
    parser.add_argument("--version", action="version", version=f"ptychopinn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = (
        ("simulate", "simulate a scan and write a scan NPZ or HDF5 file", add_simulate_arguments),
        ("check", "validate a data file and print a summary", add_check_arguments),
        (
            "convert",
            "convert a scan between layouts (NPZ, HDF5, CXI, tike), cropping/binning the detector",
            add_convert_arguments,
        ),
        ("train", "train a model; writes RUN/wts.h5.zip, checkpoints, logs", add_train_arguments),
        ("infer", "reconstruct a scan with a trained model", add_infer_arguments),
        ("evaluate", "compare a reconstruction with a reference object", add_evaluate_arguments),
        (
            "live",
            "reconstruct a scan while it is measured (files, a growing HDF5 file, ZMQ), "
            "shown on a web page",
            add_live_arguments,
        ),
        (
            "demo",
            "simulate, train, reconstruct, score: the whole job (minutes)",
            add_demo_arguments,
        ),
    )
    for name, help_text, add in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        add(p)
    return parser


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "--output", "--output_file", required=True,
          help="file to write: .npz (scan NPZ) or .h5 (chunked HDF5, streamed to disk)")  # fmt: skip
    p.add_argument("--N", type=int, default=64, choices=[32, 64, 128, 256],
                   help="pattern size in pixels (64)")  # fmt: skip
    _flag(p, "--n_positions", type=POSITIVE_INT, default=None, help="scan positions (512)")
    _hidden(p, "deprecated_n_images", "--n_images", type=POSITIVE_INT)
    p.add_argument("--object", choices=["lines", "grf", "image", "shapes", "texture", "star"],
                   default="grf", help="random lines, Gaussian random field, natural image, "
                   "random shapes, power-law texture, Siemens star (grf)")  # fmt: skip
    p.add_argument("--probe", choices=["disk", "gaussian"], default="disk",
                   help="defocused disk (Fresnel-zone-like) or Gaussian (disk)")  # fmt: skip
    _flag(p, "--probe_file", default=None, help="NPZ whose probeGuess is used as the probe")
    p.add_argument("--scan", choices=["raster", "spiral", "random"], default="raster",
                   help="scan path (raster, with jitter)")  # fmt: skip
    _flag(p, "--step_px", type=POSITIVE, default=None, help="scan step [px] (default N/10)")
    _flag(p, "--jitter_px", type=NON_NEGATIVE, default=0.5,
          help="standard deviation of the random position error [px] (0.5)")  # fmt: skip
    _flag(p, "--photons", "--nphotons", type=NON_NEGATIVE, default=1e6,
          help="mean photons per pattern with Poisson noise; 0 = noise-free amplitudes (1e6)")  # fmt: skip
    p.add_argument("--seed", type=SEED, default=0, help="random seed (0)")
    _memory(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="scan NPZ, chunked HDF5 scan, or Ptychodus product .h5")
    _units(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _pair(text: str) -> tuple[float, float]:
    """``Y,X`` -> (y, x) floats."""
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X (two numbers), got {text!r}") from None
    return y, x


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="scan NPZ, chunked HDF5, CXI, tike/pty-chi NPZ or Ptychodus "
                   ".h5; with --reader, a beamline's raw file")  # fmt: skip
    p.add_argument("output", help="*.npz (scan NPZ, or --layout tike), *.h5 (chunked) or *.cxi")
    _flag(p, "--detector_crop", type=POSITIVE_INT, default=None, metavar="PIXELS",
          help="keep this many detector pixels around the zero frequency (object pixels grow; "
          "the probe is resampled)")  # fmt: skip
    _flag(p, "--detector_bin", type=POSITIVE_INT, default=1, metavar="B",
          help="sum B x B detector pixels (after the crop; the probe window shrinks) (1)")  # fmt: skip
    _flag(p, "--centre", type=_pair, default=None, metavar="Y,X",
          help="zero-frequency pixel of the input detector (default: measured)")  # fmt: skip
    _flag(p, "--no_centre_correction", action="store_true",
          help="leave a measured diffraction-centre offset alone (default: the probe gets the "
          "matching phase ramp)")  # fmt: skip
    _flag(p, "--reader", default=None, metavar="NAME",
          help="read the input with this Ptychodus diffraction reader (a beamline's raw files: "
          "NSLS_II_1, APS_Velociprobe, MAX_IV_NanoMAX, SLS_cSAXS, LCLS_XPP, ...; an unknown "
          "name lists them)")  # fmt: skip
    _flag(p, "--positions_file", default=None, metavar="FILE",
          help="with --reader: the file holding the positions (default: the input)")  # fmt: skip
    _flag(p, "--positions_reader", default=None, metavar="NAME",
          help="with --reader: Ptychodus position reader of that file (default: --reader)")  # fmt: skip
    _flag(p, "--probe", default=None, metavar="FILE",
          help="NPZ whose probeGuess (or probe) replaces the input's, at the input detector's "
          "size or the output's; with --probe_reader, any probe file Ptychodus reads")  # fmt: skip
    _flag(p, "--probe_reader", default=None, metavar="NAME",
          help="Ptychodus probe reader of --probe (NPY, CSV, fold_slice_mat, CXI, HDF5, ...)")  # fmt: skip
    _flag(p, "--probe_modes", type=POSITIVE_INT, default=None, metavar="K",
          help="give the probe K incoherent modes (extra ones small, for infer --refine_probe "
          "to shape)")  # fmt: skip
    _flag(p, "--positions", choices=["corner", "centre"], default="corner",
          help="tike/pty-chi layout: its scan positions are window corners or centres (corner)")  # fmt: skip
    _flag(p, "--background", type=NON_NEGATIVE, default=None, metavar="COUNTS",
          help="constant detector background per pixel and pattern of the input (counts); "
          "every likelihood then models it")  # fmt: skip
    _flag(p, "--flip_positions", choices=["x", "y", "xy"], default="",
          help="mirror the positions along these axes (a stage running against the detector)")  # fmt: skip
    _flag(p, "--swap_positions", action="store_true", help="exchange the positions' x and y")
    _flag(p, "--energy_eV", "--energy_ev", type=POSITIVE, default=None, help="photon energy [eV]")
    _flag(p, "--distance_m", type=POSITIVE, default=None, help="sample-detector distance [m]")
    _flag(p, "--detector_pixel_m", type=POSITIVE, default=None,
          help="detector pixel size [m] (before binning)")  # fmt: skip
    _flag(p, "--pixel_size_m", type=POSITIVE, default=None,
          help="object pixel size of the input patterns [m] (instead of the geometry)")  # fmt: skip
    _flag(p, "--layout", choices=["ptychopinn", "tike"], default="ptychopinn",
          help="layout of an .npz output (ptychopinn)")  # fmt: skip
    _units(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The run's data and output, the recipe, and one flag per config field."""
    run = p.add_argument_group("data, output and recipe")
    _flag(run, "--train_data", "--train_data_file", default=None,
          help="training scan (NPZ, chunked HDF5 scan or Ptychodus .h5)")  # fmt: skip
    _flag(run, "--val_data", default=None, help="validation scan (default: held-out groups)")
    _hidden(run, "val_data_seed", "--test_data_file", "--test_data")
    _flag(run, "--output_dir", default=None, help="run directory")
    from ptychopinn.presets import DEFAULT_RECIPE, RECIPES

    run.add_argument("--preset", choices=sorted(RECIPES), default=None,
                     help=f"recipe to start from (default {DEFAULT_RECIPE}; ptychopinn.presets); "
                     "--config and flags override its values")  # fmt: skip
    run.add_argument("--config", default=None,
                     help="JSON config {'model': {...}, 'training': {...}} over the recipe")  # fmt: skip
    _flag(run, "--print_config", action="store_true",
          help="print the resolved config (recipe < --config < flags) as JSON and exit")  # fmt: skip
    run.add_argument(
        "--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt"
    )
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run")
    _flag(run, "--disable_mlflow", action="store_true", help="same as --logger none")
    _hidden(run, "deprecated_device", "--device")
    _units(run)
    add_config_arguments(p)


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "--model_path", required=True, help="run directory or wts.h5.zip")
    _flag(p, "--data", default=None, help="scan to reconstruct")
    _hidden(p, "data_seed", "--test_data", "--test_data_file")
    _flag(p, "--output_dir", required=True, help="output directory")
    _flag(p, "--refine", type=_refine_passes, default="auto", metavar="auto|PASSES",
          help="likelihood refinement of the network's object: auto (until held-out patterns "
          "stop improving; never worse than the network alone), 0 (the network alone) or "
          "exactly PASSES passes (auto)")  # fmt: skip
    _flag(p, "--adapt", type=_adapt_seconds, default="auto", metavar="auto|S",
          help="fine-tune the model on this scan through the likelihood before it predicts: "
          "S seconds, 0 never, or auto (250 steps, about 10 s on 2 CPU cores, when the network "
          "explains the scan much worse than its training data: a new kind of sample) (auto)")  # fmt: skip
    _flag(p, "--refine_probe", action="store_true", help="refine the probe as well")
    _flag(p, "--refine_positions", nargs="?", const="free", default=None,
          choices=["free", "affine"], metavar="free|affine",
          help="correct the scan positions as well: each its own (free, the default when "
          "named) or one affine map of the given ones (affine); the corrected positions go "
          "to reconstruction.npz")  # fmt: skip
    _flag(p, "--export_scan", default=None, metavar="FILE",
          help="with --refine_positions: write the scan with the corrected positions to FILE "
          "(.npz or .h5; the given ones become its nominal positions)")  # fmt: skip
    _flag(p, "--refine_from", choices=["network", "flat"], default="network",
          help="refinement start: the network's reconstruction or a flat object (network)")  # fmt: skip
    _flag(p, "--batch_size", type=POSITIVE_INT, default=None,
          help="network inputs per forward pass (default 64 on a CPU, 256 on a GPU)")  # fmt: skip
    _flag(p, "--n_groups", "--n_images", type=POSITIVE_INT, default=None,
          help="number of groups to predict (default: all)")  # fmt: skip
    _flag(p, "--gridsize", type=int, default=None, help="must match the model's (checked)")
    p.add_argument("--N", type=int, default=None, help="must match the model's (checked)")
    _flag(p, "--stitch_weights", choices=["probe", "intensity", "support"], default="probe",
          help="overlap weighting on the object support: the probe's amplitude, its intensity, "
          "or flat (probe)")  # fmt: skip
    _flag(p, "--phase_sync", choices=["auto", "on", "off"], default="auto",
          help="align each patch's constant phase to its neighbours before stitching: on, off, "
          "or auto (on for a network that sees one pattern; for a channel model, whichever "
          "stitching the measured patterns are more likely under) (auto)")  # fmt: skip
    _flag(p, "--precision", default="auto",
          choices=["auto", "32-true", "bf16-mixed", "32", "bf16"],
          help="network precision: auto (float32), 32-true, or bf16-mixed (bfloat16 autocast) "
          "(auto)")  # fmt: skip
    _flag(p, "--pixel_size_m", type=POSITIVE, default=None,
          help="object pixel size [m], for resolutions in metrics")  # fmt: skip
    _flag(p, "--accelerator", choices=ACCELERATORS, default="auto",
          help="compute device (auto: a GPU when present)")  # fmt: skip
    _hidden(p, "deprecated_device", "--device")
    _units(p)
    _memory(p)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")


def add_live_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "--model_path", required=True, help="run directory or wts.h5.zip")
    _flag(p, "--watch", default=None, metavar="DIR|FILE.h5",
          help="directory the acquisition writes scan files into (each renamed into place "
          "whole; a file named END ends the scan), or one HDF5 scan it grows in SWMR mode")  # fmt: skip
    _flag(p, "--zmq", default=None, metavar="ADDRESS",
          help="read patterns from ZMQ messages instead (a PULL socket connected to "
          "ADDRESS, e.g. tcp://detector:5555)")  # fmt: skip
    _flag(p, "--zmq_bind", action="store_true", help="bind the ZMQ socket instead of connecting")
    _flag(p, "--output_dir", required=True, help="where infer's outputs go when the scan ends")
    p.add_argument("--port", type=int, default=8765, help="web page port (8765; 0: any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (127.0.0.1: this machine only)")  # fmt: skip
    _flag(p, "--expect", type=POSITIVE_INT, default=None, metavar="PATTERNS",
          help="the scan ends after this many patterns")  # fmt: skip
    _flag(p, "--refine", type=_refine_passes, default="auto", metavar="auto|PASSES",
          help="refinement of the final reconstruction, as in infer (auto)")  # fmt: skip
    _flag(p, "--no_live_refinement", action="store_true",
          help="no refinement passes between files (the page shows the network alone)")  # fmt: skip
    _flag(
        p,
        "--poll_s",
        type=POSITIVE,
        default=0.2,
        help="seconds between checks for new patterns (0.2)",
    )
    _flag(p, "--linger_s", type=NON_NEGATIVE, default=5.0,
          help="seconds the page stays up after the outputs are written (5)")  # fmt: skip
    _flag(p, "--accelerator", choices=ACCELERATORS, default="auto",
          help="compute device (auto: a GPU when present)")  # fmt: skip
    _units(p)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "--reconstruction", required=True,
          help="reconstruction.npz (or an NPZ with objectGuess)")  # fmt: skip
    _flag(p, "--reference", default=None, help="NPZ holding objectGuess")
    _hidden(p, "reference_seed", "--test_data")
    _flag(p, "--output_dir", required=True, help="where metrics.json and the figure go")
    _flag(p, "--pixel_size_m", type=POSITIVE, default=None, help="object pixel size [m]")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "--output_dir", default="ptychopinn_demo", help="output directory (ptychopinn_demo)")
    _flag(p, "--max_epochs", "--nepochs", type=POSITIVE_INT, default=None,
          help="training epochs (default: the default recipe's)")  # fmt: skip
    _flag(p, "--max_time", type=POSITIVE, default=None,
          help="stop training after this [s] (default: 195 s unless --max_epochs is given, so "
          "the demo ends within about 4 minutes on 2 CPU cores)")  # fmt: skip
    p.add_argument("--seed", type=SEED, default=0, help="random seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's outputs")
    _flag(p, "--accelerator", choices=ACCELERATORS, default="auto",
          help="compute device (auto: a GPU when present)")  # fmt: skip


@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Log messages (no levels, no times) to stderr while a command runs; the logging set-up
    of the process is restored afterwards (for callers of :func:`main` in-process, whose own
    handlers keep receiving the records meanwhile)."""
    root = logging.getLogger()
    level = root.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _resolve_aliases(args: argparse.Namespace) -> None:
    """Fold the hidden and deprecated spellings into the canonical options."""
    for canonical, seed in (("val_data", "val_data_seed"), ("data", "data_seed"),
                            ("reference", "reference_seed")):  # fmt: skip
        if getattr(args, seed, None) is not None and getattr(args, canonical, None) is None:
            setattr(args, canonical, getattr(args, seed))
    n_images = getattr(args, "deprecated_n_images", None)
    if n_images is not None:
        logger.warning("simulate --n_images is deprecated; use --n_positions")
        if args.n_positions is None:
            args.n_positions = n_images
    device = getattr(args, "deprecated_device", None)
    if device is not None:
        logger.warning("--device is deprecated; use --accelerator")
        if device not in ACCELERATORS:
            raise ConfigError(
                f"--device: expected one of {', '.join(ACCELERATORS)}, got {device!r}"
            )
        if args.command == "train" and getattr(args, "training.accelerator", None) is None:
            setattr(args, "training.accelerator", device)
        elif args.command == "infer":
            args.accelerator = device
    for command, name, flag in (
        ("infer", "data", "--data"),
        ("evaluate", "reference", "--reference"),
    ):
        if args.command == command and getattr(args, name, None) is None:
            raise ConfigError(f"the following argument is required: {flag}")
    if args.command == "train" and not args.print_config:
        for name in ("train_data", "output_dir"):
            if getattr(args, name) is None:
                raise ConfigError(f"the following argument is required: --{name}")


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
    with _logging_to_stderr(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command of ``args``, its errors as one line and an exit status."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        from ptychopinn import commands

        _resolve_aliases(args)
        if args.command == "live":  # its final reconstruction takes infer's options
            args.infer_args = build_parser().parse_args(
                [
                    "infer",
                    "--model_path",
                    args.model_path,
                    "--output_dir",
                    args.output_dir,
                    "--refine",
                    str(args.refine),
                ]  # fmt: skip
            )
        return int(getattr(commands, f"run_{args.command}")(args) or 0)
    except PtychoPINNError as exc:
        if args.debug:
            raise
        print(f"ptychopinn {args.command}: error: {exc}", file=sys.stderr)
        # a NaN loss stops training with 3, a signal with 128 + its number
        return int(getattr(exc, "exit_status", EXIT_USAGE))
    except BrokenPipeError:
        # the reader of our output went away (ptychopinn check f | head -1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"ptychopinn {args.command}: error: output closed (broken pipe)", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a full or read-only disk, permissions, ...
        if args.debug:
            raise
        print(f"ptychopinn {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        if args.debug:
            raise
        print(
            f"ptychopinn {args.command}: error: out of memory (--max_memory_gb bounds what an "
            "input may ask for; a smaller --batch_size needs less)",
            file=sys.stderr,
        )
        return EXIT_USAGE
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
