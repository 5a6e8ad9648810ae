"""Fixtures compose: demo registry -> settings -> app -> client. Everything is real."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import ADMIN_TOKEN, postgres_store

from app.main import create_app
from app.settings import Settings
from app.store import SqlStore, open_store
from app.training import train_demo


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three demo models, trained once per session through our own training code."""
    root = tmp_path_factory.mktemp("demo") / "models"
    train_demo(root)
    return root


@pytest.fixture
def models_dir(tmp_path: Path, demo_models: Path) -> Path:
    """A private copy of the demo registry, free to modify."""
    root = tmp_path / "models"
    shutil.copytree(demo_models, root)
    return root


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, data_dir=tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def admin_settings(tmp_path: Path, models_dir: Path) -> Settings:
    """The demo registry with the admin API on (ADMIN_TOKEN) and no periodic rescan: the admin
    API rescans itself, and a test of POST /admin/reload needs a change left to it."""
    return Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        reload_interval_seconds=0,
    )


@pytest.fixture
def admin(admin_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A new, empty store on each backend: a SQLite file, and a schema of its own on the test
    PostgreSQL. The store contract tests take this one; PostgreSQL is never optional in CI
    (helpers.postgres_admin)."""
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
        yield opened
        opened.close()
        return
    with postgres_store("steward_test") as opened:
        yield opened
