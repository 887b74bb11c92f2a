"""How big the server image is, estimated without a Docker engine: the slim lock vs plain mlflow.

    .venv/bin/python bench/image_size.py [--base-mb 130] [--json FILE]

Two venvs of the image's Python version, cached under .services/ (the first run builds them,
~1 min each on 2 cores; later runs only measure):

* **image**: docker/requirements.txt installed as the Dockerfile installs it (``--no-deps``,
  the same venv tests/test_image_requirements.py runs the server from);
* **plain**: ``pip install mlflow==<pin> PyMySQL==<pin> boto3==<pin> cryptography==<pin>``, an
  ordinary resolving install (what the image installed before the lock, and what the
  Dockerfile still does for an MLFLOW_VERSION other than the pin).

Image size = base image + what ``pip install`` adds to its site-packages. The added part is the
venv's site-packages measured with ``du`` (apparent sizes of files, like image layers count
them), without pip and setuptools, which the base image already has. The base,
python:3.11-slim-bookworm, cannot be measured here; ``--base-mb`` (default 130, the size
``docker images`` reports for it on linux/amd64) is used, and a from-parts cross-check is
printed: debian:bookworm-slim's published 74.8 MB + this machine's CPython install trimmed as
the official image trims it (no test directories, .pyc files or static libpython) + pip and
setuptools. That cross-check is an upper bound: this CPython is not stripped of debug symbols.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.image_venv import (
    cached_venv,
    dockerfile_python,
    image_venv_path,
    lock,
    python_for_image,
)

ROOT = Path(__file__).resolve().parent.parent

MB = 1_000_000
DEBIAN_SLIM_MB = 74.8  # debian:bookworm-slim, linux/amd64, as published
BASE_HAS = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")
PLAIN_PACKAGES = ("mlflow", "PyMySQL", "boto3", "cryptography")


def tree_bytes(
    path: Path, skip_dirs: tuple[str, ...] = (), skip: Callable[[Path], bool] | None = None
) -> int:
    """Apparent size of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for name in filenames:
            file = Path(dirpath, name)
            if not file.is_symlink() and not (skip and skip(file)):
                total += file.stat().st_size
    return total


def site_packages(venv: Path) -> Path:
    [found] = (venv / "lib").glob("python3.*/site-packages")
    return found


def added_bytes(venv: Path) -> tuple[int, dict[str, int]]:
    """Bytes pip added to site-packages (minus what the base has), and the biggest entries."""
    entries: dict[str, int] = {}
    for entry in site_packages(venv).iterdir():
        is_base = entry.name in BASE_HAS or entry.name.split("-")[0] in BASE_HAS
        if not is_base:
            entries[entry.name] = tree_bytes(entry) if entry.is_dir() else entry.lstat().st_size
    return sum(entries.values()), entries


def base_from_parts(image_venv: Path) -> float:
    """MB: debian slim + this CPython trimmed like the official image + pip and setuptools."""
    prefix = Path(sys.base_prefix)
    cpython = tree_bytes(
        prefix,
        skip_dirs=("test", "tests", "idle_test", "site-packages", "__pycache__"),
        skip=lambda p: p.suffix in (".pyc", ".pyo") or p.name.endswith(".a"),
    )
    base_site = sum(
        tree_bytes(e) if e.is_dir() else e.stat().st_size
        for e in site_packages(image_venv).iterdir()
        if e.name in BASE_HAS or e.name.split("-")[0] in BASE_HAS
    )
    return DEBIAN_SLIM_MB + (cpython + base_site) / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mb", type=float, default=130.0, help="python:3.11-slim size")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    python = python_for_image()
    if python is None:
        sys.exit(f"no python{dockerfile_python()} (the image's Python) on PATH")
    pins = lock()
    print("==> the image venv (the lock, --no-deps)", file=sys.stderr)
    image = image_venv_path(python)
    print("==> the plain venv (a resolving install of mlflow)", file=sys.stderr)
    wanted = [f"{name}=={pins[name.lower()]}" for name in PLAIN_PACKAGES]
    plain = cached_venv("image-size-plain", python, ["--no-cache-dir", *wanted])

    image_bytes, image_entries = added_bytes(image)
    plain_bytes, plain_entries = added_bytes(plain)
    image_mb = args.base_mb + image_bytes / MB
    plain_mb = args.base_mb + plain_bytes / MB
    parts_mb = base_from_parts(image)
    left_out = {k: v for k, v in plain_entries.items() if k not in image_entries}
    biggest_left_out = sorted(left_out.items(), key=lambda kv: -kv[1])[:8]

    print(f"\n## Server image size, estimated (mlflow {pins['mlflow']})\n")
    print("| image | base (MB) | pip adds (MB) | image (MB) |")
    print("|---|---:|---:|---:|")
    print(f"| plain `pip install {' '.join(wanted)}` | {args.base_mb:.0f} "
          f"| {plain_bytes / MB:.0f} | {plain_mb:.0f} |")  # fmt: skip
    print(f"| docker/requirements.txt (lock, `--no-deps`) | {args.base_mb:.0f} "
          f"| {image_bytes / MB:.0f} | {image_mb:.0f} |")  # fmt: skip
    print(f"\nimage / plain: **{image_mb / plain_mb:.2f}** "
          f"({plain_mb - image_mb:.0f} MB smaller); pip's part alone: "
          f"{image_bytes / plain_bytes:.2f}")  # fmt: skip
    print(
        f"\nbase cross-check from parts (upper bound): {parts_mb:.0f} MB -> image "
        f"{parts_mb + image_bytes / MB:.0f} MB vs plain {parts_mb + plain_bytes / MB:.0f} MB"
    )
    print("\nbiggest site-packages entries the lock leaves out (MB): " + ", ".join(
        f"{name} {size / MB:.0f}" for name, size in biggest_left_out
    ))  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mlflow": pins["mlflow"],
                    "base_mb": args.base_mb,
                    "base_from_parts_mb": round(parts_mb, 1),
                    "image_pip_mb": round(image_bytes / MB, 1),
                    "plain_pip_mb": round(plain_bytes / MB, 1),
                    "image_mb": round(image_mb, 1),
                    "plain_mb": round(plain_mb, 1),
                    "ratio": round(image_mb / plain_mb, 3),
                    "left_out_mb": {k: round(v / MB, 1) for k, v in biggest_left_out},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
