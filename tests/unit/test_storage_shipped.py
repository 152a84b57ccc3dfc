"""What raysynth ships to another process (a run directory's ``RemotePath`` in an actor's spec,
the ``storage_filesystem`` Ray Train and Tune pickle to their workers) writes whole, byte-exact
objects there, even where that process's environment holds no credentials (a worker node, a
Ray started before the keys were set); and a put whose stored object is not what was written is
an error with nothing left behind — never a corrupt object (here on a real S3 server, moto's)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raysynth.files import atomic_write_bytes, atomic_write_json
from raysynth.storage import RemotePath, StorageError, copies, ray_storage

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter whose environment has no AWS_* keys: unpickles what the driver
# shipped, writes one Parquet file through the durable writer (as WriteRealParts does) and one
# through the bare filesystem (as Ray Train's checkpoint upload does).
CHILD = """
import io, pickle, sys
import pyarrow as pa, pyarrow.parquet as pq
from raysynth.files import atomic_open
folder, (train_root, train_fs) = pickle.loads(sys.stdin.buffer.read())
table = pa.table({"x": list(range(100)), "s": [f"row {i}" for i in range(100)]})
buf = io.BytesIO()
pq.write_table(table, buf)
with atomic_open(folder / "part.parquet", "wb") as f:
    f.write(buf.getvalue())
with train_fs.open_output_stream(f"{train_root}/checkpoint.parquet") as f:
    f.write(buf.getvalue())
sys.stdout.write(buf.getvalue().hex())
"""


def test_a_run_directory_shipped_to_a_process_without_credentials_writes_whole_objects(s3_root):
    shipped = pickle.dumps((s3_root / "real", ray_storage(s3_root / "train")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(REPO), AWS_EC2_METADATA_DISABLED="true")  # no instance lookup
    out = subprocess.run([sys.executable, "-c", CHILD], input=shipped, env=env,
                         capture_output=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    written = bytes.fromhex(out.stdout.decode())
    for obj in (s3_root / "real" / "part.parquet", s3_root / "train" / "checkpoint.parquet"):
        stored = obj.read_bytes()
        assert (len(stored), hashlib.sha256(stored).hexdigest()) == (
            len(written), hashlib.sha256(written).hexdigest()), obj
        assert pq.read_table(io.BytesIO(stored)).column("x").to_pylist() == list(range(100))


def test_the_shipped_filesystem_carries_the_credentials_it_was_opened_with(s3_root):
    fs = pickle.loads(pickle.dumps(s3_root)).fs
    assert isinstance(fs, pafs.S3FileSystem)
    opts = fs.__reduce__()[1][0]  # what pyarrow rebuilds the filesystem from in another process
    assert (opts["access_key"], opts["secret_key"]) == (
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    assert opts["endpoint_override"] == os.environ["AWS_ENDPOINT_URL"]


def test_a_put_the_store_keeps_other_than_written_is_an_error_and_leaves_nothing(
        s3_root, tmp_path):
    # An unsigned put (no credentials: the SDK's aws-chunked framing with a checksum trailer)
    # is stored by moto framing and all: the corrupt object the check must refuse.
    anonymous = pafs.S3FileSystem(anonymous=True, region="us-east-1",
                                  endpoint_override=os.environ["AWS_ENDPOINT_URL"])

    def unsigned(p: RemotePath) -> RemotePath:
        return RemotePath(anonymous, p.path, "s3")

    with pytest.raises(StorageError, match="a.json.*credentials"):
        atomic_write_json(unsigned(s3_root / "a.json"), {"v": 1})
    with pytest.raises(StorageError, match="b.bin"):
        atomic_write_bytes(unsigned(s3_root / "b.bin"), b"\0" * 807)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x" * 100)
    with pytest.raises(StorageError, match="f.txt"):  # a folder copy checks each object
        copies.upload_dir(tmp_path, unsigned(s3_root / "up"))
    assert [p for p in s3_root.rglob("*") if p.is_file()] == []  # nothing corrupt left behind
    atomic_write_json(s3_root / "ok.json", {"v": 1})  # signed puts, same writer: whole
    assert (s3_root / "ok.json").read_text() == '{\n  "v": 1\n}'
