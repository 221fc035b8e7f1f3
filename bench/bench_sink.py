"""Time per optimizer step and the host's share of it: the per-step loop, dataset sink mode, and
mindcv's ``Model.train(dataset_sink_mode=True)`` on the same model, batch and data.

    python bench/bench_sink.py [--models quickstart,slab_swin_tiny] [--rounds 2] [--out bench/results]

Rows (each in a fresh process, interleaved round by round, medians over rounds):
- ``loop``: ``Stepper`` driven per step (loss and finite flag read back every step, PRepBN
  counters moved from Python), as ``train.py`` runs with ``dataset_sink_mode: false``;
- ``sink``: ``SinkLoop`` (``dataset_sink_mode: true``): the counters move in the graph, losses and
  flags stay on the device until the end of each sink of ``--sink_size`` steps;
- ``mindcv``: mindcv's ``create_trainer`` + ``Model.train(..., dataset_sink_mode=True)`` on our
  model (on CPU MindSpore runs it without a device queue, as it does ours).
Each step is forward, backward, gradient clipping at 5.0 and AdamW on synthetic batches from a
``mindspore.dataset`` pipeline. ``step ms``: wall time per optimizer step after the first
(compile) sink or step; ``graph ms``: time inside the compiled training cell per step; ``host ms``:
the rest (data iteration, Python, read-backs). Results go to ``bench/results/sink.md``.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {   # name: (registered model, constructor overrides, batch, image size, measured steps, sink size)
    "quickstart": ("slab_swin_tiny", dict(embed_dim=32, depths=[1, 1, 2], num_heads=[1, 2, 4], attn_type="LLS",
                                          window_size=8, num_classes=10, drop_path_rate=0.0), 32, 32, 40, 20),
    "slab_swin_tiny": ("slab_swin_tiny", dict(drop_path_rate=0.0), 4, 224, 6, 3),
}


class _Timed:
    """A callable that adds the time of each call to ``total`` (a cell's graph run on CPU)."""

    def __init__(self, inner):
        self.inner, self.total = inner, 0.0

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.inner(*args)
        self.total += time.perf_counter() - t
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def job(row, model, threads):
    import numpy as np
    import slab_ms  # oneDNN ISA before MindSpore loads
    import mindspore as ms
    import mindspore.dataset as ds
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from slab_ms.engine.schedule import apply_schedule
    from slab_ms.engine.sink import SinkLoop
    from slab_ms.engine.train_step import NetWithLoss, Stepper, make_loss_scaler
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    ms.set_seed(0)
    name, kw, batch, size, steps, sink_size = MODELS[model]
    warm_steps = sink_size   # the first sink (or as many single steps) compiles and is not timed
    total = warm_steps + steps
    net = slab_ms.create_model(name, img_size=size, **kw)
    apply_schedule(net, total // 2, 0)   # the mix runs through the measured steps
    rng = np.random.default_rng(0)
    n_cls = kw.get("num_classes", 1000)
    data = ds.NumpySlicesDataset({"x": rng.standard_normal((batch * total, 3, size, size)).astype(np.float32),
                                  "y": (np.arange(batch * total) % n_cls).astype(np.int32)},
                                 shuffle=False).batch(batch)
    loss = create_loss(name="CE", label_smoothing=0.1)
    opt = create_optimizer(net, opt="adamw", lr=[1e-4] * (total + 1), weight_decay=0.05,
                           weight_decay_filter="norm_and_bias")
    if row == "mindcv":
        from mindcv.utils import create_trainer
        from mindspore.train import Callback

        class Clock(Callback):
            def __init__(self):
                self.ends = []

            def on_train_step_end(self, run_context):
                self.ends.append(time.perf_counter())
        model_ = create_trainer(net, loss, opt, metrics=None, amp_level="O0", amp_cast_list=None,
                                loss_scale_type="fixed", loss_scale=1.0, drop_overflow_update=False, ema=False,
                                ema_decay=0.9999, clip_grad=True, clip_value=5.0, gradient_accumulation_steps=1)
        cell_cls = type(model_._train_network)
        timed = {"total": 0.0, "calls": 0}
        original = cell_cls.__call__

        def call(self, *args):
            t = time.perf_counter()
            out = original(self, *args)
            if timed["calls"] >= warm_steps:
                timed["total"] += time.perf_counter() - t
            timed["calls"] += 1
            return out
        cell_cls.__call__ = call
        clock = Clock()
        model_.train(1, data, callbacks=[clock], dataset_sink_mode=True)
        cell_cls.__call__ = original
        wall = clock.ends[-1] - clock.ends[warm_steps - 1]
        graph = timed["total"]
    else:
        stepper = Stepper(NetWithLoss(net, loss), opt, loss_scale=make_loss_scaler(), clip_value=5.0,
                          network=net, schedule="step" if row == "loop" else "forward")
        batches = data.create_tuple_iterator(num_epochs=1)
        if row == "loop":
            for _ in range(warm_steps):
                stepper.step(*next(batches))
            cells = {k: _Timed(v) for k, v in stepper._forward_steps.items()}
            stepper._forward_steps.update(cells)
            t = time.perf_counter()
            for _ in range(steps):
                stepper.step(*next(batches))
            wall = time.perf_counter() - t
            graph = sum(c.total for c in cells.values())
        else:
            loop = SinkLoop(stepper, sink_size)
            loop.run(batches, sink_size)
            cells = {k: _Timed(v) for k, v in loop.cells.items()}
            loop.cells.update(cells)
            t = time.perf_counter()
            for _ in range(steps // sink_size):
                loop.run(batches, sink_size)
            wall = time.perf_counter() - t
            graph = sum(c.total for c in cells.values())
    return {"row": row, "model": model, "step_ms": 1000 * wall / steps, "graph_ms": 1000 * graph / steps,
            "host_ms": 1000 * (wall - graph) / steps, "steps": steps, "batch": batch, "sink_size": sink_size}


def in_subprocess(row, model, threads):
    code = f"import json, sys; sys.argv = ['x']; from bench_sink import job; print('RESULT', json.dumps(job({row!r}, " \
           f"{model!r}, {threads})))"
    p = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(__file__)),
                       capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{row} {model} failed:\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rows", default="loop,sink,mindcv")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args()
    models, rows = args.models.split(","), args.rows.split(",")
    results, loads = [], []
    for r in range(args.rounds):
        for model in models:
            for row in rows:
                loads.append(os.getloadavg()[0])
                res = in_subprocess(row, model, args.threads)
                res["round"] = r
                results.append(res)
                print(json.dumps(res), flush=True)
    lines = [f"# Sink mode, measured {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} cores, "
             f"threads {args.threads}; {args.rounds} rounds interleaved, each row its own process; 1-min load "
             f"average {min(loads):.1f}-{max(loads):.1f})", "",
             "`python bench/bench_sink.py` (docstring: what each row runs). Medians over rounds.", "",
             "| model | batch | row | step ms | graph ms | host ms | vs loop | vs mindcv |",
             "|---|---|---|---|---|---|---|---|"]
    med = {}
    for model in models:
        for row in rows:
            got = [x for x in results if x["model"] == model and x["row"] == row]
            med[model, row] = {k: statistics.median(x[k] for x in got) for k in ("step_ms", "graph_ms", "host_ms")}
    for model in models:
        for row in rows:
            m = med[model, row]
            vs = {ref: (f"{m['step_ms'] / med[model, ref]['step_ms']:.2f}x" if (model, ref) in med else "-")
                  for ref in ("loop", "mindcv")}
            batch = MODELS[model][2]
            lines.append(f"| {model} | {batch} | {row} | {m['step_ms']:.1f} | {m['graph_ms']:.1f} | {m['host_ms']:.1f} "
                         f"| {vs['loop']} | {vs['mindcv']} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sink.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "sink.json"), "w") as f:
        json.dump({"results": results, "load_average": loads}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
