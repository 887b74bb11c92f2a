"""A user's script moving one artifact with the stock MLflow client, configured only by its
environment (the lines the helper printed): ``artifact_client.py FILE OUT_DIR`` logs FILE to a
new run, downloads it again into OUT_DIR, and prints the run id, the seconds up and down, then
how far its peak memory (VmHWM) rose above its memory at the start of the download, in MiB.
``artifact_client.py --upload-only FILE`` stops after the upload (for the interrupted-upload
test, which kills it half-way)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mlflow import MlflowClient


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(key)


def main(argv: list[str]) -> int:
    upload_only = argv[:1] == ["--upload-only"]
    if upload_only:
        argv = argv[1:]
    client = MlflowClient()
    experiment = client.create_experiment(f"artifacts-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id
    print(run_id, flush=True)
    started = time.monotonic()
    client.log_artifact(run_id, argv[0])
    print(f"{time.monotonic() - started:.2f}", flush=True)
    if upload_only:
        return 0
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the RSS now
    resident = status_kib("VmRSS")
    started = time.monotonic()
    client.download_artifacts(run_id, argv[0].rsplit("/", 1)[-1], argv[1])
    print(f"{time.monotonic() - started:.2f}", flush=True)
    print(f"{(status_kib('VmHWM') - resident) / 1024:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
