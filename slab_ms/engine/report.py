"""Run records: history.json (per epoch, survives resumes), summary.json and curves.png."""
import json
import os

from ..io import write_json

__all__ = ["plot_curves", "read_history", "write_json"]


def read_history(path, upto_epoch, upto_step=None):
    """The history of epochs ``<= upto_epoch`` (and optimizer steps ``<= upto_step``) from an
    earlier (interrupted) run, else empty."""
    if not os.path.isfile(path):
        return {"epochs": [], "steps": []}
    try:
        with open(path) as f:
            h = json.load(f)
        return {"epochs": [e for e in h["epochs"] if e["epoch"] <= upto_epoch],
                "steps": [s for s in h["steps"] if s["epoch"] <= upto_epoch + (upto_step is not None)
                          and (upto_step is None or s["step"] <= upto_step)]}
    except (OSError, ValueError, KeyError, TypeError):
        return {"epochs": [], "steps": []}


def plot_curves(history, path, title):
    """PNG with the training loss, validation accuracy and PRepBN lambda against optimizer steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = history["steps"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8)
    axes[0].set(title="training loss", xlabel="optimizer step")
    ppl = [e for e in history["epochs"] if e.get("val_ppl") is not None]
    if ppl:   # a language model
        axes[1].plot([e["step"] for e in ppl], [e["val_ppl"] for e in ppl], "o-")
        axes[1].set(title="validation perplexity", xlabel="optimizer step")
    else:
        epochs = [e for e in history["epochs"] if e.get("top1") is not None]
        axes[1].plot([e["step"] for e in epochs], [100 * e["top1"] for e in epochs], "o-", label="top-1")
        axes[1].plot([e["step"] for e in epochs], [100 * e["top5"] for e in epochs], "s--", label="top-5")
        axes[1].set(title="validation accuracy (%)", xlabel="optimizer step")
        axes[1].legend()
    lam = [s for s in steps if s.get("lambda") is not None]
    axes[2].plot([s["step"] for s in lam], [s["lambda"] for s in lam], lw=1.2)
    axes[2].set(title="PRepBN lambda (LayerNorm weight)", xlabel="optimizer step", ylim=(-0.05, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
