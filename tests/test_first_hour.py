"""What a new user meets in the first hour (the issue "What a new user trips on"): a refused run
leaves nothing behind and names the user's own mistake, best.ckpt is the best model the run made,
the installed package runs outside the checkout, the multi-node launcher asks for what it needs,
and a script that imports slab_ms exits without MindSpore's teardown noise."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

import slab_ms
from conftest import ROOT, make_digits

TINY_KWARGS = "{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, window_size: 8}"


def _run(cmd, cwd=ROOT, env=None, timeout=300):
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def test_a_script_that_keeps_models_to_the_end_exits_quietly(tmp_path):
    """Cells still referenced at interpreter exit (a SLAB model, a mindcv model) printed one
    ``Exception ignored in: <function Cell.__del__>`` traceback each from MindSpore's teardown."""
    script = tmp_path / "api.py"
    script.write_text(textwrap.dedent("""\
        import slab_ms
        import mindcv
        net = slab_ms.create_model("slab_swin_tiny", num_classes=10, embed_dim=16, depths=[1, 1, 1, 1],
                                   num_heads=[1, 2, 4, 8])
        slab_ms.reparameterize(net)
        assert slab_ms.remaining_norms(net) == []
        other = mindcv.create_model("resnet18")
        print("done")
        """))
    p = _run([sys.executable, str(script)], cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip().endswith("done"), p.stderr[-2000:]
    assert "Exception ignored" not in p.stderr, p.stderr[-2000:]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data") / "digits")
    make_digits.build(out, size=32)
    return out


def _linked_digits(digits, root):
    """The digits tree as symlinks (cheap to spoil): ``root``."""
    for split in ("train", "val"):
        for c in sorted(os.listdir(os.path.join(digits, split))):
            if os.path.isdir(os.path.join(digits, split, c)):
                os.makedirs(root / split / c)
                for f in os.listdir(os.path.join(digits, split, c)):
                    os.symlink(os.path.join(digits, split, c, f), root / split / c / f)
    return root


def _train_in(folder, argv, capsys):
    """train.py's main run in ``folder`` (in this process: no interpreter start per case);
    ``(exit status, last stderr line)``."""
    from slab_ms.cli.train import main
    here = os.getcwd()
    os.chdir(folder)
    try:
        code = main(argv)
    finally:
        os.chdir(here)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_a_refused_run_creates_nothing_and_names_the_users_mistake(digits, tmp_path, capsys):
    """Every start-up check runs before ckpt_save_dir or train.log exists, and nothing appears in the
    current folder; an error about a key the user never set says it is a default."""
    bad = _linked_digits(digits, tmp_path / "bad")
    (bad / "train" / "3" / "0000_empty.png").write_bytes(b"")
    quick = ["--config", "quickstart_digits", "--ckpt_save_dir", "out", "--model_kwargs", TINY_KWARGS]
    cases = [
        ([], 2, r"^error: no --config and no --model: give --config NAME or FILE \(train.py --list-configs"),
        (["--epoch_size", "1"], 2, "no --config and no --model"),
        (["--model", "slab_swin_tiny", "--epoch_size", "1"], 2,
         r"warmup_epochs 20 \(default\) must be within 0..epoch_size, which is 1 \(the command line\); set "
         "--warmup_epochs too"),
        (["--model", "slab_swin_tiny", "--num_classes", "10"], 2,
         r"data directory ./train not found .*\[data_dir './': the default, .*give --data_dir\]"),
        (quick + ["--model", "slab_swin_tiyn", "--data_dir", digits], 2,
         r"unknown model 'slab_swin_tiyn' \(did you mean 'slab_swin_tiny'.*16 classification models \(list_models"
         r"\(\)\).*4 detection backbones \(list_models\('detection'\)\).*3 language models"),
        (quick + ["--data_dir", str(tmp_path / "nowhere")], 2, "data directory .*nowhere/train not found"),
        (quick + ["--data_dir", digits, "--num_classes", "7"], 2, "num_classes is 7 but .* has 10 class folders"),
        (quick + ["--data_dir", str(bad), "--max_bad_images", "0"], 2, "more than max_bad_images=0"),
        (quick + ["--data_dir", digits, "--prepbn_steps", "100000"], 2, "ends after the run"),
        (quick + ["--data_dir", digits, "--resume", str(tmp_path / "missing.ckpt")], 1, "missing.ckpt"),
    ]
    for argv, code, pattern in cases:
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        got, last = _train_in(cwd, argv, capsys)
        assert got == code and re.search(pattern, last), (argv, got, last)
        assert os.listdir(cwd) == [], (argv, os.listdir(cwd))   # no out/, no ./ckpt/train.log, nothing
        cwd.rmdir()


def _main(module, argv, capsys):
    """A tool's main(argv) in this process: ``(exit status, stdout, last stderr line)``."""
    import importlib
    code = importlib.import_module(f"slab_ms.cli.{module}").main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return code, out, lines[-1] if lines else ""


def test_an_unknown_model_is_one_error_everywhere(capsys):
    """train.py said 'see slab_ms.list_models()' (exit 2), convert.py listed 16 names (exit 1) and
    create_model 23 unexplained ones: now one message, exit 2, the closest names first and the
    registered names by task (list_models() is the 16 classification models)."""
    from slab_ms.errors import ConfigError
    _, _, train_line = _main("train", ["--model", "slab_swin_tiyn"], capsys)
    code, _, convert_line = _main("convert", ["--from", "torch", "--model", "slab_swin_tiyn", "--input", "x.pth",
                                              "--output", "y.ckpt"], capsys)
    assert code == 2 and convert_line == train_line, (convert_line, train_line)
    assert train_line.startswith("error: unknown model 'slab_swin_tiyn' (did you mean 'slab_swin_tiny'")
    with pytest.raises(ConfigError) as e:
        slab_ms.create_model("slab_swin_tiyn")
    assert f"error: {e.value}" == train_line
    for task, what in (("classification", "classification models (list_models())"),
                       ("detection", "detection backbones (list_models('detection'))"),
                       ("language", "language models (list_models('language'))")):
        names = slab_ms.list_models(task)
        assert f"{len(names)} {what}: {', '.join(names)}" in train_line, task
    assert len(slab_ms.list_models()) == 16


def test_convert_explains_counts_and_a_wrong_model_and_validate_export_a_wrong_num_classes(digits, tmp_path,
                                                                                          capsys):
    """The two directions' tensor counts differ by the buffers upstream stores and MindSpore computes,
    and say so; a checkpoint refused as --model X that reads as another architecture says to leave
    --model out; a checkpoint with another number of classes says which --num_classes (validate.py)
    or --set num_classes= (export.py) fits."""
    from slab_ms.checkpoint import save_ms_checkpoint
    kw = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], attn_type="SS", img_size=56, num_classes=4)
    net = slab_ms.create_model("slab_swin_tiny", **kw)
    params = {k: v.asnumpy() for k, v in net.parameters_and_names()}
    ckpt, pth = str(tmp_path / "four.ckpt"), str(tmp_path / "four.pth")
    save_ms_checkpoint(params, ckpt)
    sets = [f"--set={k}={v}".replace(" ", "") for k, v in kw.items() if k != "num_classes"]
    code, out, err = _main("convert", ["--from", "mindspore", "--model", "slab_swin_tiny", "--input", ckpt,
                                       "--output", pth, *sets, "--set=num_classes=4"], capsys)
    n = len(params)
    assert code == 0, err
    forth = re.search(r"converted (\d+) tensors .*\((\d+) parameters \+ (\d+) buffers that upstream's model stores "
                      r"and the MindSpore model computes: relative_position_index / attn_mask\)", out)
    assert forth and int(forth[1]) == n + int(forth[3]) and int(forth[2]) == n and int(forth[3]) > 0, out
    code, out, err = _main("convert", ["--from", "torch", "--input", pth, "--output", str(tmp_path / "back.ckpt")],
                           capsys)
    assert code == 0, err
    back = re.search(r"converted (\d+) tensors of (\w+) .*\(the \.pth's other (\d+) tensors are buffers the MindSpore "
                     r"model computes: (\d+) relative_position_index, (\d+) attn_mask; checked", out)
    assert back and int(back[1]) == n and int(back[3]) == int(forth[3]) == int(back[4]) + int(back[5]), out

    code, _, err = _main("convert", ["--from", "torch", "--model", "slab_deit_tiny", "--input", pth, "--output",
                                     str(tmp_path / "deit.ckpt")], capsys)
    assert code == 1 and err.startswith(f"error: {pth} reads as {back[2]}, not slab_deit_tiny: leave out "
                                        "--model to infer the architecture; "), err   # back[2]: what it inferred

    model_kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in kw.items() if k not in ("img_size", "num_classes")) + "}"
    code, _, err = _main("validate", ["--model", "slab_swin_tiny", "--model_kwargs", model_kwargs, "--image_resize",
                                      "56", "--num_classes", "10", "--data_dir", digits, "--ckpt_path", ckpt], capsys)
    assert code == 1 and "head.weight [4, 32] vs model [10, 32]" in err and err.endswith(
        "; the checkpoint's classifier has 4 classes: pass --num_classes 4"), err
    code, _, err = _main("export", ["--model", "slab_swin_tiny", *sets, "--ckpt_path", ckpt, "--output",
                                    str(tmp_path / "four.mindir")], capsys)
    assert code == 1 and err.endswith("; the checkpoint's classifier has 4 classes: pass --set num_classes=4"), err


