"""One source of truth for options: the config fields make the flags, recipes are named values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ptychopinn.cli import build_parser
from ptychopinn.config import Config, ModelConfig, TrainingConfig, field_choices, field_types
from ptychopinn.errors import ConfigError
from ptychopinn.options import config_overrides, resolve_config
from ptychopinn.presets import RECIPES, describe


def _parse(*flags: str):
    return build_parser().parse_args(
        ["train", "--train_data", "D.npz", "--output_dir", "R", *flags]
    )


def _config(*flags: str, preset: str | None = None, config_file=None) -> Config:
    args = _parse(*flags)
    return resolve_config(
        preset or args.preset, config_file or args.config, config_overrides(args), 64
    )[0]


@pytest.mark.parametrize("section", [ModelConfig, TrainingConfig])
def test_every_field_is_a_flag_with_its_help_and_choices(section):
    """Each flag-bearing field is a train flag; a Literal's choices are the flag's choices."""
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    actions = {a.dest: a for a in train._actions}
    hints = field_types(section)
    name = "model" if section is ModelConfig else "training"
    for f in dataclasses.fields(section):
        if not f.metadata["flag"]:
            assert f"{name}.{f.name}" not in actions
            continue
        action = actions[f"{name}.{f.name}"]
        assert action.help.startswith(f.metadata["help"].replace("%", "%%")[:30])
        assert f"--{f.name}" in action.option_strings
        choices = field_choices(hints[f.name])
        if choices is not None:  # every choice parses, anything else is refused
            for choice in choices:
                assert getattr(_parse(f"--{f.name}", str(choice)), f"{name}.{f.name}") == choice
            with pytest.raises(SystemExit):
                _parse(f"--{f.name}", "not-a-choice")


def test_the_defaults_are_the_overlap_recipe_on_every_device():
    """No recipe flags: the overlap-constrained recipe, whatever the accelerator."""
    for accelerator in ("auto", "cpu", "gpu"):
        config = _config("--accelerator", accelerator)
        m, t = config.model, config.training
        assert (m.gridsize, m.overlap_grid, m.overlap_stride) == (1, 3, 2)
        assert (m.architecture, m.norm_layer, m.merge_weights) == (
            "backprop_unet",
            "layer",
            "probe",
        )
        assert (t.max_epochs, t.batch_size, t.learning_rate, t.scheduler) == (
            20,
            16,
            1e-3,
            "cosine",
        )
        assert describe(config) == "overlap"
    assert Config().training.accelerator == "auto" and Config().training.precision == "auto"


def test_precedence_recipe_then_config_file_then_flags(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"training": {"max_epochs": 7, "batch_size": 4}}))
    config = _config("--max_epochs", "9", preset="fast", config_file=tmp_path / "c.json")
    fast = RECIPES["fast"]
    assert config.model.overlap_grid == fast["model"]["overlap_grid"] == 1  # the recipe
    assert config.training.batch_size == 4  # the file over the recipe
    assert config.training.max_epochs == 9  # the flag over the file
    assert describe(config).startswith("fast with")


def test_gridsize_keeps_its_upstream_meaning_and_overlap_is_separate():
    m = _config("--gridsize", "2").model
    assert (m.C, m.K) == (4, 9)  # four patterns as channels, nine inputs per overlap group
    m = _config("--gridsize", "2", "--overlap_grid", "1").model
    assert (m.C, m.K) == (4, 1)  # upstream: the channels' patches share one object


def test_seed_spellings_reach_the_same_fields():
    args = build_parser().parse_args(
        ["train", "--train_data_file", "D.npz", "--test_data_file", "V.npz", "--output_dir", "R",
         "--nepochs", "3", "--n_images", "5", "--learning-rate", "1e-4", "--num-workers", "0",
         "--deterministic"]
    )  # fmt: skip
    values = config_overrides(args)["training"]
    assert values == {
        "max_epochs": 3, "n_groups": 5, "learning_rate": 1e-4, "num_workers": 0, "deterministic": True
    }  # fmt: skip
    assert (args.train_data, args.val_data_seed) == ("D.npz", "V.npz")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--precision", "bogus"),
        ("--strategy", "bogus"),
        ("--devices", "abc"),
        ("--devices", "0"),
        ("--seed", "-1"),
        ("--seed", str(2**40)),
        ("--learning_rate", "0"),
        ("--max_time", "soon"),
        ("--warmup_fraction", "1.5"),
    ],
)
def test_bad_values_are_refused_at_parse_time(flag, value):
    with pytest.raises(SystemExit) as info:
        _parse(flag, value)
    assert info.value.code == 2


def test_max_time_takes_seconds_or_a_clock():
    assert _config("--max_time", "00:03:00").training.max_time == 180.0
    assert _config("--max_time", "90").training.max_time == 90.0


def test_incompatible_combinations_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="devices"):
        Config(training=TrainingConfig(devices="all"))
    with pytest.raises(ConfigError, match="mlflow"):
        Config(training=TrainingConfig(mlflow_tracking_uri="sqlite:///x.db"))
    with pytest.raises(ConfigError, match="supervised"):
        Config(model=ModelConfig(mode="supervised"), training=TrainingConfig(loss="mae"))


def test_print_config_shows_the_resolved_config(tmp_path, run_cli):
    result = run_cli(
        "train", "--print_config", "--preset", "upstream", "--max_epochs", "3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["model"]["architecture"] == "ptychopinn"  # the recipe
    assert printed["training"]["max_epochs"] == 3  # the flag
    assert "training.max_epochs: from flag" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_old_saved_configs_are_translated():
    """Bundles and checkpoints written before the overlap group had its own fields load."""
    from ptychopinn.config import migrate_saved_config

    old = {
        "model": {"N": 64, "gridsize": 3, "per_pattern": True, "group_stride": 2},
        "training": {"diffraction_units": "auto", "max_epochs": 20},
    }
    config = Config.from_dict(migrate_saved_config(old))
    m = config.model
    assert (m.gridsize, m.overlap_grid, m.overlap_stride, m.unet_input) == (1, 3, 2, "frame")
    channels = {"model": {"N": 64, "gridsize": 2, "per_pattern": False, "group_stride": 1}}
    m = Config.from_dict(migrate_saved_config(channels)).model
    assert (m.gridsize, m.overlap_grid) == (2, 1)


def test_refine_and_precision_values_are_checked_before_any_work(tmp_path, run_cli, user_error):
    """``--refine -1`` used to be refused only after the whole reconstruction had run."""
    for flag, value in (("--refine", "-1"), ("--refine", "some"), ("--precision", "16")):
        result = run_cli(
            "infer", "--model_path", "missing", "--data", "missing.npz", "--output_dir", "o",
            flag, value, cwd=tmp_path,
        )  # fmt: skip
        user_error(result, flag)  # the flag, not the missing files, is what is reported
    assert not (tmp_path / "o").exists()


def test_an_accelerator_that_is_missing_is_said_and_one_that_is_there_is_used(monkeypatch, caplog):
    """``--accelerator mps`` used to run on the CPU silently; ``auto`` takes a CUDA GPU."""
    import torch

    from ptychopinn import device

    with caplog.at_level("WARNING", logger="ptychopinn.device"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        assert device.torch_device("mps").type == "cpu"
        assert "MPS is not available" in caplog.text
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert device.torch_device("cuda").type == "cpu"
        assert "no CUDA GPU" in caplog.text
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.torch_device("mps").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.resolve_accelerator("auto") == "gpu"
    assert device.torch_device("auto").type == "cuda"


def test_supervised_validation_without_labels_is_refused_before_training(tmp_path, tiny_scan):
    """It used to die mid-run with a bare KeyError."""
    import dataclasses

    from ptychopinn import workflows as pp
    from ptychopinn.errors import DataError

    unlabelled = dataclasses.replace(tiny_scan, object=None, patches=None, source="val.npz")
    config = Config(model=ModelConfig(N=32, mode="supervised"))
    with pytest.raises(DataError, match="val.npz: supervised validation needs"):
        pp.train(config, tiny_scan, tmp_path / "run", val_scan=unlabelled, progress=False)
    assert not (tmp_path / "run").exists()


def test_diffraction_units_is_no_longer_a_training_field():
    """It was validated and stored but never read; saved configs holding it still load."""
    with pytest.raises(ConfigError, match="unknown keys"):
        Config.from_dict({"training": {"diffraction_units": "counts"}})
    from ptychopinn.config import migrate_saved_config

    saved = {"model": {"N": 32}, "training": {"diffraction_units": "counts"}}
    assert Config.from_dict(migrate_saved_config(saved)).training.max_epochs == 20


def test_the_demo_trains_the_default_recipe_within_its_time_limit():
    """The demo is the default recipe; its time limit (which keeps it near 4 minutes on 2 CPU
    cores) applies only when neither epochs nor a time are asked for."""
    from ptychopinn.demo import DEMO_TRAINING_S, demo_config

    plain = demo_config(None, None, 0, "cpu")
    assert plain.training.max_time == DEMO_TRAINING_S
    assert (
        dataclasses.replace(plain.training, max_time=None, accelerator="auto") == TrainingConfig()
    )
    assert plain.model == ModelConfig(N=64)
    assert demo_config(5, None, 0, "cpu").training.max_time is None
    assert demo_config(None, 60.0, 0, "cpu").training.max_time == 60.0
