"""The engine's own entry-point reader agrees with importlib_metadata, and defers to it when it must."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import importlib_metadata
import pytest
from xpscerpto import _entry_points
from xpscerpto._entry_points import EntryPoint, entry_points
from xpscerpto._plugins import ENTRY_POINT_GROUP, load_providers

GROUPS = ["console_scripts", "pytest11", ENTRY_POINT_GROUP, "xps.test.group", "no.such.group"]


def _theirs(group: str) -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in importlib_metadata.entry_points(group=group)]


def _ours(group: str) -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in entry_points(group)]


def _dist(site: Path, folder: str, entry_points_txt: str, name: str | None = None) -> Path:
    dist = site / folder
    dist.mkdir(parents=True)
    project = name or folder.partition("-")[0]
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points_txt)
    return dist


@pytest.fixture
def sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    return first, second


@pytest.mark.parametrize("group", GROUPS)
def test_the_real_environment_reads_the_same_either_way(group: str) -> None:
    assert _entry_points._plain_layout()
    assert _ours(group) == _theirs(group)


def test_first_distribution_of_a_name_on_sys_path_wins_and_file_order_is_kept(sites: tuple[Path, Path]) -> None:
    first, second = sites
    text = "# comment\n; another\n\n[xps.test.group]\nb = mod_b:attr\n a=mod_a [extra]\n[other]\nc = mod_c\n"
    _dist(first, "Xps_Test.Dist-1.0.dist-info", text)
    _dist(second, "xps_test_dist-2.0.dist-info", "[xps.test.group]\nshadowed = nothing\n")
    _dist(second, "xps_other-1.0.egg-info", "[xps.test.group]\nfrom_egg_info = mod_e:f\n")
    assert _ours("xps.test.group") == _theirs("xps.test.group")
    assert _ours("xps.test.group") == [("b", "mod_b:attr"), ("a", "mod_a [extra]"), ("from_egg_info", "mod_e:f")]
    assert _ours("other") == [("c", "mod_c")]


def test_a_zip_on_sys_path_is_read_by_importlib_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "dists.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\nVersion: 1.0\n")
        z.writestr("zipped-1.0.dist-info/entry_points.txt", "[xps.test.group]\nzipped = zmod:obj\n")
    monkeypatch.syspath_prepend(str(archive))
    assert not _entry_points._plain_layout()
    assert ("zipped", "zmod:obj") in _ours("xps.test.group")
    assert _ours("xps.test.group") == _theirs("xps.test.group")


def test_a_sys_path_entry_that_is_a_path_object_defers_to_importlib_metadata(
        sites: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = sites
    _dist(first, "pathdist-1.0.dist-info", "[xps.test.group]\nfound = pmod:obj\n")
    monkeypatch.setattr(sys, "path", [Path(first), *sys.path])
    assert not _entry_points._plain_layout()
    assert ("found", "pmod:obj") in _ours("xps.test.group")
    assert _ours("xps.test.group") == _theirs("xps.test.group")


def test_a_bytes_sys_path_entry_fails_the_scan_as_importlib_metadata_does_and_the_engine_serves(
        sites: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = sites
    monkeypatch.setattr(sys, "path", [os.fsencode(first), *sys.path])
    monkeypatch.delenv("XPS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    with pytest.raises(TypeError):
        _theirs("xps.test.group")
    with pytest.raises(TypeError):
        _ours("xps.test.group")
    registry = load_providers()
    assert [f.plugin for f in registry.failures] == [ENTRY_POINT_GROUP]
    assert {"openssl", "sodium"} <= set(registry.providers)


def test_a_distribution_finder_on_meta_path_defers_to_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:  # a custom finder that offers distributions (nothing here, but it could)
        @staticmethod
        def find_spec(*args: object) -> None:
            return None

        @staticmethod
        def find_distributions(*args: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [Finder, *sys.meta_path])
    assert not _entry_points._plain_layout()
    assert _ours("console_scripts") == _theirs("console_scripts")


def test_a_malformed_file_fails_the_scan_by_name_and_the_engine_still_loads(sites: tuple[Path, Path],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = sites
    _dist(first, "broken-1.0.dist-info", f"[{ENTRY_POINT_GROUP}]\nno equals sign here\n")
    with pytest.raises(ValueError, match="without '='"):
        entry_points(ENTRY_POINT_GROUP)
    monkeypatch.delenv("XPS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    registry = load_providers()
    assert [f.plugin for f in registry.failures] == [ENTRY_POINT_GROUP]
    assert "entry point scan failed" in registry.failures[0].reason
    assert {"openssl", "sodium"} <= set(registry.providers)


def test_an_unreadable_file_fails_the_scan(sites: tuple[Path, Path]) -> None:
    first, _ = sites
    dist = _dist(first, "binary-1.0.dist-info", "")
    (dist / "entry_points.txt").write_bytes(b"[xps.test.group]\nx = \xff\xfe\n")
    with pytest.raises(UnicodeDecodeError):
        entry_points("xps.test.group")


def test_an_old_single_file_egg_info_has_no_entry_points(sites: tuple[Path, Path]) -> None:
    first, _ = sites
    (first / "oldstyle-1.0-py3.11.egg-info").write_text("Metadata-Version: 1.0\nName: oldstyle\n")
    assert _ours("xps.test.group") == _theirs("xps.test.group") == []


@pytest.mark.parametrize(("value", "expected"), [
    ("os.path:join", "join"),
    ("os.path", "os.path"),
    ("os : path.join", "join"),
    ("os.path:join [extra]", "join"),
])
def test_load_imports_the_module_and_walks_the_attributes(value: str, expected: str) -> None:
    import os.path

    obj = EntryPoint("x", value, "g").load()
    assert obj is (os.path.join if expected == "join" else os.path)


@pytest.mark.parametrize(("value", "error"), [
    ("not a value!", ValueError),
    ("", ValueError),
    ("xps_no_such_module_anywhere:obj", ImportError),
    ("os:no_such_attribute", AttributeError),
])
def test_load_refuses_a_bad_value(value: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        EntryPoint("x", value, "g").load()
