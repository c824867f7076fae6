"""Quality at equal wall-clock time on corpora of different kinds: textgen's sizing vs its fixed defaults vs PyTorch.

For each corpus, three trainings with the same budget (--minutes of training clock, validation included),
one after the other on the same machine, each scored by its best validation loss (nats per character)
on the contiguous last 10% of the corpus:
- textgen --size auto (the default): the model sized for this corpus and budget;
- textgen --size fixed: the fixed defaults (2 x 512 units, dropout 0.3, weight decay 0.2);
- PyTorch: a plain nn.LSTM of the same size, batch and window as the auto run (benchmarks/peer_torch_train.py,
  in .venv-peers), Adam 2e-3, no schedule, no dropout.
The sizing rule was fitted on tinyshakespeare and the default corpus; the others are held out. Every corpus
is built from files already on the machine (nothing is downloaded); one that is missing is skipped.

    python benchmarks/bench_heldout.py [--minutes 2] [--only NAME,...] [--peer-python .venv-peers/bin/python]
"""

from __future__ import annotations

import argparse
import json
import re
from html import unescape
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ROOT, update_section  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "heldout"
SHARED = ROOT.parent / "shared" / "data"


def python_source(limit: int) -> str:
    """The running Python's standard library sources, in path order (the same text on any machine with
    this Python version)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("[a-z]*/*.py")):
        if "test" in path.parts[-2] or "site-packages" in str(path):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def rust_book() -> Optional[str]:
    """Long English prose: The Rust Programming Language (rustup's offline docs), tags stripped."""
    found = sorted(Path.home().glob(".rustup/toolchains/*/share/doc/rust/html/book/print.html"))
    if not found:
        return None
    html = found[0].read_text(encoding="utf-8")
    html = re.sub(r"(?s)<(script|style|pre|code)\b.*?</\1>", " ", html)
    text = unescape(re.sub(r"<[^>]+>", "", html))
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def shared(name: str) -> Callable[[], Optional[str]]:
    return lambda: (SHARED / name).read_text(encoding="utf-8") if (SHARED / name).exists() else None


def default_corpus() -> str:
    from textgen.data import DEFAULT_CORPUS, build_default_corpus

    return Path(build_default_corpus(ROOT / DEFAULT_CORPUS)).read_text(encoding="utf-8")


# name -> (kind, tuned on it?, builder)
CORPORA: dict[str, tuple[str, bool, Callable[[], Optional[str]]]] = {
    "tinyshakespeare": ("plays (English verse)", True, shared("tinyshakespeare.txt")),
    "pydoc-topics": ("the default corpus (docs)", True, default_corpus),
    "lstm-notes-zh": ("tiny Chinese text, 1,043 symbols", False, shared("lstm-notes-zh.txt")),
    "python-source": ("source code", False, lambda: python_source(1_500_000)),
    "rust-book": ("long prose (technical)", False, rust_book),
    "python-source-large": ("a large corpus (code)", False, lambda: python_source(10_000_000)),
}


def textgen_run(corpus: Path, name: str, minutes: float, size: str) -> dict:
    from textgen.batching import training_length
    from textgen.checkpoint import read_meta

    run = f"{name}-{size}"
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(OUT), "--run", run,
               "--overwrite", "--epochs", "1000", "--max-minutes", str(minutes), "--size", size]
    result = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"textgen failed on {name}:\n{result.stderr[-2000:]}")
    meta = read_meta(OUT / run, "last")
    lines = [line for line in result.stderr.splitlines() if line.startswith(("sizing", "training"))]
    epochs = meta.state.chars_seen / training_length(meta.corpus["length"], meta.training.val_fraction,
                                                        meta.training.val_max_chars)
    return dict(loss=meta.state.best_val_loss, model=meta.model, training=meta.training, log=lines,
                epochs=round(epochs, 3))


def peer_run(python: str, corpus: Path, minutes: float, auto: dict) -> dict:
    model, training = auto["model"], auto["training"]
    command = [python, str(ROOT / "benchmarks" / "peer_torch_train.py"), str(corpus), "--layers", str(model.layers),
               "--units", str(model.units), "--embedding", str(model.embedding_dim), "--batch",
               str(training.batch_size), "--seq", str(training.seq_length), "--minutes", str(minutes),
               "--val-fraction", str(training.val_fraction)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the PyTorch peer failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--only", default="", help="comma-separated corpus names (default: all)")
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name] or list(CORPORA)
    OUT.mkdir(parents=True, exist_ok=True)
    header = (f"budget {args.minutes:g} min of training clock per run; loss = best validation nats/char "
              "(last 10%, contiguous); lower is better")
    rows = [header, f"{'corpus':<20} {'kind':<34} {'tuned':<5} {'chars':>10} {'vocab':>5}  {'auto model':<22} "
                    f"{'auto':>6} {'fixed':>6} {'torch':>6}  {'auto-torch':>10} {'auto-fixed':>10}"]
    details = []
    for name in names:
        kind, tuned, build = CORPORA[name]
        text = build()
        if text is None:
            rows.append(f"{name:<20} skipped: not on this machine")
            continue
        corpus = OUT / f"{name}.txt"
        if not corpus.exists() or corpus.read_text(encoding="utf-8") != text:
            corpus.write_text(text, encoding="utf-8")
        auto = textgen_run(corpus, name, args.minutes, "auto")
        fixed = textgen_run(corpus, name, args.minutes, "fixed")
        torch = peer_run(args.peer_python, corpus, args.minutes, auto)
        model = auto["model"]
        shape = f"{model.layers}x{model.units} e{model.embedding_dim} b{auto['training'].batch_size}"
        rows.append(f"{name:<20} {kind:<34} {'yes' if tuned else 'no':<5} {len(text):>10,} {model.vocab_size:>5}  "
                    f"{shape:<22} {auto['loss']:>6.3f} {fixed['loss']:>6.3f} {torch['best_val_loss']:>6.3f}  "
                    f"{auto['loss'] - torch['best_val_loss']:>+10.3f} {auto['loss'] - fixed['loss']:>+10.3f}")
        details += [f"{name}: " + line for line in auto["log"][:1]]
        details.append(f"{name}: epochs auto {auto['epochs']}, fixed {fixed['epochs']}, torch {torch['epochs']} "
                       f"({torch['chars_per_s']:,} chars/s, torch {torch['torch']}, {torch['threads']} threads)")
        print("\n".join(rows[-1:] + details[-2:]), flush=True)
        if not args.no_record:  # after every corpus, so that a stopped run keeps what it measured
            update_section("Held-out corpora: quality at equal time",
                           ["benchmarks/bench_heldout.py", *sys.argv[1:]], "\n".join(rows + [""] + details))
    print("\n".join(rows + [""] + details))


if __name__ == "__main__":
    main()
