"""Command-line behaviour not covered by the stage tests."""

from __future__ import annotations

from typer.testing import CliRunner

from tests.release_fixtures import make_release, write_release_config


def test_stack_snapshot_without_a_server_says_so(tmp_path, monkeypatch):
    from prvr.cli import app

    tiny = make_release(tmp_path / "release")
    cfg_path = write_release_config(tmp_path / "tiny.yaml", tiny, tmp_path / "store.zarr", tmp_path / "runs")
    monkeypatch.setenv("PRVR_STACK_DIR", str(tmp_path / "stack"))
    out = CliRunner().invoke(app, ["stack", "snapshot", str(cfg_path), "--port", "9"])
    assert out.exit_code == 1 and "no Prefect server at http://127.0.0.1:9/api" in out.output
