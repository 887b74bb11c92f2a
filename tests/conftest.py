"""Session-wide real services: MariaDB (TLS required, like Aurora), a moto server (its ranged S3
GETs read only the range, as S3's: ``tests/support/moto_ranged.py``), and the RDS Data API
emulator in front of that MariaDB."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the program's packages (infra, projects, helper) live at the root
    sys.path.insert(0, str(ROOT))

from tests.support.data_api_emulator import DataApiEmulator, running_data_api  # noqa: E402
from tests.support.services import MariaDB, MotoServer, running_mariadb, running_moto  # noqa: E402


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    with running_mariadb() as server:
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="session")
def data_api(mariadb: MariaDB, moto: MotoServer) -> Iterator[DataApiEmulator]:
    """The RDS Data API of the test "cluster" (MariaDB), reading secrets from moto."""
    with running_data_api(mariadb, moto) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def image_venv() -> Path:
    """The server image's packages in a venv, installed as the Dockerfile installs them
    (tests/test_image_requirements.py); skipped without the image's Python."""
    from tests.support.image_venv import dockerfile_python, image_venv_path, python_for_image

    python = python_for_image()
    if python is None:
        pytest.skip(f"the image runs Python {dockerfile_python()}; no such python on PATH")
    return image_venv_path(python)


@pytest.fixture(autouse=True)
def private_helper_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's helpers remember connection secrets (helper/trust.py) in a state directory
    of their own, never in the user's ``~/.local/state`` (children inherit it)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
