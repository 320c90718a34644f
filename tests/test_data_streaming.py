"""Data that streams: lazy folder / pairs / manifest datasets, wds shards, encode across workers and ranks."""
import io
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import vqgen.data.lazy as lazy_mod
from conftest import synthetic_images
from vqgen.cli import main
from vqgen.data import ImageDataset, LazyImageDataset, load_images
from vqgen.data.lazy import StringArray
from vqgen.data.tokens import load_tokens
from vqgen.errors import DataError
from vqgen.data.encode import encode_dataset
from vqgen.prior.codec import TokenizerCodec
from vqgen.tokenizer.vqgan import VQTokenizer
from vqgen.train.common import batch_indices
from vqgen.train.tokenizer import TOKENIZER_PRESETS, train_tokenizer

N = 24


def _png(img: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img[0].numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> ImageDataset:
    return synthetic_images(N, size=16, classes=3)


@pytest.fixture
def folder(tmp_path, images):
    """c0/ c1/ c2/ class folders of 16×16 grey PNGs with a .txt caption beside each; item 5 is not a PNG."""
    root = tmp_path / "imgs"
    for i, img in enumerate(images.images):
        sub = root / images.class_names[int(images.labels[i])]
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:03d}.png").write_bytes(_png(img))
        (sub / f"{i:03d}.txt").write_text(f"picture number {i}")
    return root


