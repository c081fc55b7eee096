"""Your own data: text, jsonl, parquet files and datasets directories, hashed and sharded (issue 10)."""

import json

import pytest

from node.config import DataConfig, RunConfig
from node.errors import SwarmtrainError
from node.peer import manifest as manifests
from node.train import data
from protocol.records import run_id_of


def write_corpus(root, n=12):
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    for i in range(n):
        (root / ("sub" if i % 2 else ".") / f"doc{i}.txt").write_text(f"document {i}\n" + "lorem ipsum " * 400)
    with open(root / "records.jsonl", "w") as fh:
        for i in range(20):
            fh.write(json.dumps({"text": f"record {i} " + "dolor sit amet " * 100, "id": i}) + "\n")
    return root


def test_text_and_jsonl_files_become_named_documents(tmp_path):
    root = write_corpus(tmp_path / "a")
    c = data.load_corpus(DataConfig(files=str(root / "**" / "*.*")))
    names = [n for n, _ in c.files]
    assert c.name == "files" and "sub/doc1.txt" in names and "doc0.txt" in names
    assert "records.jsonl#0" in names and "records.jsonl#19" in names  # one document per record
    assert len(names) == 12 + 20


def test_digest_does_not_depend_on_where_the_files_are(tmp_path):
    a = data.load_corpus(DataConfig(files=str(write_corpus(tmp_path / "here") / "**" / "*.*")))
    b = data.load_corpus(DataConfig(files=str(write_corpus(tmp_path / "else" / "where") / "**" / "*.*")))
    assert a.sha256 == b.sha256
    (tmp_path / "else" / "where" / "doc0.txt").write_text("changed")
    c = data.load_corpus(DataConfig(files=str(tmp_path / "else" / "where" / "**" / "*.*")))
    assert c.sha256 != a.sha256


def test_split_and_shards_follow_the_hash_rules(tmp_path):
    root = write_corpus(tmp_path / "c", n=40)
    cfg = DataConfig(files=str(root / "**" / "*.txt"), shards=2, val_percent=20)
    c = data.load_corpus(cfg)
    val = [n for n, _ in c.files if data.is_val(n, cfg)]
    assert 0 < len(val) < len(c.files)
    total = sum(data.train_tokens(c, cfg, s).numel() for s in range(2))
    assert total + len(data.SEPARATOR) == data.train_tokens(c, cfg, None).numel()  # one join more
    x, y = data.val_set(c, cfg, 64)
    assert x.shape == (data.VAL_SEQS, 64)


def test_parquet_and_datasets_directories(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the [hf] extra is not installed")
    rows = {"text": [f"row {i} " + "consectetur " * 50 for i in range(30)], "n": list(range(30))}
    ds = datasets.Dataset.from_dict(rows)
    (tmp_path / "p").mkdir()
    ds.to_parquet(str(tmp_path / "p" / "part-0.parquet"))
    pq = data.load_corpus(DataConfig(files=str(tmp_path / "p" / "*.parquet")))
    assert [n for n, _ in pq.files][:2] == ["part-0.parquet#0", "part-0.parquet#1"] and len(pq.files) == 30
    ds.save_to_disk(str(tmp_path / "saved"))
    saved = data.load_corpus(DataConfig(files=str(tmp_path / "saved")))
    assert len(saved.files) == 30 and saved.files[0][1].startswith(b"row 0")
    with pytest.raises(SwarmtrainError, match="no column 'body'") as e:
        data.load_corpus(DataConfig(files=str(tmp_path / "p" / "*.parquet"), text_field="body"))
    assert "text_field" in e.value.help


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(SwarmtrainError, match="no files match") as e:
        data.load_corpus(DataConfig(files=str(tmp_path / "nothing" / "*.txt")))
    assert "--data-files" in e.value.help
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(SwarmtrainError, match="no string field 'text'"):
        data.load_corpus(DataConfig(files=str(tmp_path / "bad.jsonl")))


def test_a_volunteer_with_other_files_is_refused_and_its_own_copy_accepted(tmp_path):
    org = write_corpus(tmp_path / "organizer")
    run = RunConfig(data=DataConfig(files=str(org / "**" / "*.txt"), shards=1, val_percent=20))
    m = manifests.build_manifest(run, data.load_corpus(run.data))
    run_id = run_id_of(m)
    assert m["data"]["files"] == str(org / "**" / "*.txt")  # the glob; the files themselves never leave

    class Local:
        pretrained_dir = tokenizer_dir = ""
        data_files = str(write_corpus(tmp_path / "volunteer") / "**" / "*.txt")

    assert manifests.accept(run_id, m, Local())[1].sha256 == m["data"]["corpus_sha256"]
    (tmp_path / "volunteer" / "doc3.txt").write_text("not the same")
    with pytest.raises(SwarmtrainError, match="corpus 'files' differs") as e:
        manifests.accept(run_id, m, Local())
    assert "--data-files" in e.value.help
