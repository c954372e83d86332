"""Token files (issue 32 item 4): nanoGPT's train.bin/val.bin (raw little-endian uint16
ids) and --token-dtype files, through training, resume, the data record and generate."""

import json
import os

import numpy as np
import pytest

import brainlike_np.generate as gen
from brainlike_np.checkpoint import save_npz_atomic
from npz import load_npz
from brainlike_np import data, train, tokenizer
from brainlike_np.backends import get_backend
from brainlike_np.train_state import TrainState

TINY_RUN = ["--preset", "tiny", "--eval-every", "4", "--eval-batches", "2"]
VOCAB = 301          # ids above 255: a byte model could not hold them


def token_stream(n: int, seed: int) -> np.ndarray:
    """A learnable id sequence: mostly +7 mod VOCAB steps, with random jumps; max VOCAB-1."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n) < 0.9, 7, rng.integers(0, VOCAB, n))
    ids = np.cumsum(steps) % VOCAB
    ids[n // 2] = VOCAB - 1
    return ids


@pytest.fixture
def nanogpt_dir(tmp_path):
    """What nanoGPT's prepare.py leaves: train.bin and val.bin (np.uint16 tofile), with
    its other files beside them, which the corpus must not read."""
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    token_stream(3001, 0).astype(np.uint16).tofile(folder / "train.bin")
    token_stream(701, 1).astype(np.uint16).tofile(folder / "val.bin")
    (folder / "prepare.py").write_text("# nanoGPT's\n")
    (folder / "input.txt").write_text("not tokens\n" * 50)
    return folder


def run_main(argv, capsys):
    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_nanogpt_pair_is_read_as_uint16_ids_split_by_file(nanogpt_dir):
    corpus = data.open_corpus(str(nanogpt_dir))
    expected = np.fromfile(nanogpt_dir / "train.bin", dtype=np.uint16)
    assert len(corpus.train) == 3001 and len(corpus.valid) == 701
    positions = np.array([[0, 5, 3000], [1500, 2, 9]])
    assert np.array_equal(corpus.train.take(positions), expected[positions])
    assert corpus.vocab_size == VOCAB and corpus.unit == "token"
    assert corpus.record()["tokens"] == {"dtype": "uint16", "vocab_size": None,
                                         "tokenizer": None}
    x, y = data.sample_windows(corpus.valid, 3, 11, np.random.default_rng(0))
    valid = np.fromfile(nanogpt_dir / "val.bin", dtype=np.uint16)
    for row, target in zip(x, y):      # each window is a run of the file, y the id after it
        start = next(i for i in range(len(valid) - 11) if np.array_equal(valid[i:i + 11], row))
        assert valid[start + 11] == target


def test_uint32_single_file_and_its_size_check(tmp_path):
    path = tmp_path / "ids.u32"
    ids = token_stream(1000, 2).astype("<u4") + 70_000       # beyond uint16
    ids.tofile(path)
    corpus = data.open_corpus(str(path), token_dtype="uint32")
    assert len(corpus.train) == 900 and len(corpus.valid) == 100
    assert corpus.max_id() == int(ids.max()) and corpus.vocab_size == int(ids.max()) + 1
    assert np.array_equal(corpus.valid.take(np.arange(100)), ids[900:])
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(data.DataError, match="not a whole number of uint32 tokens"):
        data.open_corpus(str(path), token_dtype="uint32")


@pytest.mark.parametrize("ids, vocab", [(37, 41), (1500, 1503)])   # a dense and a sorted count
@pytest.mark.parametrize("chunk", [97, 1 << 18])         # pairs across pieces, merged often
def test_the_bigram_baseline_matches_a_direct_count(monkeypatch, ids, vocab, chunk):
    monkeypatch.setattr(data, "COUNT_CHUNK", chunk)
    rng = np.random.default_rng(3)
    train_ids, valid_ids = rng.integers(0, ids, 5003), rng.integers(0, ids, 611)
    got = data.count_model_losses(train_ids, valid_ids, vocab_size=vocab)
    table = np.zeros((vocab, vocab))
    np.add.at(table, (train_ids[:-1], train_ids[1:]), 1)
    p = (table + 1) / (table + 1).sum(axis=1, keepdims=True)
    bigram = -np.mean(np.log(p[valid_ids[:-1], valid_ids[1:]]))
    uni = np.bincount(train_ids, minlength=vocab) + 1.0
    unigram = -np.mean(np.log(uni[valid_ids] / uni.sum()))
    assert got["bigram"] == pytest.approx(bigram, rel=1e-12)
    assert got["unigram"] == pytest.approx(unigram, rel=1e-12)


def test_a_sidecar_that_is_not_utf8_is_one_error(nanogpt_dir):
    (nanogpt_dir / "tokens.json").write_bytes(b'{"tokenizer": "gpt\xff2"}')
    with pytest.raises(data.DataError, match="cannot be read as JSON .*utf-8"):
        data.open_corpus(str(nanogpt_dir))


@pytest.mark.parametrize("sidecar, expected", [
    ({"dtype": "uint8"}, "dtype 'uint8' is not valid"),
    ({"vocab_size": 0}, "vocab_size 0 is not valid"),
    ({"vocab": 5}, "unknown key 'vocab'"),
    ([1, 2], "must hold a JSON object"),
])
def test_a_bad_sidecar_is_one_error_naming_the_key(nanogpt_dir, sidecar, expected):
    (nanogpt_dir / "tokens.json").write_text(json.dumps(sidecar))
    with pytest.raises(data.DataError, match=expected):
        data.open_corpus(str(nanogpt_dir))


def test_the_sidecar_sets_dtype_vocabulary_and_tokenizer(nanogpt_dir):
    (nanogpt_dir / "tokens.json").write_text(json.dumps(
        {"dtype": "uint16", "vocab_size": 512, "tokenizer": "stub"}))
    corpus = data.open_corpus(str(nanogpt_dir))
    assert corpus.vocab_size == 512 and corpus.record()["tokens"]["tokenizer"] == "stub"
    with pytest.raises(data.DataError, match="contradicts tokens.json"):
        data.open_corpus(str(nanogpt_dir), token_dtype="uint32")


def test_a_nanogpt_pair_trains_resumes_bit_for_bit_and_generates_ids(tmp_path, nanogpt_dir,
                                                                      capsys):
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    args = TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "8"]
    code, out, _ = run_main(args + ["--out-dir", whole], capsys)
    assert code == 0 and "3,001 train / 701 valid tokens" in out and "nats/token" in out
    assert run_main(args[:-1] + ["4", "--out-dir", split], capsys)[0] == 0
    code, out, _ = run_main(["--resume", "--max-iters", "8", "--preset", "tiny",  # repeated
                             "--out-dir", split], capsys)
    assert code == 0, _
    a = np.load(os.path.join(whole, "ckpt.npz"))
    b = np.load(os.path.join(split, "ckpt.npz"))
    assert a["params/W_dec"].shape == (32, VOCAB)             # the vocabulary of the data
    assert all(np.array_equal(a[k], b[k]) for k in a.files if k.startswith("params/"))
    state = TrainState.load(os.path.join(whole, "ckpt.npz"), get_backend("numpy"))
    assert state.settings.token_dtype == "uint16"            # resolved, recorded

    ckpt = os.path.join(whole, "ckpt.npz")
    assert gen.main(["--checkpoint", ckpt, "--prompt-ids", "3 10,17", "--max-new-tokens",
                     "6", "--temperature", "0"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    expected = gen.generate_tokens(state, [3, 10, 17], 6, temperature=0)
    assert ids == [3, 10, 17] + expected and all(0 <= t < VOCAB for t in ids)


def test_resume_refuses_changed_token_files(tmp_path, nanogpt_dir, capsys):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "4",
                                "--out-dir", out_dir], capsys)[0] == 0
    (nanogpt_dir / "tokens.json").write_text(json.dumps({"vocab_size": 400}))
    code, _, err = run_main(["--resume", "--max-iters", "6", "--out-dir", out_dir], capsys)
    assert code == 1 and err.startswith("error: the data changed since the run started "
                                        "(tokens") and err.count("\n") == 1
    code, _, err = run_main(["--resume", "--max-iters", "6", "--token-dtype", "uint32",
                             "--out-dir", out_dir], capsys)
    assert code == 1 and "--token-dtype" in err and err.count("\n") == 1


class StubEncoding:
    """A tokenizer without its BPE file: id i <-> the letter chr(97 + i % 26)."""
    eot_token = 0

    def encode(self, text):
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_generate_decodes_with_the_datas_tokenizer(tmp_path, nanogpt_dir, capsys, monkeypatch):
    (nanogpt_dir / "tokens.json").write_text(json.dumps({"tokenizer": "stub"}))
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "4",
                                "--out-dir", out_dir], capsys)[0] == 0
    monkeypatch.setattr(gen, "load_tokenizer", lambda name: StubEncoding())
    assert gen.main(["--checkpoint", os.path.join(out_dir, "ckpt.npz"), "--prompt", "abc",
                     "--max-new-tokens", "5", "--temperature", "0"]) == 0
    ids_line, text_line = capsys.readouterr().out.splitlines()
    ids = [int(t) for t in ids_line.split()]
    assert ids[:3] == [0, 1, 2] and len(ids) == 8
    assert text_line == StubEncoding().decode(ids)


def test_a_tokenizer_that_cannot_load_is_one_error_line(tmp_path, nanogpt_dir, capsys,
                                                        monkeypatch):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "4",
                                "--out-dir", out_dir], capsys)[0] == 0
    def no_tiktoken(name):
        raise ImportError(name)
    monkeypatch.setattr(tokenizer.importlib, "import_module", no_tiktoken)
    assert gen.main(["--checkpoint", os.path.join(out_dir, "ckpt.npz"),
                     "--tokenizer", "gpt2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer 'gpt2' needs tiktoken") and err.count("\n") == 1


def test_generate_refuses_ids_for_a_byte_model_and_ids_outside_the_vocabulary(
        tmp_path, nanogpt_dir, capsys):
    out_dir = str(tmp_path / "run")
    assert run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "4",
                                "--out-dir", out_dir], capsys)[0] == 0
    assert gen.main(["--checkpoint", os.path.join(out_dir, "ckpt.npz"),
                     "--prompt-ids", f"1 {VOCAB}"]) == 1
    assert f"token id {VOCAB} is outside" in capsys.readouterr().err
    assert gen.main(["--checkpoint", os.path.join(out_dir, "ckpt.npz"),
                     "--prompt-ids", "1 x"]) == 1
    assert "--prompt-ids must be integers" in capsys.readouterr().err
    text = tmp_path / "text.txt"
    text.write_bytes(b"def f(x):\n    return x\n" * 40)
    bytes_dir = str(tmp_path / "bytes")
    assert run_main(TINY_RUN + ["--data", str(text), "--max-iters", "2",
                                "--out-dir", bytes_dir], capsys)[0] == 0
    assert gen.main(["--checkpoint", os.path.join(bytes_dir, "ckpt.npz"),
                     "--prompt-ids", "1 2"]) == 1
    assert "trained on bytes" in capsys.readouterr().err


@pytest.mark.parametrize("tokens", ["uint16", {"dtype": "int8", "vocab_size": None,
                                                "tokenizer": None},
                                    {"dtype": "uint16", "vocab_size": -3, "tokenizer": None}])
def test_a_crafted_tokens_record_is_refused_by_generate_and_resume(tmp_path, nanogpt_dir,
                                                                   capsys, tokens):
    out_dir = tmp_path / "run"
    assert run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "2",
                                "--out-dir", str(out_dir)], capsys)[0] == 0
    arrays, meta = load_npz(str(out_dir / "ckpt.npz"))
    meta["data"]["tokens"] = tokens
    save_npz_atomic(str(out_dir / "ckpt.npz"), arrays, meta)
    assert gen.main(["--checkpoint", str(out_dir / "ckpt.npz")]) == 1
    err = capsys.readouterr().err
    assert "invalid metadata" in err and "tokens" in err and err.count("\n") == 1
    code, _, err = run_main(["--resume", "--max-iters", "4", "--out-dir", str(out_dir)], capsys)
    assert code == 1 and "tokens" in err and err.count("\n") == 1


def test_sample_every_prints_token_ids_for_token_data(tmp_path, nanogpt_dir, capsys):
    code, out, _ = run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "4",
                                        "--sample-every", "1", "--out-dir",
                                        str(tmp_path / "run")], capsys)
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("sample at step 4 (token ids): "))
    prompt = np.fromfile(nanogpt_dir / "val.bin", dtype=np.uint16)[:24].tolist()
    assert line.split(": ", 1)[1].startswith(f"{prompt} + [")


@pytest.mark.parametrize("where", ["flag", "sidecar"])
def test_a_vocabulary_smaller_than_the_data_is_one_error_line(tmp_path, nanogpt_dir, capsys,
                                                              where):
    flags = ["--vocab-size", "300"] if where == "flag" else []
    if where == "sidecar":
        (nanogpt_dir / "tokens.json").write_text(json.dumps({"vocab_size": 300}))
    code, _, err = run_main(TINY_RUN + flags + ["--data", str(nanogpt_dir), "--max-iters", "2",
                                                "--out-dir", str(tmp_path / "run")], capsys)
    assert code == 1 and f"holds token id {VOCAB - 1}, but the model's vocab_size is 300" in err
    assert err.count("\n") == 1 and not (tmp_path / "run" / "ckpt.npz").exists()


def test_a_token_run_evaluates_in_tokens_through_the_command_and_the_library(
        tmp_path, nanogpt_dir, capsys):
    """The round trip of a token run's best.npz through evaluate: the command reads the
    folder as the run did (uint16 ids, the data's vocabulary), reports nats per token
    over every window, and agrees with the library function on the same split."""
    from brainlike_np import evaluate
    out = str(tmp_path / "o")
    assert run_main(TINY_RUN + ["--data", str(nanogpt_dir), "--max-iters", "4",
                                "--out-dir", out], capsys)[0] == 0
    best = os.path.join(out, "best.npz")
    assert evaluate.main(["--checkpoint", best, "--data", str(nanogpt_dir), "--split", "valid",
                          "--max-windows", "0"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("valid:")][0]
    state = TrainState.load(best, get_backend("numpy"))
    corpus = data.open_corpus(str(nanogpt_dir))
    expected = evaluate.evaluate_tokens(state, corpus.valid, max_windows=None)
    context = state.cfg.context
    assert expected.windows == expected.total == 701 - context
    assert line.startswith(f"valid: {expected.loss:.4f} nats/token ")
    assert f"all {expected.total:,} windows" in line


# ---- the second mutation run of data.py (issue 33): the sidecar and the pair's checks -------
@pytest.mark.parametrize("sidecar_dtype, flag", [("uint16", "uint32"), ("uint32", "uint16")])
def test_a_flag_contradicting_the_sidecar_is_refused_either_way(nanogpt_dir, sidecar_dtype,
                                                                 flag):
    (nanogpt_dir / "tokens.json").write_text(json.dumps({"dtype": sidecar_dtype}))
    for name, seed in (("train.bin", 0), ("val.bin", 1)):
        token_stream(1001, seed).astype(sidecar_dtype).tofile(nanogpt_dir / name)
    with pytest.raises(data.DataError, match=f"--token-dtype {flag} contradicts tokens.json"):
        data.open_corpus(str(nanogpt_dir), token_dtype=flag)
    for flag in (sidecar_dtype, None):     # the sidecar's, named or not
        assert data.open_corpus(str(nanogpt_dir), token_dtype=flag).tokens["dtype"] == \
            sidecar_dtype
    os.remove(nanogpt_dir / "tokens.json")  # the flag alone
    corpus = data.open_corpus(str(nanogpt_dir), token_dtype=sidecar_dtype)
    assert corpus.tokens["dtype"] == sidecar_dtype and len(corpus.valid) == 1001


@pytest.mark.parametrize("split", ["train.bin", "val.bin"])
def test_an_empty_split_file_is_refused_a_one_token_one_opens(nanogpt_dir, split):
    (nanogpt_dir / split).write_bytes(np.uint16([5]).tobytes())
    corpus = data.open_corpus(str(nanogpt_dir))
    assert 1 in (len(corpus.train), len(corpus.valid))
    (nanogpt_dir / split).write_bytes(b"")
    with pytest.raises(data.DataError, match=f"data file '.*{split}' is empty"):
        data.open_corpus(str(nanogpt_dir))


def test_a_sidecar_is_read_whole_up_to_64_kib(nanogpt_dir):
    """A sidecar pretty-printed with a long indent (50,003 bytes) is read whole."""
    text = json.dumps({"vocab_size": 777, "tokenizer": "stub"}, indent=24_990)
    (nanogpt_dir / "tokens.json").write_text(text)
    assert 40_000 < len(text) < 1 << 16
    assert data.open_corpus(str(nanogpt_dir)).vocab_size == 777


@pytest.mark.parametrize("sidecar, accepted", [
    ({"vocab_size": 1}, True), ({"tokenizer": "x"}, True),
    ({"tokenizer": ""}, False), ({"vocab_size": -3}, False), ({"vocab_size": True}, False)])
def test_the_sidecars_smallest_values(tmp_path, sidecar, accepted):
    """The smallest vocabulary (one token, id 0) and a one-letter tokenizer name are
    valid; an empty name, a negative size or a boolean are not."""
    folder = tmp_path / "ids"
    folder.mkdir()
    for name in ("train.bin", "val.bin"):
        np.zeros(23, dtype=np.uint16).tofile(folder / name)
    (folder / "tokens.json").write_text(json.dumps(sidecar))
    if accepted:
        corpus = data.open_corpus(str(folder))
        assert corpus.vocab_size == sidecar.get("vocab_size", 1)
        assert corpus.tokens["tokenizer"] == sidecar.get("tokenizer")
        corpus.check_fits(8, corpus.vocab_size)
    else:
        key, value = next(iter(sidecar.items()))
        with pytest.raises(data.DataError, match=f"{key} {value!r} is not valid"):
            data.open_corpus(str(folder))
