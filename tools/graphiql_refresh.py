"""Maintenance script for the vendored, offline GraphiQL in ``gateway/transports/static/graphiql/``.

The gateway serves GraphiQL from its own origin so the page works without internet. The files
come from the npm registry, pinned in ``PINS`` below::

    python tools/graphiql_refresh.py           # npm pack the pins, extract, rewrite MANIFEST
    python tools/graphiql_refresh.py --check   # verify the files on disk against MANIFEST

A refresh runs ``npm pack NAME@VERSION`` for each pin into a temporary folder (npm checks each
tarball against the registry's integrity hash), copies the listed files and the package's
licence into ``static/graphiql/NAME-VERSION/``, and rewrites ``MANIFEST.json`` with, for every
file: the npm package, its version, the path inside the package, the sha256 and the size. The
folder is swapped in whole, so a failed refresh leaves the old files in place.

``--check`` needs no network and no npm: it exits 1 when a file is missing, differs from its
sha256 or size, is not listed, or when the MANIFEST does not match ``PINS`` (a pin was bumped
without a refresh). To bump GraphiQL, edit ``PINS``, run the refresh, and look at the page.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

STATIC_DIR = Path(__file__).resolve().parents[1] / "gateway" / "transports" / "static" / "graphiql"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1

Role = Literal["script", "style", "license"]


@dataclass(frozen=True)
class PinnedFile:
    """One file taken from a package: its path inside the package and what the page does
    with it. Scripts and styles are loaded by the page in the order they are pinned."""

    source: str
    role: Role


@dataclass(frozen=True)
class Pin:
    """One npm package at an exact version and the files taken from it."""

    package: str
    version: str
    files: tuple[PinnedFile, ...]

    @property
    def folder(self) -> str:
        """The folder under ``static/graphiql/``; it names the version, so every asset URL
        changes with a bump and the assets can be cached as immutable."""
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}"

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


# GraphiQL 4.1.2 is the newest release with a browser-ready UMD bundle (GraphiQL 5 is ESM
# with Monaco and web workers). Its UMD build expects React and ReactDOM as globals; React 18
# is the last major that ships UMD builds (React 19 has none), and GraphiQL 4 supports 18 and 19.
PINS: tuple[Pin, ...] = (
    Pin(
        "react",
        "18.3.1",
        (
            PinnedFile("umd/react.production.min.js", "script"),
            PinnedFile("LICENSE", "license"),
        ),
    ),
    Pin(
        "react-dom",
        "18.3.1",
        (
            PinnedFile("umd/react-dom.production.min.js", "script"),
            PinnedFile("LICENSE", "license"),
        ),
    ),
    Pin(
        "graphiql",
        "4.1.2",
        (
            PinnedFile("graphiql.min.js", "script"),
            PinnedFile("graphiql.min.css", "style"),
            PinnedFile("LICENSE", "license"),
        ),
    ),
)


class RefreshError(Exception):
    """npm failed, or a package lacks a pinned file."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def target_path(pin: Pin, pinned: PinnedFile) -> str:
    """Where a pinned file lands, relative to ``static/graphiql/`` (POSIX separators)."""
    return f"{pin.folder}/{PurePosixPath(pinned.source).name}"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RefreshError("npm is not on PATH; it is needed to download the pinned packages")
    return npm


def npm_pack(pin: Pin, into: Path) -> tuple[Path, dict[str, Any]]:
    """Download one pinned tarball with ``npm pack``; returns its path and npm's report."""
    command = [_npm(), "pack", pin.spec, "--json", "--ignore-scripts", "--pack-destination"]
    completed = subprocess.run(  # noqa: S603 - a fixed argv: npm and a pinned spec, no shell
        [*command, str(into)],
        capture_output=True,
        text=True,
        check=False,
        cwd=into,
    )
    if completed.returncode != 0:
        raise RefreshError(f"npm pack {pin.spec} failed:\n{completed.stderr.strip()}")
    reports: list[dict[str, Any]] = json.loads(completed.stdout)
    report = reports[0]
    if report.get("name") != pin.package or report.get("version") != pin.version:
        raise RefreshError(
            f"npm pack {pin.spec} returned {report.get('name')}@{report.get('version')}"
        )
    return into / str(report["filename"]), report


def _read_member(tarball: Path, source: str) -> bytes:
    """The bytes of ``source`` inside an npm tarball (whose entries sit under one top
    folder, usually ``package/``). Nothing is extracted to disk by name."""
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            parts = PurePosixPath(member.name).parts
            if (
                member.isfile()
                and len(parts) > 1
                and PurePosixPath(*parts[1:]).as_posix() == source
            ):
                handle = archive.extractfile(member)
                if handle is not None:
                    return handle.read()
    raise RefreshError(f"{tarball.name} has no file {source!r}")


