"""Hugging Face models from config and from local weights, tokenizers, bits per byte (issue 10)."""

import json

import pytest
import torch

pytest.importorskip("transformers", reason="the [hf] extra is not installed (pip install 'swarmtrain[hf]')")

from node.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from node.errors import SwarmtrainError  # noqa: E402
from node.peer import manifest as manifests  # noqa: E402
from node.train import data
from node.train.hf import save_pretrained  # noqa: E402
from node.train.model import build_run_model, digest, trainable  # noqa: E402
from node.train.tokenizer import Tokenizer, train_bpe  # noqa: E402
from node.train.trainer import InnerTrainer, evaluate_bpb  # noqa: E402
from protocol.records import run_id_of  # noqa: E402

TINY = dict(kind="hf", d_model=32, n_layer=2, n_head=2, ctx=32)
TEXT = ("def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n") * 40


@pytest.mark.parametrize("arch,extra", [("gpt2", {}), ("llama", {"n_kv_head": 1, "d_ff": 48}), ("qwen2", {})])
def test_from_config_is_the_same_on_every_peer_and_learns(arch, extra):
    run = RunConfig(model=ModelConfig(arch=arch, **TINY, **extra), train=TrainConfig(inner_lr=1e-2, warmup_steps=1))
    a, b = build_run_model(run), build_run_model(run)
    assert digest(trainable(a.model)) == digest(trainable(b.model)) == a.fingerprint["init_sha256"]
    assert a.fingerprint["config_sha256"] == b.fingerprint["config_sha256"]
    assert a.model.hf.config.model_type == arch
    other = build_run_model(RunConfig(model=ModelConfig(arch=arch, **TINY, **extra), train=TrainConfig(seed=1)))
    assert other.fingerprint["init_sha256"] != a.fingerprint["init_sha256"]
    tokens = torch.frombuffer(bytearray(TEXT.encode()), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(0)
    x, y = data.windows(tokens, 8, 32, gen)
    trainer = InnerTrainer(a.model, run.train, torch.device("cpu"))
    before = evaluate_bpb(a.model, x, y, torch.device("cpu"))
    assert 7.5 < before < 8.5  # about log2(256): a near-uniform start over bytes
    for _ in range(20):
        trainer.step(*data.windows(tokens, 4, 32, gen))
    assert evaluate_bpb(a.model, x, y, torch.device("cpu")) < before - 1.5


def test_unknown_arch_names_the_fix():
    with pytest.raises(SwarmtrainError, match="no model type 'gpt9'") as e:
        build_run_model(RunConfig(model=ModelConfig(arch="gpt9", **TINY)))
    assert "gpt2" in e.value.help


def test_byte_gpt_refuses_hf_only_settings():
    with pytest.raises(SwarmtrainError, match="Hugging Face models only"):
        build_run_model(RunConfig(model=ModelConfig(tokenizer="tok")))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_bpe([TEXT, "hello world, élan naïve café\n" * 20], 300, tmp_path_factory.mktemp("tok"))


def test_tokenizer_ids_and_bytes_behind_them(tokenizer_dir):
    tok = Tokenizer(tokenizer_dir)
    assert tok.vocab_size <= 300 and len(tok.sha256) == 64
    docs = [TEXT.encode(), "café élan\n".encode()]
    ids = tok.encode(docs, data.SEPARATOR)
    assert ids.numel() < len(docs[0]) / 2  # BPE merges bytes
    # the bytes behind the ids are exactly the bytes of the text, separator included
    assert int(tok.token_bytes()[ids].sum()) == sum(len(d) for d in docs) + len(data.SEPARATOR)


def test_bits_per_byte_counts_bytes_not_tokens(tokenizer_dir):
    run = RunConfig(model=ModelConfig(arch="gpt2", tokenizer=str(tokenizer_dir), **TINY))
    built = build_run_model(run)
    assert built.model.hf.config.vocab_size == built.tokenizer.vocab_size
    assert built.fingerprint["tokenizer_sha256"] == built.tokenizer.sha256
    ids = built.tokenizer.encode([TEXT.encode()] * 2, data.SEPARATOR)
    x, y = data.windows(ids, 4, 32, torch.Generator().manual_seed(0))
    built.model.eval()
    nats = torch.nn.functional.cross_entropy(
        built.model(x).reshape(-1, built.tokenizer.vocab_size), y.reshape(-1), reduction="sum"
    ).item()
    nbytes = int(built.tokenizer.token_bytes()[y].sum())
    assert nbytes > y.numel()  # more bytes than tokens
    expected = nats / nbytes / torch.log(torch.tensor(2.0)).item()
    assert evaluate_bpb(built.model, x, y, torch.device("cpu")) == pytest.approx(expected, rel=1e-5)


def test_pretrained_weights_round_trip_and_refusal(tmp_path):
    run = RunConfig(model=ModelConfig(arch="gpt2", **TINY))
    built = build_run_model(run)
    with torch.no_grad():
        trainable(built.model)[0].add_(0.5)  # "trained"
    save_pretrained(built.model, tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").is_file()
    pre = RunConfig(model=ModelConfig(kind="hf", pretrained=str(tmp_path / "base"), ctx=32))
    loaded = build_run_model(pre)
    assert torch.equal(trainable(loaded.model)[0], trainable(built.model)[0])
    assert loaded.fingerprint["weights_sha256"]
    corpus = data.Corpus(name="stdlib", files=(("a.py", TEXT.encode()),), origin="test")
    manifest = manifests.build_manifest(pre, corpus, loaded)
    # a volunteer with other weights at the same place is refused, and told what to do
    other = build_run_model(run)
    save_pretrained(other.model, tmp_path / "mine")
    with pytest.raises(SwarmtrainError, match="pretrained weights differ") as e:
        build_run_model(pre, pretrained_dir=str(tmp_path / "mine"), expect=manifest["model"])
    assert "--pretrained-dir" in e.value.help
    # the organizer's copy elsewhere is fine
    (tmp_path / "copy").mkdir()
    for f in (tmp_path / "base").iterdir():
        (tmp_path / "copy" / f.name).write_bytes(f.read_bytes())
    build_run_model(pre, pretrained_dir=str(tmp_path / "copy"), expect=manifest["model"])
    json.dumps(manifest)  # the manifest stays plain JSON
    assert run_id_of(manifest)


def test_missing_pretrained_dir_names_the_fix(tmp_path):
    with pytest.raises(SwarmtrainError, match="holds no pretrained model") as e:
        build_run_model(RunConfig(model=ModelConfig(kind="hf", pretrained=str(tmp_path), ctx=32)))
    assert "save_pretrained" in e.value.help


def test_manifest_of_an_hf_run_accepts_and_refuses_other_tokenizers(tmp_path, tokenizer_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(8):
        (docs / f"f{i}.py").write_text(TEXT + f"# {i}\n")
    run = RunConfig(
        model=ModelConfig(arch="gpt2", tokenizer=str(tokenizer_dir), **TINY),
        data=DataConfig(files=str(docs / "*.py"), shards=1, val_percent=30),
    )
    m = manifests.build_manifest(run, data.load_corpus(run.data))
    run_id = run_id_of(m)
    got, corpus = manifests.accept(run_id, m)
    assert got == run and corpus.name == "files"
    other = train_bpe(["something else entirely\n" * 50], 280, tmp_path / "tok2")

    class Local:
        tokenizer_dir, pretrained_dir, data_files = str(other), "", ""

    with pytest.raises(SwarmtrainError, match="tokenizer differs") as e:
        manifests.accept(run_id, m, Local())
    assert "--tokenizer-dir" in e.value.help
