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


def test_user_errors_exit_2_with_their_message_and_bugs_keep_their_traceback(tmp_path, monkeypatch):
    """One root, UserError, for what a user can fix; a bare ValueError is a bug, not exit 2."""
    import stages.index
    from prvr.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["synth", str(tmp_path / "w"), "--preset", "no-such-preset"])
    assert out.exit_code == 2 and "unknown synth preset 'no-such-preset'" in out.output

    tiny = make_release(tmp_path / "release")
    cfg_path = write_release_config(tmp_path / "tiny.yaml", tiny, tmp_path / "store.zarr", tmp_path / "runs")

    def bug(*args, **kwargs):
        raise ValueError("a programming error")

    monkeypatch.setattr(stages.index, "build_index", bug)
    out = runner.invoke(app, ["index", str(cfg_path)])
    assert out.exit_code != 2 and isinstance(out.exception, ValueError)
    assert str(out.exception) == "a programming error"


def test_every_user_facing_error_is_a_user_error_and_keeps_its_old_base():
    from configs.schema import ConfigError
    from flows.ingest import IngestIncomplete
    from flows.model import StoreIncomplete
    from prvr.errors import UsageError, UserError
    from prvr.ui_snapshots import BrowserMissing
    from stages.annotations import AnnotationError
    from stages.manifest import ManifestError
    from stages.release import ReleaseError
    from stages.release_formats import ReleaseFormatError
    from stages.search import QueryError
    from stages.weights import WeightsUnavailable
    from storage.checkpoints import CheckpointError
    from storage.features import StoreError
    from storage.index import SearchIndexError
    from storage.lease import LeaseLost, StoreBusy
    from synth.generate import WorldExists, WorldMissing

    old_bases = {ConfigError: ValueError, ManifestError: ValueError, ReleaseError: ValueError,
                 ReleaseFormatError: ValueError, AnnotationError: ValueError, QueryError: ValueError,
                 WeightsUnavailable: ValueError, UsageError: ValueError, StoreError: RuntimeError,
                 SearchIndexError: RuntimeError, CheckpointError: RuntimeError, StoreBusy: RuntimeError,
                 LeaseLost: RuntimeError, StoreIncomplete: RuntimeError, IngestIncomplete: RuntimeError,
                 BrowserMissing: RuntimeError, WorldExists: FileExistsError,
                 WorldMissing: FileNotFoundError}
    for error, base in old_bases.items():
        assert issubclass(error, UserError) and issubclass(error, base), error


def test_problem_lists_are_written_one_way():
    from prvr.errors import problem_list

    text = problem_list("3 problems", ["a", "b", "c"], limit=2)
    assert text == "3 problems:\n  - a\n  - b\n  ... and 1 more"
    assert problem_list("one", ["x"]) == "one:\n  - x"
