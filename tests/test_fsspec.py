"""The `casstore` fsspec protocol: fsspec.open and pandas.read_json on casstore:// URLs, from a local
repository and from a remote one (a real S3 server on loopback), the repository chosen as the CLI
chooses it; range reads fetch only the chunks they touch."""

from __future__ import annotations

import json

import fsspec
import pytest

from casstore.format.pack import KIND_DATA
from tests.helpers import KiB, MiB, det_bytes, invoke, write

pd = pytest.importorskip("pandas")
BIG = det_bytes(2 * MiB, "fsspec-big")
RECORDS = [{"t": i, "price": 100 + i % 7, "sym": "BTC" if i % 2 else "ETH"} for i in range(300)]


@pytest.fixture
def snapshots(tmp_path):
    """Two snapshots in ./.casstore (the CLI's default repository): prices.json changes between them."""
    invoke("init", "--chunk-avg", 64 * KiB)
    write(tmp_path / "data" / "big.bin", BIG)
    write(tmp_path / "data" / "market" / "ticks.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS))
    write(tmp_path / "data" / "market" / "prices.json", json.dumps({"BTC": [1, 2], "ETH": [3, 4]}))
    first = json.loads(invoke("snapshot", "data", "--json").stdout)["id"]
    write(tmp_path / "data" / "market" / "prices.json", json.dumps({"BTC": [5, 6], "ETH": [7, 8]}))
    second = json.loads(invoke("snapshot", "data", "--json").stdout)["id"]
    return first, second


class DataReads:
    def __init__(self, repo) -> None:
        self.count, real = 0, repo.read_blob

        def counting(kind, blob_id):
            self.count += kind == KIND_DATA
            return real(kind, blob_id)

        repo.read_blob = counting


def test_the_protocol_is_registered_by_entry_point():
    from casstore.fsspec_fs import CasstoreFileSystem

    assert fsspec.get_filesystem_class("casstore") is CasstoreFileSystem


def test_pandas_and_fsspec_read_a_local_repository(snapshots):
    first, second = snapshots
    assert pd.read_json("casstore://latest/market/ticks.jsonl", lines=True).to_dict("records") == RECORDS
    assert pd.read_json(f"casstore://{first[:8]}/market/prices.json").to_dict("list") == {"BTC": [1, 2],
                                                                                         "ETH": [3, 4]}
    with fsspec.open("casstore://latest/market/prices.json", "rt") as fh:
        assert json.load(fh) == {"BTC": [5, 6], "ETH": [7, 8]}
    fs = fsspec.filesystem("casstore")
    assert sorted(fs.ls("", detail=False)) == sorted([first, second])
    assert fs.ls("latest/market", detail=False) == ["latest/market/prices.json", "latest/market/ticks.jsonl"]
    assert fs.info("latest/big.bin")["size"] == len(BIG) and fs.isdir("latest/market")
    assert fs.glob("latest/**/*.json") == ["latest/market/prices.json"]
    with pytest.raises(FileNotFoundError):
        fs.open("latest/market/nope.json").read()
    with pytest.raises(PermissionError):
        fs.open("latest/new.json", "wb")


def test_range_reads_fetch_only_the_chunks_they_touch(snapshots):
    fs = fsspec.filesystem("casstore")
    reads = DataReads(fs.repo)
    assert fs.cat_file("latest/big.bin", start=MiB, end=MiB + 100) == BIG[MiB:MiB + 100]
    assert fs.cat_file("latest/big.bin", start=-10) == BIG[-10:]
    chunks = len(fs.repo.get("latest").entry("big.bin").chunks)
    assert chunks > 10 and reads.count <= 4   # at most two chunks per read, of many
    with fsspec.open("casstore://latest/big.bin") as fh:
        fh.seek(len(BIG) // 2)
        assert fh.read(1000) == BIG[len(BIG) // 2:len(BIG) // 2 + 1000]


def test_a_remote_repository_chosen_from_the_settings(snapshots, moto_server, tmp_path, monkeypatch):
    bucket = moto_server.new_bucket()
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/backups"
    invoke("sync", "--to", url)
    elsewhere = tmp_path / "elsewhere"     # no local repository here: the remote is read
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("CASSTORE_REMOTE", url)
    assert pd.read_json("casstore://latest/market/ticks.jsonl", lines=True).to_dict("records") == RECORDS
    fs = fsspec.filesystem("casstore")
    assert fs.repo.local_dir is None
    reads = DataReads(fs.repo)
    assert fs.cat_file("latest/big.bin", start=MiB, end=MiB + 10) == BIG[MiB:MiB + 10]
    assert reads.count <= 2


def test_pyarrow_reads_parquet_and_csv_through_the_protocol(tmp_path):
    """pyarrow (pandas' parquet engine, dask's reader) seeks into the file: the footer first."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"t": list(range(5000)), "price": [100.0 + i % 7 for i in range(5000)]})
    (tmp_path / "data" / "market").mkdir(parents=True)
    pq.write_table(table, tmp_path / "data" / "market" / "ticks.parquet")
    pd.DataFrame(RECORDS).to_csv(tmp_path / "data" / "market" / "ticks.csv", index=False)
    invoke("init", "--chunk-avg", 64 * KiB)
    invoke("snapshot", "data")
    # pyarrow resolves only its own URI schemes: an fsspec filesystem is handed to it
    assert pq.read_table("latest/market/ticks.parquet", filesystem=fsspec.filesystem("casstore")).equals(table)
    assert pd.read_parquet("casstore://latest/market/ticks.parquet", engine="pyarrow").equals(table.to_pandas())
    assert pd.read_csv("casstore://latest/market/ticks.csv").to_dict("records") == RECORDS


def test_dask_reads_a_snapshot_file_through_the_protocol(tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    write(tmp_path / "data" / "market" / "ticks.csv", pd.DataFrame(RECORDS).to_csv(index=False))
    invoke("init", "--chunk-avg", 64 * KiB)
    invoke("snapshot", "data")
    frame = dd.read_csv("casstore://latest/market/ticks.csv").compute()
    assert frame.to_dict("records") == RECORDS
