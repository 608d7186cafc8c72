"""The Dockerfile, built for real with buildah, runs m2i as the image contract says.

No image registry is reachable where this runs, so the base image `python:3.11-slim-bookworm` is stood in
for by a Debian bookworm with Python 3.11 made with debootstrap, imported under the base's name (its
rootfs tarball is cached in $M2I_TEST_CACHE, default ~/.cache/bids_m2i-tests, and the imported image stays
in buildah's storage). An image already there under that name (the real base, or the stand-in of an earlier
run) is used as is. Package downloads may go through a TLS-intercepting proxy: the build gets the host's
CA bundle as the `ca-bundle` secret (as docs/containers.md tells Docker users) and the host's pip index
and proxy settings as a pip.conf volume. The image (~6.7 GB with torch and CUDA) stays as
localhost/bids_m2i:infra-test, with its layers cached for the next run; `buildah rmi` frees it.

Then a simulated dataset is processed inside the image, participant and group level, as uid 1000 with the
input mounted read-only, validated inside; the output records GeneratedBy.Container and validates.

Slow (the first build takes minutes and downloads ~4 GB) and root-only: `make test-all` runs it.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from infra import ensure_packages, which

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
STAND_IN_LABEL = "org.bids-m2i.test-stand-in"
IMAGE = "localhost/bids_m2i:infra-test"
VERSION = "0.0.0-infra-test"
CACHE = Path(os.environ.get("M2I_TEST_CACHE") or Path.home() / ".cache" / "bids_m2i-tests")
ROOTFS_TAR = CACHE / "bookworm-python3.11-rootfs.tar"
DEBIAN_MIRROR = os.environ.get("M2I_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _run(command: list[str], env: dict, timeout: float = 3600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def buildah_env(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("building the image with buildah needs root here (no rootless user namespaces set up)")
    ensure_packages({"buildah": "buildah", "debootstrap": "debootstrap"}, "the image test")
    conf = tmp_path_factory.mktemp("containers") / "containers.conf"
    # buildah's default ulimits (nofile) cannot be applied inside every VM or container: none are set.
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def _debootstrap_rootfs_tarball(env: dict) -> None:
    """Debian bookworm (minbase) with Debian's Python 3.11, venv and CA certificates, as a tarball."""
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    try:
        made = _run([which("debootstrap"), "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                     "bookworm", str(work / "rootfs"), DEBIAN_MIRROR], env, timeout=3600)
        if made.returncode != 0:
            pytest.skip(f"debootstrap of the stand-in base failed (no Debian mirror?): {made.stderr[-800:]}")
        partial = work / "rootfs.tar"
        packed = _run(["tar", "-C", str(work / "rootfs"), "--exclude=./var/cache/apt/archives/*.deb",
                       "--exclude=./var/lib/apt/lists/*", "-cf", str(partial), "."], env)
        assert packed.returncode == 0, packed.stderr
        partial.replace(ROOTFS_TAR)  # complete or absent: a cut-off run leaves no half tarball
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(buildah_env):
    """The base image under its real name: already in storage, or the debootstrap stand-in imported."""
    present = _run(["buildah", "inspect", "--type", "image", BASE_IMAGE], buildah_env)
    if present.returncode == 0:
        labels = json.loads(present.stdout).get("OCIv1", {}).get("config", {}).get("Labels") or {}
        return "stand-in (cached)" if STAND_IN_LABEL in labels else "real"
    if not ROOTFS_TAR.exists():
        _debootstrap_rootfs_tarball(buildah_env)
    container = _run(["buildah", "from", "scratch"], buildah_env).stdout.strip()
    try:
        for step in (
            ["buildah", "add", container, str(ROOTFS_TAR), "/"],
            ["buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "python3",
             "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--label", f"{STAND_IN_LABEL}=debootstrap bookworm + Debian python3.11", container],
            ["buildah", "commit", container, BASE_IMAGE],
        ):
            done = _run(step, buildah_env)
            assert done.returncode == 0, f"{step}: {done.stderr}"
    finally:
        _run(["buildah", "rm", container], buildah_env)
    return "stand-in (imported)"


def _host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (with a TLS-intercepting proxy's CA in it, where there is one)."""
    candidates = [os.environ.get(name) for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    candidates += ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _host_pip_conf(path: Path) -> Path:
    """The host's pip index and proxy settings that make sense inside the build (no local paths)."""
    settings = {}
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        match = re.match(r"(?:global|install)\.([\w-]+)='(.*)'$", line.strip())
        if match:
            settings[match.group(1)] = match.group(2)
    for key in ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            settings[key] = value
    kept = {}
    for key in ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout"):
        value = settings.get(key)
        if value is None:
            continue
        if key.endswith("index-url"):  # file:// indexes and folders of the host do not exist in the build
            value = " ".join(url for url in value.split() if url.startswith(("http://", "https://")))
        if value:
            kept[key] = value
    parser = configparser.ConfigParser()
    parser["global"] = kept
    with path.open("w") as handle:
        parser.write(handle)
    return path


@pytest.fixture(scope="module")
def built_image(buildah_env, base_image, tmp_path_factory):
    ca_bundle = _host_ca_bundle()
    pip_conf = _host_pip_conf(tmp_path_factory.mktemp("pip") / "pip.conf")
    command = [
        "buildah", "bud", "--isolation", "chroot", "--pull=never", "--layers",
        "--build-arg", f"VERSION={VERSION}", "--build-arg", "IMAGE_NAME=localhost/bids_m2i",
        "-v", f"{pip_conf}:/etc/pip.conf:ro",
        "-t", IMAGE, "-f", str(REPO / "Dockerfile"), str(REPO),
    ]
    if ca_bundle is not None:
        command[2:2] = ["--secret", f"id=ca-bundle,src={ca_bundle}"]
    built = _run(command, buildah_env, timeout=5400)
    assert built.returncode == 0, f"{' '.join(command)}\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}"
    return {"base": base_image, "ca_bundle": ca_bundle}


@pytest.mark.timeout(7200)  # the first run: debootstrap, ~4 GB of downloads, the build, two levels of m2i
def test_image_runs_the_contract_unprivileged_with_read_only_input(buildah_env, built_image, tmp_path):
    from bids_m2i.bids.validation import run_validator
    from bids_m2i.simulate.dataset import simulate_dataset

    # The image as built: its user, entry point and the variables GeneratedBy.Container is filled from.
    inspected = json.loads(_run(["buildah", "inspect", "--type", "image", IMAGE], buildah_env).stdout)
    config = inspected["OCIv1"]["config"]
    assert config["User"] == "1000:1000" and config["Entrypoint"] == ["m2i"]
    assert f"M2I_CONTAINER_TAG=localhost/bids_m2i:{VERSION}" in config["Env"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION

    bids = simulate_dataset(tmp_path / "bids", preset="tiny", subjects=2, seed=2)
    before = {p: p.stat().st_mtime_ns for p in bids.rglob("*") if p.is_file()}
    for path in [bids, *bids.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    out, work = tmp_path / "out", tmp_path / "work"
    for folder in (out, work):
        folder.mkdir()
        os.chown(folder, 1000, 1000)
    container = _run(["buildah", "from", "--pull=never", IMAGE], buildah_env).stdout.strip()
    assert container, "buildah from failed"
    try:
        def m2i(*args: str) -> subprocess.CompletedProcess:
            return _run(["buildah", "run", "--isolation", "chroot", "--user", "1000:1000",
                         "-v", f"{bids}:/data:ro", "-v", f"{out}:/out", "-v", f"{work}:/work",
                         container, "--", "m2i", "/data", "/out", *args, "-w", "/work"], buildah_env,
                        timeout=3600)

        participant = m2i("participant", "--nprocs", "2")
        assert participant.returncode == 0, participant.stdout[-3000:] + participant.stderr[-3000:]
        group = m2i("group", "--nprocs", "2")
        assert group.returncode == 0, group.stdout[-3000:] + group.stderr[-3000:]
        whoami = _run(["buildah", "run", "--isolation", "chroot", "--user", "1000:1000", container, "--",
                       "id", "-u"], buildah_env)
        assert whoami.stdout.strip() == "1000"
    finally:
        _run(["buildah", "rm", container], buildah_env)

    # The input was validated inside the image and left untouched.
    log = next((out / "logs").glob("m2i-participant-*.log")).read_text()
    assert "Validating /data with bids-validator-deno" in log
    assert {p: p.stat().st_mtime_ns for p in bids.rglob("*") if p.is_file()} == before
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Container"] == {
        "Type": "docker", "Tag": f"localhost/bids_m2i:{VERSION}", "URI": f"docker://localhost/bids_m2i:{VERSION}"}
    for label in ["01", "02"]:
        assert (out / f"sub-{label}.html").exists()
        assert {p.stat().st_uid for p in (out / f"sub-{label}").rglob("*")} == {1000}
    assert list((out / "group").glob("*"))
    report = run_validator(out)
    assert report.n_errors == 0, report.summary()
