"""Signed model versions: keygen, sign, verify, and a worker that serves only versions signed by a trusted key.

The attack these tests replay is the one the sha256 list cannot stop: replace ``weights.pt`` and write its new
hash into ``card.json``. The files then match the card, so only the signature tells the two apart.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linecam.config import ConfigError, parse_config
from linecam.grdnet.modeldir import file_sha256
from linecam.lifecycle import registry as reg
from linecam.lifecycle.signing import generate_signing_key, sign_version
from linecam.modelstore.signing import SignatureError, load_trusted_keys, verify_signature
from linecam.runtime.infer import InferWorker
from linecam.runtime.messages import FrameHeader, encode_frame, now_ns

from .conftest import make_writable


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linecam", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def demo(tmp_path: Path, published: Path) -> Path:
    shutil.copytree(published, tmp_path / "reg")
    return tmp_path / "reg" / "demo"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two signing pairs: ``ours`` (trusted by the line) and ``theirs`` (a valid key nobody configured)."""
    base = tmp_path_factory.mktemp("keys")
    return {name: generate_signing_key(base, name) for name in ("ours", "theirs")}


def _swap_weights_and_rehash(version: Path, donor: Path) -> None:
    """The attack: other weights, and the card's sha256 rewritten to match them."""
    make_writable(version)
    shutil.copyfile(donor / "weights.pt", version / "weights.pt")
    card = json.loads((version / "card.json").read_text())
    card["files"]["weights.pt"] = file_sha256(version / "weights.pt")
    (version / "card.json").write_text(json.dumps(card, indent=2))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    done = _cli("keygen", "--signing", "--out", str(tmp_path / "k"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "k" / "model-signing.key", tmp_path / "k" / "model-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert f"trusted_keys: [{public.resolve()}]" in done.stdout
    before = private.read_bytes()
    again = _cli("keygen", "--signing", "--out", str(tmp_path / "k"), cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert private.read_bytes() == before


def test_sign_then_verify_with_the_cli_and_a_rewritten_card_fails(demo: Path, keys: dict[str, Any]) -> None:
    (private, public), registry = keys["ours"], demo.parent
    cwd = demo.parent.parent
    unsigned = _cli("models", "--registry", str(registry), "verify", "demo", "1", "--trusted-key", str(public),
                    cwd=cwd)
    assert unsigned.returncode == 2 and "unsigned version" in unsigned.stderr
    signed = _cli("models", "--registry", str(registry), "sign", "demo", "1", "--key", str(private), cwd=cwd)
    assert signed.returncode == 0, signed.stderr
    key_id = load_trusted_keys([public])[0].key_id
    assert key_id in signed.stdout
    assert stat.S_IMODE((demo / "1").stat().st_mode) == 0o555  # the published folder is read-only again
    ok = _cli("models", "--registry", str(registry), "verify", "demo", "1", "--trusted-key", str(public), cwd=cwd)
    assert ok.returncode == 0 and f"signed by trusted key {key_id}" in ok.stdout
    shown = json.loads(_cli("models", "--registry", str(registry), "show", "demo", "1", cwd=cwd).stdout)
    assert shown["signature"]["key_id"] == key_id and shown["verified"] is True

    _swap_weights_and_rehash(demo / "1", demo / "2")
    reg.verify_version(demo / "1")  # the hashes alone accept the swapped weights...
    bad = _cli("models", "--registry", str(registry), "verify", "demo", "1", "--trusted-key", str(public), cwd=cwd)
    assert bad.returncode == 2 and "does not match" in bad.stderr  # ...the signature does not


def test_a_valid_signature_by_a_key_the_line_does_not_trust_is_refused(demo: Path, keys: dict[str, Any]) -> None:
    sign_version(demo / "2", keys["theirs"][0])
    with pytest.raises(SignatureError, match="not trusted"):
        verify_signature(demo / "2", load_trusted_keys([keys["ours"][1]]))
    assert verify_signature(demo / "2", load_trusted_keys([keys["ours"][1], keys["theirs"][1]]))


def test_a_private_key_readable_by_others_is_refused(demo: Path, keys: dict[str, Any], tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copyfile(keys["ours"][0], loose)
    os.chmod(loose, 0o644)
    with pytest.raises(SignatureError, match="0600"):
        sign_version(demo / "1", loose)
    assert not (demo / "1" / "signature.json").exists()


def test_publish_signs_before_the_version_can_be_promoted(tmp_path: Path, source_models: tuple[Path, Path],
                                                           keys: dict[str, Any]) -> None:
    path = reg.publish(source_models[0], tmp_path / "reg", "demo", fp16=False, sign_key=keys["ours"][0])
    assert verify_signature(path, load_trusted_keys([keys["ours"][1]]))
    assert reg.read_current(tmp_path / "reg" / "demo") == path.name


# ------------------------------------------------------------------------------------------------- the worker
def _config(registry: Path, tmp: Path, trusted: list[Path]) -> Any:
    doc = {
        "line": {"name": "t", "station": "s1"},
        "runtime_dir": str(tmp),
        "models": {"demo": {"registry": str(registry)}},
        "cameras": [{"name": "cam1", "source": {"kind": "synthetic", "fps": 10, "width": 32, "height": 32},
                     "regions": [{"name": "vial", "box": None, "model": "demo"}]}],
        "infer": {"backend": "torch-cpu", "max_batch": 2, "threads": 1, "metrics_port": 0, "warmup": False,
                  "trusted_keys": [str(p) for p in trusted]},
        "gate": {"deadline_ms": 600000, "metrics_port": 0},
    }
    return parse_config(doc, "test.yaml", tmp)


def _frames(n: int) -> list[tuple[list[Any], int]]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        h = FrameHeader(camera="cam1", seq=i, slot=i, t_capture_ns=now_ns(), shape=img.shape, dtype="uint8",
                        pixel_format="RGB8")
        out.append((encode_frame(h, img), now_ns()))
    return out


def _count(worker: InferWorker, result: str) -> float:
    return float(worker.models.swap_counter.labels(model="demo", result=result)._value.get())


def test_worker_does_not_start_on_an_unsigned_version(demo: Path, tmp_path: Path, keys: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"infer\.trusted_keys: .*demo/1: unsigned version"):
        InferWorker(_config(demo, tmp_path, [keys["ours"][1]]), bind=False, metrics_port=-1)


def test_worker_swaps_in_only_versions_signed_by_a_trusted_key(demo: Path, tmp_path: Path, keys: dict[str, Any],
                                                               source_models: tuple[Path, Path],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = keys["ours"], keys["theirs"]
    sign_version(demo / "1", ours[0])
    # three candidates: 2 signed by a foreign key, 3 tampered after signing, 4 good
    sign_version(demo / "2", theirs[0])
    for version in ("3", "4"):
        reg.publish(source_models[1], demo.parent, "demo", version=version, fp16=False, sign_key=ours[0])
    _swap_weights_and_rehash(demo / "3", demo / "1")
    worker = InferWorker(_config(demo, tmp_path, [ours[1]]), bind=False, metrics_port=-1)
    try:
        watcher = worker.models.watchers["demo"]
        for refused in ("2", "3"):
            reg.set_current(demo, refused, verify=False)
            assert watcher.check() is None and worker.models.apply_swaps() == []
        assert _count(worker, "refused_signature") == 2 and _count(worker, "refused_hash") == 0
        assert "not trusted" in caplog.text and "does not match" in caplog.text
        assert {v.model_version for v in worker.process_batch(_frames(2))} == {"demo/1"}
        reg.set_current(demo, "4")
        assert watcher.check() is not None and worker.models.apply_swaps() == ["demo"]
        assert {v.model_version for v in worker.process_batch(_frames(2))} == {"demo/4"}
    finally:
        worker.close()


def test_config_names_an_unreadable_trusted_key(tmp_path: Path, demo: Path, keys: dict[str, Any]) -> None:
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"test\.yaml: infer\.trusted_keys\[1\]: .*bogus\.pub: not a PEM"):
        _config(demo, tmp_path, [keys["ours"][1], bogus])
    with pytest.raises(ConfigError, match=r"infer\.trusted_keys\[0\]: .*missing\.pub: cannot read"):
        _config(demo, tmp_path, [tmp_path / "missing.pub"])
