"""Generate text with a LLaMA: ``python generate.py --ckpt X.ckpt --tokenizer tokenizer.model --prompt "..."``.

``--ckpt`` is a checkpoint written by ``convert.py`` (its ``X.config.json`` next to it, or
``--config``), or a Hugging Face folder / weights file converted in memory. ``--tokenizer`` is a
SentencePiece model file (upstream's LLaMA ``tokenizer.model``; none is bundled); its vocabulary
must match the model's. Prompts come from ``--prompt`` (repeatable) and/or ``--prompts FILE`` (one
per line), generated as one left-padded batch. ``--prompt-ids 1,5,9`` skips the tokenizer.

Greedy by default; ``--do_sample`` with ``--temperature``, ``--top_k``, ``--top_p`` and ``--seed``.
A fixed-length KV cache compiles one prefill and one one-token graph (GRAPH_MODE); ``--no-cache``
recomputes the whole prefix per token. ``--reparam`` folds every PRepBN into the adjacent linear
layers first. Prints each continuation, then a line with the timings and tokens/s, then one JSON line.
"""
import argparse
import json
import sys

from .. import errors
from . import prog, report


def _read_prompts(args):
    prompts = list(args.prompt or [])
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise errors.ConfigError(f"--prompts {args.prompts}: {e.strerror or e}") from None
    return prompts


def main(argv=None):
    p = argparse.ArgumentParser(prog=prog("generate.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="X.ckpt from convert.py, or an HF folder / weights file")
    p.add_argument("--config", help="the checkpoint's config (default: X.config.json next to X.ckpt)")
    p.add_argument("--tokenizer", help="SentencePiece model file (tokenizer.model)")
    p.add_argument("--prompt", action="append", help="a prompt; repeatable")
    p.add_argument("--prompts", help="a file of prompts, one per line (generated as one padded batch)")
    p.add_argument("--prompt-ids", help="comma-separated token ids instead of text (no tokenizer needed)")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reparam", action="store_true", help="fold the PRepBN norms into the linear layers first")
    p.add_argument("--no-cache", dest="use_cache", action="store_false",
                   help="recompute the whole prefix for every token (no KV cache)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="compute dtype (default: the checkpoint's)")
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    args = p.parse_args(argv)
    import mindspore as ms
    from ..convert.hf import load_llama
    from ..lm.generation import GenerationStats, generate, generate_text
    from ..layers.reparam import reparameterize
    from ..lm.tokenizer import load_tokenizer
    try:
        ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
        prompts = _read_prompts(args)
        if args.prompt_ids is None and not prompts:
            raise errors.ConfigError("give --prompt, --prompts FILE or --prompt-ids")
        if args.prompt_ids is None and not args.tokenizer:
            raise errors.ConfigError("text prompts need --tokenizer (a SentencePiece model file)")
        net = load_llama(args.ckpt, config=args.config, dtype=args.dtype)
        tok = load_tokenizer(args.tokenizer, net.config["vocab_size"]) if args.tokenizer else None
        if args.reparam:
            reparameterize(net)
        stats = GenerationStats()
        kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=args.use_cache, stats=stats)
        if args.prompt_ids is not None:
            try:
                ids = [[int(t) for t in args.prompt_ids.split(",") if t.strip()]]
            except ValueError:
                raise errors.ConfigError(f"--prompt-ids must be comma-separated integers, "
                                         f"got {args.prompt_ids!r}") from None
            out = generate(net, ids, **kwargs)
            texts = [tok.decode(out[0, len(ids[0]):].tolist())] if tok else [None]
            prompts = [args.prompt_ids]
        else:
            texts, out = generate_text(net, tok, prompts, **kwargs)
        for prompt, text, row in zip(prompts, texts, out):
            print(f">>> {prompt}")
            print(text if text is not None else " ".join(map(str, row.tolist())))
        print(stats.summary())
    except (errors.SlabError, ValueError) as e:
        report(e)
        return 2 if isinstance(e, errors.ConfigError) else 1
    print(json.dumps({"ids": out.tolist(), "texts": texts, "new_tokens": stats.new_tokens,
                      "prefill_s": round(stats.prefill_s, 6),
                      "decode_tokens_per_s": None if stats.decode_tokens_per_s != stats.decode_tokens_per_s
                      else round(stats.decode_tokens_per_s, 3),
                      "use_cache": args.use_cache, "reparam": args.reparam}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
