"""The package and its command lines as a user meets them: pip-installable with console scripts,
flags built from the config schema (kinds and choices checked, --help complete), launch scripts
that check before they start and never delete what they did not create."""
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, make_digits
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip wheel .``, installed with ``--no-deps`` into a fresh venv outside the checkout: ``(wheel,
    venv bin folder, the folder to run in)``. The venv sees this environment's packages (MindSpore,
    mindcv, ...) through a .pth file written after the install, so pip never sees the checkout's
    own (editable) slab-ms there, and the venv's slab_ms is the wheel's."""
    import sysconfig
    tmp = tmp_path_factory.mktemp("installed")
    wheels = tmp / "wheels"
    p = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), ROOT], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = wheels.glob("slab_ms-*.whl")
    venv = tmp / "venv"
    p = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    assert p.returncode == 0, p.stderr[-3000:]
    python = venv / "bin" / "python"
    p = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
             timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(site, "_slab_test_outer_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")   # this environment's packages, after the venv's own
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, venv / "bin", work


def test_wheel_installs_package_configs_and_console_scripts(installed):
    """The wheel holds every slab_ms package (engine and cli included), the shipped configs and the
    six console scripts; installed into a fresh venv, slab_ms comes from there, outside the source tree,
    and each script's usage line names the script."""
    wheel, bin_dir, work = installed
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
    shipped = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".yaml"))
    assert sorted(n[len("slab_ms/configs/"):] for n in names if n.startswith("slab_ms/configs/")) == shipped
    for dep in ("mindspore", "mindcv", "numpy", "pyyaml", "tqdm", "pillow", "matplotlib"):
        assert any(dep in r.lower() for r in requires), (dep, requires)
    for tool in TOOLS:
        assert f"slab-{tool} = slab_ms.cli.{tool}:main" in entry
    p = _run([str(bin_dir / "python"), "-c", "import slab_ms, os; print(os.path.dirname(slab_ms.__file__))"],
             cwd=work)
    assert p.stdout.strip().startswith(str(bin_dir.parent)) and not p.stdout.strip().startswith(ROOT), p.stdout
    for tool in TOOLS:
        p = _run([str(bin_dir / f"slab-{tool}"), "--help"], cwd=work)
        assert p.returncode == 0 and p.stdout.startswith(f"usage: slab-{tool} "), (tool, p.stdout[:200],
                                                                                  p.stderr[-1000:])
    p = _run([sys.executable, os.path.join(ROOT, "train.py"), "--help"])
    assert p.returncode == 0 and p.stdout.startswith("usage: train.py "), p.stdout[:200]


def test_installed_package_trains_a_shipped_config_outside_the_checkout(installed):
    """From a folder outside the checkout: ``--list-configs`` lists the shipped configs, ``--config
    NAME`` and the README's ``--config configs/NAME.yaml`` find them, a path still works, and the
    config's relative data_dir (data/digits) is taken from the current folder, as docs/training.md says.
    One epoch of the quick-start config at a tiny size, then slab-validate on its final.ckpt."""
    _, bin_dir, work = installed
    p = _run([str(bin_dir / "slab-train"), "--list-configs"], cwd=work)
    assert p.returncode == 0 and re.search(r"^quickstart_digits +slab_swin_tiny +Quickstart", p.stdout, re.M), \
        p.stdout + p.stderr[-1000:]
    assert len(p.stdout.strip().splitlines()) == len([f for f in os.listdir(os.path.join(ROOT, "configs"))
                                                      if f.endswith(".yaml")])
    p = _run([str(bin_dir / "slab-train"), "--config", "configs/slab_swin_t.yaml", "--data_dir", "nowhere"], cwd=work)
    assert p.returncode == 2 and _last_error(p).startswith("error: data directory nowhere/train not found"), \
        p.stderr[-1000:]   # the README's form, from outside the checkout: the config was found
    p = _run([str(bin_dir / "slab-train"), "--config", "slab_swin_x"], cwd=work)
    assert p.returncode == 2 and "did you mean slab_swin_t" in _last_error(p), p.stderr[-1000:]
    make_digits.build(str(work / "data" / "digits"), size=32)   # quickstart_digits.yaml: data_dir data/digits
    tiny = ["--model_kwargs", "{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, window_size: 8}",
            "--num_samples", "64"]
    p = _run([str(bin_dir / "slab-train"), "--config", "quickstart_digits", "--ckpt_save_dir", "out",
              "--epoch_size", "1", *tiny], cwd=work, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["config"].startswith(str(bin_dir.parent)), summary
    assert summary["config"].endswith(os.path.join("slab_ms", "configs", "quickstart_digits.yaml"))
    assert (work / "out" / "final.ckpt").is_file() and sorted(os.listdir(work)) == ["data", "out"]
    p = _run([str(bin_dir / "slab-validate"), "--config", "elsewhere/quickstart_digits.yaml"], cwd=work)
    assert p.returncode == 2 and _last_error(p) == "error: config file elsewhere/quickstart_digits.yaml not found"
    p = _run([str(bin_dir / "slab-validate"), "--config", summary["config"], "--model_kwargs", tiny[1],
              "--ckpt_path", "out/final.ckpt"], cwd=work)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["top1"] == pytest.approx(summary["top1"], abs=1e-6)


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


def test_make_digits_runs_again_on_a_tree_validation_has_read(tmp_path):
    """The quickstart run twice: the second make_digits.py keeps the tree (its mark matches) and counts
    its images although validation's content check cache now sits beside the class folders (it
    stopped at that file with NotADirectoryError)."""
    from slab_ms.engine.data import content_check_cache_files
    out = tmp_path / "digits"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "make_digits.py"), "--out", str(out)]
    first = _run(cmd)
    assert first.returncode == 0, first.stderr[-2000:]
    for split in ("train", "val"):
        with open(content_check_cache_files(str(out / split))[0], "w") as f:
            f.write("{}")
    again = _run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.strip().splitlines()[-1] == first.stderr.strip().splitlines()[-1]
    assert "(train 1433, val 364)" in again.stderr
