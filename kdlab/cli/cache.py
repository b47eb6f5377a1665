"""``kdlab cache list`` and ``kdlab cache clear [--teachers] [--outputs] [--views] [--data]``: what kdlab keeps under
``$KDLAB_CACHE_DIR`` (default ``$KDLAB_HOME/cache``), and removing it.

Layout (``docs/faults.md``): ``teachers/<fingerprint>/`` (``state_dict.pt``, ``meta.json`` with its checksum),
``outputs/<fingerprint>.pt`` and ``.json`` (a teacher's logits over every split; for streamed data a folder
``outputs/<fingerprint>/`` of memory-mapped arrays with their checksums in its ``meta.json``), ``views/<key>/``
(the teacher's logits over K augmented views of the training rows, ``teacher.mode: views``), ``data/`` (what data
plugins generate or download). Everything there can be rebuilt; clearing it costs only the time to rebuild."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from kdlab import paths

KINDS = ("teachers", "outputs", "views", "data")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _entries(kind: str) -> list[Path]:
    folder = paths.cache_base() / kind
    if not folder.is_dir():
        return []
    items = sorted(folder.iterdir())
    if kind == "outputs":  # an entry is <fp>.pt with its <fp>.json, or a folder of arrays (streamed data)
        items = [p for p in items if p.is_dir() or p.suffix == ".pt"
                 or (p.suffix == ".json" and not p.with_suffix(".pt").exists())]
    return items


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _describe_teacher(entry: Path) -> str:
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return "(no readable meta.json: removed and rebuilt on next use)"
    acc = (meta.get("metrics") or {}).get("teacher_val_accuracy")
    parts = [str(meta.get("name", "?"))]
    if acc is not None:
        parts.append(f"val_accuracy {acc:.4f}")
    if meta.get("run_id"):
        parts.append(f"run {meta['run_id']}")
    return "  ".join(parts)


def main(args: argparse.Namespace) -> int:
    kinds = [k for k in KINDS if getattr(args, k, False)] or list(KINDS)
    base = paths.cache_base()
    if args.action == "list":
        print(f"kdlab cache: {base}")
        for kind in kinds:
            entries = _entries(kind)
            total = sum(_size(e) for e in entries)
            print(f"{kind:<9} {len(entries):>4} entr{'y' if len(entries) == 1 else 'ies'}  {_mib(total)}")
            for e in entries:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.stat().st_mtime))
                about = _describe_teacher(e) if kind == "teachers" else ""
                print(f"  {e.name[:40]:<40} {_mib(_size(e)):>10}  {when}  {about}".rstrip())
        return 0
    removed = []
    for kind in kinds:
        entries = _entries(kind)
        total = sum(_size(e) for e in entries)
        folder = base / kind
        if folder.is_dir():
            shutil.rmtree(folder)
        removed.append(f"{kind}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({_mib(total)})")
    print(f"kdlab cache: cleared {base}: " + ", ".join(removed))
    return 0
