"""``aman plugin new | pack | install`` (issue 5)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile

import pytest

from kernel.cli import main


def test_new_scaffolds_a_plugin_whose_test_passes(tmp_path, capsys):
    assert main(["plugin", "new", "hello-world", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "hello-world"
    assert (root / "plugin.toml").is_file()
    assert (root / "hello_world_plugin" / "__init__.py").is_file()
    assert (root / "tests" / "test_hello_world_plugin.py").is_file()
    assert "created" in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", str(root)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [("Hello", "invalid plugin name 'Hello'"), ("cron", "reserved by a built-in plugin: cron")],
)
def test_new_refuses_bad_names(tmp_path, capsys, name, message):
    assert main(["plugin", "new", name, "--dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_new_refuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "hello").mkdir()
    assert main(["plugin", "new", "hello", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_pack_builds_a_reproducible_archive_of_regular_files(tmp_path, capsys, monkeypatch):
    main(["plugin", "new", "hello", "--dir", str(tmp_path)])
    capsys.readouterr()
    root = tmp_path / "hello"
    (root / "ui").mkdir()
    (root / "ui" / "index.html").write_text("<p>hi</p>")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "hello_plugin" / "__pycache__").mkdir()
    (root / "hello_plugin" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"x")
    (root / "hello_plugin" / "old.pyc").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".env").write_text("SECRET=1")
    (root / "ui" / "tests").mkdir()  # only the root's tests/ is left out
    (root / "ui" / "tests" / "a.txt").write_text("kept")
    monkeypatch.chdir(tmp_path)
    assert main(["plugin", "pack", str(root)]) == 0
    archive = tmp_path / "hello-0.1.0.tar.gz"
    out = capsys.readouterr().out
    assert out == f"{archive.name} sha256={hashlib.sha256(archive.read_bytes()).hexdigest()}\n"
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [
        "hello/hello_plugin",
        "hello/hello_plugin/__init__.py",
        "hello/plugin.toml",
        "hello/run.sh",
        "hello/ui",
        "hello/ui/index.html",
        "hello/ui/tests",
        "hello/ui/tests/a.txt",
    ]
    assert all(m.isreg() or m.isdir() for m in members.values())
    assert members["hello/run.sh"].mode == 0o755 and members["hello/plugin.toml"].mode == 0o644
    assert all(m.mtime == 0 and m.uid == 0 for m in members.values())
    first = archive.read_bytes()
    assert main(["plugin", "pack", str(root), "-o", str(tmp_path / "out" / "again.tgz")]) == 0
    assert (tmp_path / "out" / "again.tgz").read_bytes() == first


def test_pack_refuses_links(tmp_path, capsys):
    main(["plugin", "new", "hello", "--dir", str(tmp_path)])
    root = tmp_path / "hello"
    os.symlink(root / "plugin.toml", root / "hello_plugin" / "link.toml")
    assert main(["plugin", "pack", str(root), "-o", str(tmp_path / "x.tar.gz")]) == 1
    assert "link" in capsys.readouterr().err
    assert not (tmp_path / "x.tar.gz").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('version = "0.1.0"', 'version = "1.0"'), "invalid plugin manifest: invalid version '1.0'"),
        (lambda t: "colour = 1\n" + t, "invalid plugin manifest: unknown key 'colour'"),
        (lambda t: t.replace('module = "hello_plugin"', 'module = "nope"'), "module 'nope' not found"),
        (lambda t: t.replace('api = "1"', 'api = "2"'), "unsupported plugin API version '2'"),
        (lambda t: t.replace("[metadata]", '[ui]\npages = ["board"]\n[metadata]'), "ui/index.html does not exist"),
        (lambda t: "name = ", "invalid plugin manifest: invalid TOML"),
    ],
)
def test_pack_checks_the_manifest_first(tmp_path, capsys, edit, message):
    main(["plugin", "new", "hello", "--dir", str(tmp_path)])
    manifest = tmp_path / "hello" / "plugin.toml"
    manifest.write_text(edit(manifest.read_text()))
    assert main(["plugin", "pack", str(tmp_path / "hello"), "-o", str(tmp_path / "x.tar.gz")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.tar.gz").exists()


def test_pack_needs_a_manifest(tmp_path, capsys):
    assert main(["plugin", "pack", str(tmp_path)]) == 1
    assert "plugin.toml not found" in capsys.readouterr().err


def test_install_reports_an_unreachable_server(tmp_path, capsys):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    assert main(["plugin", "install", str(archive), "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_install_reports_a_missing_file(tmp_path, capsys):
    assert main(["plugin", "install", str(tmp_path / "missing.tar.gz")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_install_prints_the_server_error(tmp_path, capsys, monkeypatch):
    import httpx

    def post(url, **kwargs):
        assert url == "http://h:1/plugin/install"
        assert kwargs["headers"] == {"Authorization": "Bearer t"}
        assert kwargs["files"]["plugin"][0] == "a.tar.gz"
        return httpx.Response(409, json={"error": "plugin hello 0.1.0 is already installed"})

    monkeypatch.setattr(httpx, "post", post)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    assert main(["plugin", "install", str(archive), "--url", "http://h:1/", "--token", "t"]) == 1
    assert capsys.readouterr().err.strip() == (
        "aman plugin install: install failed (409): plugin hello 0.1.0 is already installed"
    )