def test_validate_without_a_config_fits_the_cpu_count_and_names_a_refused_model_value(digits, tmp_path, capsys):
    """Without a config the data pipeline's default of 8 workers (mindcv's ImageNet configs ask for 8)
    is capped at the CPU count: MindSpore refused it with a traceback on a 2-core machine. A value the
    model refuses (here the Swin GELU) is one line, exit 2, like an unknown model."""
    from slab_ms.checkpoint import save_ms_checkpoint
    kw = dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], attn_type="LS", window_size=8)
    net = slab_ms.create_model("slab_swin_tiny", img_size=32, num_classes=10, **kw)
    ckpt = str(tmp_path / "tiny.ckpt")
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, ckpt)
    args = ["--model", "slab_swin_tiny", "--image_resize", "32", "--num_classes", "10", "--data_dir", digits,
            "--ckpt_path", ckpt, "--num_parallel_workers", str((os.cpu_count() or 1) + 6)]
    code, out, err = _main("validate", args + ["--model_kwargs", TINY_KWARGS], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["images"] == 364
    code, _, err = _main("validate", args + ["--model_kwargs", "{gelu: erf}"], capsys)
    assert code == 2 and err == "error: bad arguments for slab_swin_tiny: gelu must be one of exact, tanh, " \
                                "got 'erf'", err


def test_best_ckpt_is_the_best_model_the_run_made(digits, tmp_path, capsys):
    """A one-epoch quick-start run recalibrates BN after its only validation: best.ckpt used to be
    saved before that (validate.py: 60.7% on best.ckpt, 85.7% on final.ckpt at the quick start's
    size). Now the recalibrated model is best.ckpt unless an epoch validated higher."""
    out = tmp_path / "run"
    p = _run([sys.executable, os.path.join(ROOT, "train.py"), "--config", "quickstart_digits", "--data_dir", digits,
              "--ckpt_save_dir", str(out), "--model_kwargs", TINY_KWARGS, "--num_samples", "320", "--epoch_size", "1"],
             cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Exception ignored" not in p.stderr, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["bn_recalibrated_batches"] > 0 and summary["best_epoch"] == 1
    top1 = {}
    for name in ("best", "final"):
        code, got, err = _main("validate", ["--config", "quickstart_digits", "--data_dir", digits, "--model_kwargs",
                                            TINY_KWARGS, "--ckpt_path", str(out / f"{name}.ckpt")], capsys)
        assert code == 0, err
        top1[name] = json.loads(got.strip().splitlines()[-1])["top1"]
    assert top1["best"] >= top1["final"], top1
    assert top1["best"] == pytest.approx(summary["best_top1"], abs=1e-6), (top1, summary)
    assert top1["final"] == pytest.approx(summary["top1"], abs=1e-6), (top1, summary)
    assert summary["best_recalibrated"] == (top1["best"] == top1["final"])


SCRIPT = os.path.join(ROOT, "scripts", "run_distribute.sh")


def test_run_distribute_help_and_multi_node_settings(tmp_path):
    """--help exits 0 with a two-node example and the settings; with NNODES > 1 the launcher refuses to
    start without MASTER_ADDR and MASTER_PORT (each node used to pick its own random port), and the
    settings are checked before Python starts; nothing is created."""
    p = _run(["bash", SCRIPT, "--help"], cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("usage: bash scripts/run_distribute.sh CONFIG"), p.stderr
    for text in ("NNODES=2 NODE_RANK=0 MASTER_ADDR=", "NNODES=2 NODE_RANK=1 MASTER_ADDR=", "CLUSTER_TIME_OUT",
                 "[600, msrun's default]", "BIND_CORE", "--bind_core) [false]"):
        assert text in p.stdout, text
    cases = [({"NNODES": "2"}, "error: NNODES=2 needs MASTER_ADDR (node 0's address, the same on every node)"),
             ({"NNODES": "2", "MASTER_ADDR": "10.0.0.1"}, "error: NNODES=2 needs MASTER_PORT (one free port, the "
              "same on every node; each node would pick its own)"),
             ({"NNODES": "2", "NODE_RANK": "2"}, "error: NODE_RANK must be within 0..1 (NNODES=2), got '2'"),
             ({"CLUSTER_TIME_OUT": "soon"}, "error: CLUSTER_TIME_OUT must be seconds"),
             ({"BIND_CORE": "maybe"}, "error: BIND_CORE must be true or false, got 'maybe'")]
    env = {k: "" for k in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CLUSTER_TIME_OUT", "BIND_CORE")}
    for settings, message in cases:
        p = _run(["bash", SCRIPT, "quickstart_digits", "1", "--ckpt_save_dir", "out"], cwd=tmp_path,
                 env=dict(env, **settings), timeout=60)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [p.stderr.strip()], (settings, p.stderr)
        assert p.stderr.strip().startswith(message), (settings, p.stderr)
    assert os.listdir(tmp_path) == []


def test_two_nodes_on_localhost_train_as_one_world(digits, tmp_path):
    """Two launchers with NNODES=2, NODE_RANK 0 and 1, one worker each and the same MASTER_ADDR and
    MASTER_PORT make one world of 2 with identical replicas; node 1 starts no second scheduler (on
    one host msrun would start one per launcher, and node 1's run failed)."""
    import socket
    from conftest import assert_identical_replicas
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "out"
    cmd = ["bash", SCRIPT, "quickstart_digits", "1", "--data_dir", digits, "--ckpt_save_dir", str(out),
           "--model_kwargs", TINY_KWARGS, "--num_samples", "64", "--epoch_size", "1", "--bn_recalibrate_epochs", "0",
           "--log_interval", "1"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               NNODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, CLUSTER_TIME_OUT="300")
    nodes = []
    for rank in (0, 1):
        log = open(tmp_path / f"node{rank}.txt", "w")   # files, not pipes: msrun writes a lot and must never block
        nodes.append((subprocess.Popen(cmd, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT, text=True,
                                       env=dict(env, NODE_RANK=str(rank)), start_new_session=True), log))
    try:
        codes = [proc.wait(timeout=600) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
    texts = [(tmp_path / f"node{rank}.txt").read_text() for rank in (0, 1)]
    assert codes == [0, 0], [t[-3000:] for t in texts]
    assert "== msrun: 2 node(s) x 1 worker(s), node rank 1" in texts[1]
    summary = assert_identical_replicas(out)
    assert summary["world_size"] == 2 and summary["global_batch"] == 64 and summary["steps"] == 2, summary
    assert json.loads(texts[0].strip().splitlines()[-1])["world_size"] == 2   # node 0 prints the summary
