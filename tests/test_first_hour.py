"""What a new user meets in the first hour (the issue "What a new user trips on"): a refused run
leaves nothing behind and names the user's own mistake, best.ckpt is the best model the run made,
the installed package runs outside the checkout, the multi-node launcher asks for what it needs,
and a script that imports slab_ms exits without MindSpore's teardown noise."""
import os
import subprocess
import sys
import textwrap

from conftest import ROOT


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