def _names(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def _break(root, k: int) -> str:
    """Overwrite the k-th image (in dataset order) with bytes no decoder reads."""
    name = _names(root)[k]
    (root / name).write_bytes(b"not a png")
    return name


def _wds(tmp_path, images, shards: int = 3, bad: int | None = None) -> str:
    """Tar shards written with webdataset's TarWriter: key.png + key.txt + key.cls, N/shards per shard."""
    import webdataset as wds
    d = tmp_path / "shards"
    d.mkdir()
    per = N // shards
    for s in range(shards):
        with wds.TarWriter(str(d / f"part-{s:03d}.tar")) as w:
            for i in range(s * per, (s + 1) * per):
                w.write({"__key__": f"{i:05d}", "png": b"garbage" if i == bad else _png(images.images[i]),
                         "txt": f"caption {i}", "cls": str(int(images.labels[i]))})
    return f"wds:{d}/part-{{000..{shards - 1:03d}}}.tar"


@pytest.fixture(scope="module")
def tok_run(tmp_path_factory):
    """A tiny random grey 16×16 tokenizer saved as a run (no training: only its codec is needed)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tok")
    VQTokenizer(TOKENIZER_PRESETS["tiny"]().model).eval().save_pretrained(out)
    return out


def _codec(run) -> TokenizerCodec:
    return TokenizerCodec(VQTokenizer.from_pretrained(run).eval(), str(run))


# --- lazy datasets ----------------------------------------------------------------------------------

def test_string_array_round_trips_and_is_numpy_backed():
    texts = ["a", "", "ünïcødé ✓", "x" * 1000, "line\nbreak"]
    arr = StringArray(texts)
    assert list(arr) == texts and len(arr) == 5 and arr[-1] == texts[-1]
    assert arr.take([2, 0]) == [texts[2], texts[0]]
    assert isinstance(arr.buffer, np.ndarray) and isinstance(arr.offsets, np.ndarray)
    with pytest.raises(IndexError):
        arr[5]


def test_lazy_folder_reads_the_same_images_labels_and_order_as_memory(folder):
    mem = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=False)
    lz = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=True)
    assert isinstance(mem, ImageDataset) and isinstance(lz, LazyImageDataset)
    assert len(lz) == len(mem) == N and lz.class_names == mem.class_names == ["c0", "c1", "c2"]
    assert torch.equal(lz.labels, mem.labels) and lz.image_shape == mem.image_shape == (1, 16, 16)
    idx = torch.tensor([5, 0, 23, 5])
    assert torch.equal(lz.batch(idx), mem.batch(idx)) and torch.equal(mem.batch(idx), mem.images[idx])
    with pytest.raises(DataError, match="read lazily"):
        lz.images


def test_lazy_none_switches_at_the_in_memory_limit(folder, monkeypatch):
    spec = f"folder:{folder}"
    assert isinstance(load_images(spec, resolution=16, channels=1, lazy=None), ImageDataset)
    monkeypatch.setattr(lazy_mod, "IN_MEMORY_MAX_BYTES", N * 16 * 16 - 1)  # one byte short of the whole set
    assert isinstance(load_images(spec, resolution=16, channels=1, lazy=None), LazyImageDataset)
    assert isinstance(load_images(spec, resolution=16, channels=1, lazy=False), ImageDataset)


def test_bad_file_found_lazily_is_substituted_counted_once_and_warned_once(folder):
    _break(folder, 5)
    lz = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=True)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        good = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=False)  # drops the bad file
    assert good.skipped == 1 and len(good) == N - 1
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        x = lz.batch([5, 4])
    assert torch.equal(x[0], good.images[5])  # item 6 of the lazy set = item 5 once the bad file is dropped
    assert torch.equal(x[1], good.images[4]) and lz.skipped == 1 and list(lz.bad) == [5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second count
        lz.batch([5, 5])
    assert lz.skipped == 1
    last = lz.batch([N - 1])  # a bad item's substitute wraps around
    assert last.shape == (1, 1, 16, 16)


def test_all_bad_files_raise_a_data_error(folder):
    for k in range(N):
        _break(folder, k)
    lz = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=True)
    with pytest.raises(DataError, match="none of its 24 images"):
        lz.batch([3])
    with pytest.raises(DataError, match="none of its 24 images") as err:  # from a worker: the error itself
        next(lz.step_batches(lambda s: torch.tensor([s]), 0, 1, workers=1))
    assert "Traceback" not in str(err.value)


def test_step_batches_are_the_same_with_workers_and_in_memory(folder):
    """The batch of step s is a pure function of (seed, s): the same from memory, lazily, 0 or 2 workers."""
    _break(folder, 7)
    spec = f"folder:{folder}"
    lz0 = load_images(spec, resolution=16, channels=1, lazy=True)
    lz2 = load_images(spec, resolution=16, channels=1, lazy=True)
    plan = lambda s: batch_indices(N, 8, s, seed=3)  # noqa: E731
    with pytest.warns(UserWarning):
        a = list(lz0.step_batches(plan, 2, 9, workers=0))
    with pytest.warns(UserWarning):
        b = list(lz2.step_batches(plan, 2, 9, workers=2))
    assert len(a) == len(b) == 7 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert lz0.skipped == lz2.skipped == 1  # counted in the main process, whoever decoded it
    mem = ImageDataset(lz0.batch(range(N)), None)  # the lazily read set, substitute included, in memory
    assert all(torch.equal(x, y) for x, y in zip(a, mem.step_batches(plan, 2, 9)))


def test_tokenizer_trains_bitwise_the_same_from_a_lazy_folder_with_workers(folder, tmp_path):
    cfg = lambda: TOKENIZER_PRESETS["tiny"]()  # noqa: E731
    mem = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=False)
    lz = load_images(f"folder:{folder}", resolution=16, channels=1, lazy=True)
    c = cfg()
    c.loop.max_steps, c.loop.batch_size = 3, 8
    a = train_tokenizer(c, tmp_path / "mem", train_data=mem, progress=False)
    c = cfg()
    c.loop.max_steps, c.loop.batch_size = 3, 8
    b = train_tokenizer(c, tmp_path / "lazy", train_data=lz, progress=False, workers=1)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_lazy_pairs_and_manifest_keep_captions(folder, tmp_path):
    mem = load_images(f"pairs:{folder}", resolution=16, channels=1, lazy=False)
    lz = load_images(f"pairs:{folder}", resolution=16, channels=1, lazy=True)
    assert list(lz.captions) == mem.captions and torch.equal(lz.batch(range(N)), mem.images)
    rows = [{"image": str(folder / n), "caption": f"row {k}"} for k, n in enumerate(_names(folder))]
    rows.append({"image": str(folder / "missing.png"), "caption": "gone"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="skipped 1 of 25"):
        man = load_images(f"manifest:{tmp_path / 'm.jsonl'}", resolution=16, channels=1, lazy=True)
    assert man.captions[3] == "row 3" and man.skipped == 1 and man.caption_stats["missing_image"] == 1


# --- wds ------------------------------------------------------------------------------------------

def test_wds_index_reads_images_captions_and_labels(tmp_path, images):
    spec = _wds(tmp_path, images, bad=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lz = load_images(spec, resolution=16, channels=1, lazy=True)
    assert len(lz) == N and lz.captions[10] == "caption 10" and torch.equal(lz.labels, images.labels)
    assert torch.equal(lz.batch([0, 17]), images.images[[0, 17]])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert torch.equal(lz.batch([10]), images.images[[11]])  # substituted by the next sample
    with pytest.warns(UserWarning):
        mem = load_images(spec, resolution=16, channels=1, lazy=False)
    assert len(mem) == N - 1 and mem.captions[10] == "caption 11" and mem.skipped == 1


def test_wds_spec_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(DataError, match="do not exist"):
        load_images(f"wds:{tmp_path}/none-{{0..1}}.tar", resolution=16, channels=1)
    with pytest.raises(DataError, match="needs files, not streams"):
        load_images("wds:pipe:cat x.tar", resolution=16, channels=1)
    assert main(["encode", "--pixels", "4", "--data", f"wds:{tmp_path}/x.tar", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("vqgen: error:")


# --- encode across workers and ranks --------------------------------------------------------------

def _read(out):
    t = load_tokens(out, "train")
    return t.tokens, t.labels, t.captions


def _same(a, b) -> bool:
    """Two (tokens, labels, captions) triples hold the same values."""
    return all(x == y if not isinstance(x, torch.Tensor) else torch.equal(x, y) for x, y in zip(a, b))


def test_encode_lazy_with_workers_equals_in_memory_and_captions_travel(folder, tmp_path, tok_run, monkeypatch):
    _break(folder, 4)
    codec = _codec(tok_run)
    with pytest.warns(UserWarning):
        encode_dataset(codec, f"pairs:{folder}", tmp_path / "mem", shard_size=10, batch_size=4, progress=False)
    monkeypatch.setattr(lazy_mod, "IN_MEMORY_MAX_BYTES", 0)  # everything lazily from here
    for w in (0, 2):
        with pytest.warns(UserWarning) as caught:
            counts = encode_dataset(codec, f"pairs:{folder}", tmp_path / f"w{w}", shard_size=10, batch_size=4,
                                    progress=False, workers=w)
        assert any("skipped while encoding: 1 unreadable" in str(c.message) for c in caught)
        assert counts == {"train": N - 1}
        assert _same(_read(tmp_path / "mem"), _read(tmp_path / f"w{w}"))
    tokens, _, captions = _read(tmp_path / "w2")
    expect = [f"picture number {int(n[-7:-4])}" for k, n in enumerate(_names(folder)) if k != 4]
    assert captions == expect and len(tokens) == N - 1
    assert sorted(p.name for p in (tmp_path / "w2" / "train").glob("shard-*")) == [
        "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]


def test_encode_wds_stream_is_the_same_with_workers(tmp_path, images, tok_run):
    spec = _wds(tmp_path, images, shards=4, bad=3)
    codec = _codec(tok_run)
    outs = []
    for w in (0, 2):
        with pytest.warns(UserWarning):
            assert encode_dataset(codec, spec, tmp_path / f"w{w}", progress=False, workers=w) == {"train": N - 1}
        outs.append(_read(tmp_path / f"w{w}"))
    (t0, l0, c0), (t2, l2, c2) = outs
    assert torch.equal(t0, t2) and torch.equal(l0, l2) and c0 == c2
    expect = [f"caption {i}" for i in range(N) if i != 3]
    assert c0 == expect and torch.equal(l0, images.labels[[i for i in range(N) if i != 3]])
    with torch.inference_mode():
        assert torch.equal(t0[:3], codec.encode(images.images[:3]))
    assert len(list((tmp_path / "w2" / "train").glob("shard-*.npy"))) == 4  # one token shard per tar shard



def test_encode_reads_pipe_streams_and_patterns_joined_by_double_colons(tmp_path, images, tok_run):
    """docs/data.md: a shard may be a ``pipe:`` command, and several patterns join with ``::``; both give
    the grids, labels and captions of the same shards named by one brace pattern."""
    spec = _wds(tmp_path, images, shards=3)  # wds:DIR/part-{000..002}.tar
    d = tmp_path / "shards"
    codec = _codec(tok_run)
    encode_dataset(codec, spec, tmp_path / "braces", progress=False)
    joined = f"wds:{d}/part-{{000..001}}.tar::{d}/part-002.tar"
    assert encode_dataset(codec, joined, tmp_path / "joined", progress=False) == {"train": N}
    assert _same(_read(tmp_path / "braces"), _read(tmp_path / "joined"))
    lz = load_images(joined, resolution=16, channels=1, lazy=True)  # training indexes the same three shards
    assert len(lz) == N and torch.equal(lz.labels, images.labels) and lz.captions[N - 1] == f"caption {N - 1}"
    piped = f"wds:pipe:cat {d}/part-000.tar::pipe:cat {d}/part-{{001..002}}.tar"
    assert encode_dataset(codec, piped, tmp_path / "piped", progress=False, workers=2) == {"train": N}
    assert _same(_read(tmp_path / "braces"), _read(tmp_path / "piped"))
    assert len(list((tmp_path / "piped" / "train").glob("shard-*.npy"))) == 3  # still one token shard per tar


def test_encode_under_two_gloo_ranks_merges_into_the_single_process_result(tmp_path, images, tok_run):
    spec = _wds(tmp_path, images, shards=3)
    codec = _codec(tok_run)
    encode_dataset(codec, spec, tmp_path / "one", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vqgen.cli",
           "encode", "--tokenizer", str(tok_run), "--data", spec, "--out", str(tmp_path / "two"), "--no-progress",
           "--workers", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("encoded {'train': 24}") == 1 and "(2 ranks)" in res.stdout
    assert _same(_read(tmp_path / "one"), _read(tmp_path / "two"))



def _encode_two_ranks(tmp_path, spec: str, tok_run, out: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vqgen.cli",
           "encode", "--tokenizer", str(tok_run), "--data", spec, "--out", str(tmp_path / out), "--no-progress",
           "--workers", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def test_two_ranks_that_skip_different_things_sum_their_counts(tmp_path, images, tok_run):
    """Rank 0 (tar shards 0 and 2) meets an undecodable image in shard 0; rank 1 (shard 1) meets none:
    the counts of the ranks differ in their keys, and rank 0 reports their sum."""
    spec = _wds(tmp_path, images, shards=3, bad=2)
    with pytest.warns(UserWarning, match="skipped while encoding: 1 unreadable"):
        encode_dataset(_codec(tok_run), spec, tmp_path / "one", progress=False)
    res = _encode_two_ranks(tmp_path, spec, tok_run, "two")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(f"encoded {{'train': {N - 1}}}") == 1 and "(2 ranks)" in res.stdout
    assert res.stderr.count("skipped while encoding: 1 unreadable") == 1  # rank 0 reports for both
    assert _same(_read(tmp_path / "one"), _read(tmp_path / "two"))


def test_cli_trains_a_tokenizer_from_wds_shards_with_workers(tmp_path, images, monkeypatch, capsys):
    spec = _wds(tmp_path, images, shards=2)
    monkeypatch.setattr(lazy_mod, "IN_MEMORY_MAX_BYTES", 0)  # read lazily, as a large set would be
    args = ["train", "tokenizer", "--config", "tiny", "--data", spec, "--out", str(tmp_path / "tok"), "--max-steps", "2",
            "--no-progress"]
    assert main(args + ["--workers", "-1"]) == 2
    assert "vqgen: error: --workers must be 0" in capsys.readouterr().err
    assert main(args + ["--workers", "1"]) == 0
    assert torch.load(tmp_path / "tok" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_mmap_threshold_is_fixed_on_glibc():
    import platform
    assert lazy_mod.fix_mmap_threshold() == (platform.libc_ver()[0] == "glibc")


def test_clip_trains_bitwise_the_same_from_a_lazily_read_pairs_folder(folder, tmp_path, monkeypatch):
    """Past the in-memory limit the CLIP trainer reads its captioned images a batch at a time."""
    from vqgen.train.clip import CLIP_PRESETS, train_clip
    cfg = CLIP_PRESETS["tiny"]()
    cfg.loop.max_steps, cfg.data = 4, f"pairs:{folder}"
    in_memory, _ = train_clip(cfg, tmp_path / "memory", progress=False)
    monkeypatch.setattr(lazy_mod, "IN_MEMORY_MAX_BYTES", 0)  # read lazily, as a large set would be
    lazily, _ = train_clip(cfg, tmp_path / "lazy", progress=False)
    for (key, a), b in zip(in_memory.state_dict().items(), lazily.state_dict().values()):
        assert torch.equal(a, b), key