def _license_id(tarball: Path) -> str:
    package_json = json.loads(_read_member(tarball, "package.json"))
    value = package_json.get("license", "UNKNOWN")
    return value if isinstance(value, str) else json.dumps(value)


def build_manifest_entry(pin: Pin, pinned: PinnedFile, data: bytes) -> dict[str, Any]:
    return {
        "path": target_path(pin, pinned),
        "package": pin.package,
        "version": pin.version,
        "source": pinned.source,
        "role": pinned.role,
        "sha256": sha256_of(data),
        "size": len(data),
    }


def refresh(static_dir: Path = STATIC_DIR, pins: tuple[Pin, ...] = PINS) -> dict[str, Any]:
    """Download every pin, write the files and MANIFEST.json, and swap the folder in."""
    static_dir.parent.mkdir(parents=True, exist_ok=True)
    packages: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="graphiql-refresh-") as temp:
        downloads = Path(temp) / "npm"
        staging = Path(temp) / "graphiql"
        downloads.mkdir()
        staging.mkdir()
        for pin in pins:
            tarball, report = npm_pack(pin, downloads)
            packages.append(
                {
                    "package": pin.package,
                    "version": pin.version,
                    "license": _license_id(tarball),
                    "integrity": report.get("integrity"),
                    "tarball": report.get("filename"),
                }
            )
            for pinned in pin.files:
                data = _read_member(tarball, pinned.source)
                destination = staging / target_path(pin, pinned)
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
                files.append(build_manifest_entry(pin, pinned, data))
        manifest = {
            "format": MANIFEST_FORMAT,
            "about": (
                "GraphiQL and what it needs, vendored from the npm registry so the page works "
                "offline. Written by `python tools/graphiql_refresh.py`; verify with "
                "`--check`. Do not edit by hand."
            ),
            "packages": packages,
            "files": files,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        old = static_dir.with_name(static_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if static_dir.exists():
            static_dir.rename(old)
        shutil.move(str(staging), str(static_dir))
        if old.exists():
            shutil.rmtree(old)
    return manifest


def check(static_dir: Path = STATIC_DIR, pins: tuple[Pin, ...] = PINS) -> list[str]:
    """Problems with the files on disk; an empty list means they match MANIFEST.json."""
    manifest_path = static_dir / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{manifest_path}: unreadable ({exc})"]
    problems: list[str] = []
    listed: set[str] = set()
    for entry in manifest.get("files", []):
        relative = str(entry["path"])
        listed.add(relative)
        path = static_dir / relative
        if ".." in PurePosixPath(relative).parts or PurePosixPath(relative).is_absolute():
            problems.append(f"{relative}: not a plain relative path")
            continue
        if not path.is_file():
            problems.append(f"{relative}: missing")
            continue
        data = path.read_bytes()
        if len(data) != entry["size"]:
            problems.append(f"{relative}: {len(data)} bytes, MANIFEST says {entry['size']}")
        if sha256_of(data) != entry["sha256"]:
            problems.append(f"{relative}: sha256 differs from MANIFEST")
    for path in sorted(static_dir.rglob("*")):
        relative = path.relative_to(static_dir).as_posix()
        if path.is_file() and relative != MANIFEST_NAME and relative not in listed:
            problems.append(f"{relative}: on disk but not in MANIFEST")
    expected = sorted(
        (pin.package, pin.version, pinned.source, pinned.role, target_path(pin, pinned))
        for pin in pins
        for pinned in pin.files
    )
    recorded = sorted(
        (e["package"], e["version"], e["source"], e["role"], e["path"])
        for e in manifest.get("files", [])
    )
    if expected != recorded:
        problems.append("MANIFEST does not match PINS: run `python tools/graphiql_refresh.py`")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/graphiql_refresh.py",
        description="Refresh or verify the vendored offline GraphiQL assets.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only verify the files on disk against MANIFEST.json (exit 1 on a mismatch)",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(STATIC_DIR)
        for problem in problems:
            print(f"graphiql assets: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"graphiql assets: {STATIC_DIR} matches {MANIFEST_NAME}")
        return 0
    try:
        manifest = refresh(STATIC_DIR)
    except RefreshError as exc:
        print(f"graphiql refresh failed: {exc}", file=sys.stderr)
        return 1
    for entry in manifest["files"]:
        print(f"{entry['size']:>10}  {entry['sha256'][:16]}  {entry['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
