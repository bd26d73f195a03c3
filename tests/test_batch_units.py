"""Batch bookkeeping: input collection, naming, sharding, output-path safety."""

from pathlib import Path

import pytest

from mpcli.batch import check_output_dir, collect_inputs, output_stems, parse_shard, select_shard
from mpcli.errors import InputError, OutputError, UsageError


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_collect_inputs_expands_folders_sorted_and_unique(tmp_path):
    a = _touch(tmp_path / "in" / "b.h5")
    b = _touch(tmp_path / "in" / "sub" / "a.h5")
    _touch(tmp_path / "in" / "notes.txt")
    _touch(tmp_path / "in" / ".hidden.h5")
    files = collect_inputs([tmp_path / "in", a])
    assert files == sorted([a, b], key=str)


def test_collect_inputs_missing_path_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        collect_inputs([tmp_path / "nope.h5"])


def test_output_stems_are_distinct_on_clashing_names(tmp_path):
    f1 = _touch(tmp_path / "site1" / "scan.h5")
    f2 = _touch(tmp_path / "site2" / "scan.h5")
    f3 = _touch(tmp_path / "site2" / "other.h5")
    stems = output_stems([f1, f2, f3])
    assert len(set(stems.values())) == 3
    assert stems[f1].endswith("scan") and "site1" in stems[f1]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_inputs(n, tmp_path):
    files = [tmp_path / f"{k:02d}.h5" for k in range(11)]
    shards = [select_shard(files, (i, n)) for i in range(n)]
    union = [f for s in shards for f in s]
    assert sorted(union) == sorted(files) and len(union) == len(files)


@pytest.mark.parametrize("spec", ["1", "a/b", "3/3", "-1/2"])
def test_bad_shard_spec_is_usage_error(spec):
    with pytest.raises(UsageError) as info:
        parse_shard(spec)
    assert info.value.exit_code == 2


def test_output_inside_input_folder_is_refused(tmp_path):
    _touch(tmp_path / "in" / "a.h5")
    with pytest.raises(OutputError):
        check_output_dir(tmp_path / "in" / "recon", [tmp_path / "in"])
    with pytest.raises(OutputError):
        check_output_dir(tmp_path / "in", [tmp_path / "in"])


def test_output_folder_holding_an_input_file_is_refused(tmp_path):
    f = _touch(tmp_path / "in" / "a.h5")
    with pytest.raises(OutputError):
        check_output_dir(tmp_path / "in", [f])
    check_output_dir(tmp_path / "out", [f])  # a sibling folder is fine
