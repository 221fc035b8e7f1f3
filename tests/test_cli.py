"""The package and its command lines as a user meets them: pip-installable with console scripts,
flags built from the config schema (kinds and choices checked, --help complete), launch scripts
that check before they start and never delete what they did not create."""
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from slab_ms.engine.config import SCHEMA, ConfigError, choices_of, load_config, parse_overrides

TOOLS = ("train", "validate", "convert", "export", "infer", "generate")


def _run(cmd, cwd=ROOT, env=None, timeout=300):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def _last_error(p):
    lines = p.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def test_only_bool_keys_go_without_a_value():
    for argv in (["--ckpt_save_dir", "--epoch_size", "30"], ["--data_dir"], ["--resume", "--lr", "1e-3"]):
        with pytest.raises(ConfigError, match="expected one argument"):
            parse_overrides(argv)
    cfg = load_config(None, parse_overrides(["--ema", "--clip-grad", "false", "--epoch_size", "30"]))
    assert (cfg.ema, cfg.clip_grad, cfg.epoch_size) == (True, False, 30)


def test_values_are_checked_against_kind_and_choices(tmp_path):
    with pytest.raises(ConfigError, match="'bicubci' is not one of .*did you mean 'bicubic'"):
        load_config(None, parse_overrides(["--interpolation", "bicubci"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("opt: adamv\n")
    with pytest.raises(ConfigError, match=f"opt in {bad}: 'adamv' is not one of .*did you mean 'adam'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="epoch_size in the command line: expected int"):
        load_config(None, parse_overrides(["--epoch_size", "3.5"]))
    with pytest.raises(ConfigError, match="unknown config key 'lrr' .*did you mean 'lr'"):
        parse_overrides(["--lrr", "1"])
    # every interpolation offered is one MindSpore knows (mindcv silently falls back to bilinear otherwise)
    from mindspore.dataset.vision import Inter
    assert all(hasattr(Inter, name.upper()) for name in choices_of("interpolation"))


@pytest.mark.parametrize("tool", ["train", "validate"])
def test_help_lists_every_key_with_kind_default_and_choices(tool):
    p = _run([sys.executable, os.path.join(ROOT, f"{tool}.py"), "--help"])
    assert p.returncode == 0, p.stderr[-2000:]
    text = " ".join(p.stdout.split())   # argparse wraps the help lines
    for key, spec in SCHEMA.items():
        assert f"--{key}" in text, key
        assert f"{spec[1]}, default {spec[0]!r}" in text, key
    assert "one of: bilinear, bicubic, nearest" in text and "one of: adamw, adam, sgd" in text
    if tool == "validate":
        assert "--use_ema" in text and "--split" in text


def test_cli_errors_are_one_line(tmp_path):
    p = _run([sys.executable, os.path.join(ROOT, "train.py"), "--config",
              os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "--ckpt_save_dir", "--epoch_size", "30"])
    assert p.returncode == 2 and p.stderr.strip() == \
        "error: argument --ckpt_save_dir/--ckpt-save-dir: expected one argument", p.stderr
    assert not os.path.exists(os.path.join(ROOT, "true"))   # the old parser made a folder named 'true'
    p = _run([sys.executable, os.path.join(ROOT, "validate.py"), "--config",
              os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "--interpolation", "bicubci"])
    assert p.returncode == 2 and p.stderr.strip().startswith("error: interpolation in the command line"), p.stderr


def test_wheel_installs_package_and_console_scripts(tmp_path):
    """``pip wheel .`` holds every slab_ms package (engine and cli included) and the five console
    scripts; installed into a separate folder, ``slab-train --help`` works from outside the source tree."""
    wheels = tmp_path / "wheels"
    p = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), ROOT], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = wheels.glob("slab_ms-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    packages = sorted(os.path.relpath(d, ROOT) for d, _, files in os.walk(os.path.join(ROOT, "slab_ms"))
                      if "__init__.py" in files)
    assert "slab_ms/engine" in packages and "slab_ms/cli" in packages
    for pkg in packages:
        assert f"{pkg}/__init__.py" in names, pkg
    for dep in ("mindspore", "mindcv", "numpy", "pyyaml", "tqdm", "pillow", "matplotlib"):
        assert any(dep in r.lower() for r in requires), (dep, requires)
    for tool in TOOLS:
        assert f"slab-{tool} = slab_ms.cli.{tool}:main" in entry
    target = tmp_path / "site"
    p = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)])
    assert p.returncode == 0, p.stderr[-3000:]
    env = {"PYTHONPATH": str(target)}
    p = _run([str(target / "bin" / "slab-train"), "--help"], cwd=str(tmp_path), env=env)
    assert p.returncode == 0 and "--interpolation" in p.stdout, p.stderr[-2000:]
    p = _run([sys.executable, "-c", "import slab_ms, os; print(os.path.dirname(slab_ms.__file__))"],
             cwd=str(tmp_path), env=env)
    assert p.stdout.strip() == str(target / "slab_ms")


def test_run_distribute_checks_config_and_data_before_launching(tmp_path):
    """Relative paths are the caller's; a missing data tree is one line before msrun starts (no logs
    folder, no workers)."""
    cfg = tmp_path / "my.yaml"
    cfg.write_text("model: slab_swin_tiny\nnum_classes: 10\ndata_dir: nowhere\nckpt_save_dir: out\n")
    script = os.path.join(ROOT, "scripts", "run_distribute.sh")
    p = _run(["bash", script, "my.yaml", "2"], cwd=str(tmp_path))
    assert p.returncode == 2, p.stderr
    assert _last_error(p) == "error: data directory nowhere/train not found (data_dir='nowhere', split='train')"
    assert not (tmp_path / "out").exists() and "msrun" not in p.stdout
    p = _run(["bash", script, "missing.yaml"], cwd=str(tmp_path))
    assert p.returncode == 2 and _last_error(p).startswith("error: config file missing.yaml not found")
    p = _run(["bash", script, "my.yaml", "--interpolation", "bicubci"], cwd=str(tmp_path))
    assert p.returncode == 2 and "'bicubci' is not one of" in _last_error(p)


def test_scripts_never_delete_a_folder_they_did_not_create(tmp_path):
    """make_digits.py refuses a non-empty folder it did not make; quickstart.sh ignores OUT from the
    caller's environment and refuses an output folder without its mark (here QUICKSTART_OUT, a
    folder of this test's own: the checkout's output/quickstart is never looked at), before it
    sets up any environment (PYTHON=false would stop that); the user's files survive."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    p = _run([sys.executable, os.path.join(ROOT, "scripts", "make_digits.py"), "--out", str(mine)])
    assert p.returncode != 0 and "is not a digits tree made by this script" in p.stderr
    out = tmp_path / "quickstart"
    out.mkdir()
    (out / "notes.txt").write_text("not quickstart's")
    p = _run(["bash", os.path.join(ROOT, "scripts", "quickstart.sh")],
             env={"OUT": str(mine), "QUICKSTART_OUT": str(out), "PYTHON": "false"}, timeout=60)
    assert p.returncode == 2 and _last_error(p) == (f"error: {out} exists and was not made by "
                                                     "scripts/quickstart.sh; move it away and run again"), p.stderr
    assert (mine / "keep.txt").read_text() == "user data"
    assert (out / "notes.txt").read_text() == "not quickstart's"
    assert sorted(os.listdir(out)) == ["notes.txt"] and sorted(os.listdir(mine)) == ["keep.txt"]
