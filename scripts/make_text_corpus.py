"""Write a small real English text corpus (JSON lines) from text that ships with Python.

``pydoc_data.topics.topics``: the documentation topics behind ``help('if')`` and friends (about
80 topics, ~65k words of the Python reference manual; the exact text follows the Python version).
One JSON line per topic, in sorted topic order: {"text": <topic text>, "title": <topic name>}.
No download.

    python scripts/make_text_corpus.py --out data/pydoc.jsonl

Idempotent: an existing file with the same content is left alone (exit 0); a different one is
refused unless --force. Prints one JSON line {"output", "documents", "words"}.
"""
import argparse
import json
import os
import sys
import tempfile


class CorpusError(Exception):
    """A file in the way: printed as ``error: <message>``, exit 2."""


def corpus_text():
    """``(jsonl text, documents, words)`` of the pydoc topics."""
    from pydoc_data.topics import topics

    lines = [json.dumps({"text": topics[name], "title": name}, ensure_ascii=False) for name in sorted(topics)]
    words = sum(len(topics[name].split()) for name in topics)
    return "".join(line + "\n" for line in lines), len(lines), words


def write(out, force=False):
    """Write the corpus to ``out``; returns ``(summary, written)``. CorpusError for a file in the way."""
    text, docs, words = corpus_text()
    data = text.encode("utf-8")
    summary = {"output": out, "documents": docs, "words": words}
    if os.path.isfile(out):
        with open(out, "rb") as f:
            if f.read() == data:
                return summary, False
        if not force:
            raise CorpusError(f"{out} exists with other content; pass --force to overwrite it")
    elif os.path.exists(out):
        raise CorpusError(f"{out} exists and is not a file")
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".corpus-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return summary, True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the .jsonl file to write")
    p.add_argument("--force", action="store_true", help="overwrite a file with other content")
    args = p.parse_args(argv)
    try:
        summary, written = write(args.out, args.force)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out} ({e.strerror or e})", file=sys.stderr)
        return 2
    if not written:
        print(f"{args.out} is already up to date", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
