"""--save-dir: bodies saved whole, under safe names, never outside the directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import LOOPBACK
from hostile import HostileServer
from pytest_httpserver import HTTPServer

from pooledfetch import FetchConfig, fetch_all
from pooledfetch import results as rc
from pooledfetch.cli import cli
from pooledfetch.demo import DemoServer
from pooledfetch.errors import ConfigError
from pooledfetch.saving import PARTIAL_SUFFIX, file_name


def test_bodies_are_saved_whole_with_the_path_in_the_row(demo_server: DemoServer, tmp_path: Path) -> None:
    urls = [f"{demo_server.base_url}/bytes/{size}" for size in (0, 10, 200_000)] + [f"{demo_server.base_url}/gzip"]
    results = sorted(fetch_all(urls, FetchConfig(save_dir=str(tmp_path), retries=0)), key=lambda r: r.index)

    for result in results:
        saved = Path(result.saved_path)
        assert saved.parent == tmp_path
        assert saved.name.startswith(f"{result.index:08d}-{LOOPBACK}")
        assert saved.stat().st_size == result.bytes
    assert json.loads(Path(results[3].saved_path).read_bytes())["method"] == "GET"  # decoded, not gzip
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    "path",
    ["/../../etc/passwd", "/%2e%2e/%2e%2e/x", "/a/..%2f..%2fb", "/.hidden", "/ünï/cödé", "/" + "x" * 500],
)
def test_hostile_paths_stay_inside_the_directory(path: str, tmp_path: Path) -> None:
    name = file_name(7, f"http://example.test{path}")
    assert "/" not in name and "\\" not in name
    assert name.startswith("00000007-example.test")
    assert len(name) <= 9 + 120
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_a_link_planted_at_the_partial_name_is_not_followed(httpserver: HTTPServer, tmp_path: Path) -> None:
    """The body was written through a symlink at NAME.part, to wherever it pointed."""
    httpserver.expect_request("/ok").respond_with_data("body")
    save_dir = tmp_path / "bodies"
    save_dir.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    url = httpserver.url_for("/ok")
    (save_dir / (file_name(0, url) + PARTIAL_SUFFIX)).symlink_to(outside)
    (result,) = fetch_all([url], FetchConfig(save_dir=str(save_dir)))
    assert (result.status, result.error) == (200, "")
    assert outside.read_text() == "untouched"
    saved = Path(result.saved_path)
    assert not saved.is_symlink() and saved.read_text() == "body"


def test_content_disposition_cannot_choose_the_name(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/report").respond_with_data(
        "data", headers={"Content-Disposition": 'attachment; filename="../../escaped.txt"'}
    )
    save_dir = tmp_path / "bodies"
    save_dir.mkdir()
    (result,) = fetch_all([httpserver.url_for("/report")], FetchConfig(save_dir=str(save_dir)))
    assert Path(result.saved_path).parent == save_dir
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == [Path(result.saved_path).name]


def test_a_body_that_fails_leaves_no_file(
    hostile_server: Callable[[], HostileServer], demo_server: DemoServer, tmp_path: Path
) -> None:
    urls = [hostile_server().url("short-body"), f"{demo_server.base_url}/bytes/50000"]
    config = FetchConfig(save_dir=str(tmp_path), retries=0, read_timeout=2, max_bytes=20_000)
    results = list(fetch_all(urls, config))
    assert {result.error for result in results} == {rc.PROTOCOL, rc.BODY_TOO_LARGE}
    assert all(result.saved_path == "" for result in results)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_cannot_be_written_is_a_save_error(demo_server: DemoServer, tmp_path: Path) -> None:
    url = f"{demo_server.base_url}/get"
    # A directory where the body's partial file would go: opening it fails, even for root.
    (tmp_path / (file_name(0, url) + PARTIAL_SUFFIX)).mkdir()
    (result,) = fetch_all([url], FetchConfig(save_dir=str(tmp_path)))
    assert (result.status, result.error, result.saved_path) == (200, rc.SAVE, "")
    assert "cannot save" in result.error_detail


def test_the_cli_creates_the_directory_and_exports_saved_path(demo_server: DemoServer, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{demo_server.base_url}/html\n")
    save_dir = tmp_path / "new" / "dir"
    result = CliRunner().invoke(cli, [str(urls), "-q", "--save-dir", str(save_dir), "-o", "-"])
    assert result.exit_code == 0
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert Path(row["saved_path"]).read_bytes().startswith(b"<!doctype html>")


def test_a_run_rejected_leaves_no_save_dir_behind(tmp_path: Path) -> None:
    """--save-dir NEW was made while the options were read, before a later one was refused."""
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    save_dir = tmp_path / "new"
    result = CliRunner().invoke(cli, [str(urls), "--save-dir", str(save_dir), "--base-url", "ftp://x/"])
    assert result.exit_code == 2
    assert not save_dir.exists()


def test_the_library_makes_a_save_dir_not_there_yet(demo_server: DemoServer, tmp_path: Path) -> None:
    save_dir = tmp_path / "new" / "dir"
    (result,) = fetch_all([f"{demo_server.base_url}/get"], FetchConfig(save_dir=str(save_dir)))
    assert Path(result.saved_path).parent == save_dir


def test_save_dir_must_be_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match="--save-dir"):
        FetchConfig(save_dir=str(not_a_dir))
