"""``vqgen import taming``: published VQGAN checkpoints read without running their code, proven equal to
taming-transformers' own modules.

taming's Encoder / Decoder / VectorQuantizer2 come from the PyPI package ``taming-transformers-rom1504``,
which ``make install`` puts in the venv with ``--no-deps`` (its declared dependencies would pull
Lightning and torchvision; these modules need only torch, numpy and einops). The Makefile is the
supported way to install for tests, and CI runs ``make test``: when the package is missing, the tests
that need it fail with the command to run — they are never skipped, so CI cannot pass without them.
"""
import argparse
import io
import json
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import synthetic_images
from vqgen.cli import main
from vqgen.convert.pickle_reader import open_checkpoint, read_state_dict
from vqgen.convert.taming import convert_taming_state, import_taming, read_taming_config
from vqgen.errors import ConfigError, WeightsError
from vqgen.tokenizer.vqgan import VQTokenizer

TAMING_PIN = "taming-transformers-rom1504==0.0.6"


def taming_modules():
    try:
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer2
    except ImportError as exc:
        pytest.fail(f"{TAMING_PIN} is not installed ({exc}): run `make install`, or "
                    f"`.venv/bin/pip install {TAMING_PIN} --no-deps`")
    return Encoder, Decoder, VectorQuantizer2


# --- what a checkpoint may hold besides tensors ------------------------------------------------------


class FileMaker:
    """Unpickling it opens (creates) a file: the kind of code a plain unpickle runs."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class ShellCommand:
    """Unpickling it calls os.system."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class ModelCheckpoint:
    """Stands for a Lightning callback class: Lightning 1.0 keys the callbacks' states by the class itself."""


class DictConfig(dict):
    """A foreign mapping (pickled with SETITEMS on the rebuilt object)."""


class ListConfig(list):
    """A foreign sequence (pickled with APPENDS on the rebuilt object)."""


def lightning_checkpoint(state_dict: dict, marker: Path) -> dict:
    """A checkpoint laid out as PyTorch Lightning saves one, with foreign objects that run code when unpickled."""
    return {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8",
        "state_dict": state_dict,
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"ddconfig": FileMaker(marker), "hook": ShellCommand(marker),
                             "args": argparse.Namespace(lr=1e-4, hook=FileMaker(marker)),  # NEWOBJ + BUILD
                             "lossconfig": DictConfig(disc_start=1), "ch_mult": ListConfig([1, 2])},
    }


def sample_state_dict() -> OrderedDict:
    base = torch.randn(4, 5)
    return OrderedDict(
        full=base, transposed=base.t(), window=base[1:3, 2:],  # three views of one storage
        half=torch.randn(3, dtype=torch.float16), long=torch.arange(5), flag=torch.tensor(True),
        empty=torch.zeros(0, 3), param=torch.nn.Parameter(torch.ones(2, 2)),
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_gets_the_tensors_and_never_runs_the_code_that_torch_refuses(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    state = sample_state_dict()
    path = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint(state, marker), path, _use_new_zipfile_serialization=zip_format)
    # Why the reader exists: torch's weights-only loader refuses a checkpoint naming foreign classes.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    key, got = read_state_dict(path)
    assert key == "state_dict" and list(got) == list(state)
    for name, want in state.items():
        assert got[name].dtype == want.dtype and torch.equal(got[name], want.detach()), name
        assert type(got[name]) is torch.Tensor  # a Parameter comes back as a plain tensor
    with open_checkpoint(path) as ckpt:  # the rest of the file is inert data
        assert ckpt.root["epoch"] == 3 and ckpt.root["pytorch-lightning_version"] == "1.0.8"
        [callback] = ckpt.root["callbacks"]
        assert callback.global_name.endswith("ModelCheckpoint")
        hparams = ckpt.root["hyper_parameters"]
        assert "open" in repr(hparams["ddconfig"]) and "system" in repr(hparams["hook"])
        for key, name in [("args", "argparse.Namespace"), ("lossconfig", "DictConfig"), ("ch_mult", "ListConfig")]:
            assert name in repr(hparams[key]) and not hasattr(hparams[key], "lr")  # placeholders, state dropped
    assert not marker.exists()
    # The payloads are live: a plain unpickle runs them.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _crafted_zip(path: Path, tensor_args: tuple, nbytes: int = 16, *, state: tuple | None = None,
                 data: bytes | None = None, compress: int = zipfile.ZIP_STORED) -> None:
    """A torch-style zip whose pickle rebuilds a tensor from ``tensor_args`` over one float storage of
    ``nbytes``; ``state`` (with ``tensor_args`` or ``state`` naming the storage as ``"storage"``) is then set on
    the tensor by a BUILD opcode; the storage entry holds ``data`` (zeros by default), compressed with ``compress``."""
    storage = object()
    swap = lambda args: tuple(storage if a == "storage" else a for a in args)  # noqa: E731

    class Tensor:
        def __reduce__(self):
            rebuild = (torch._utils._rebuild_tensor_v2, (storage, *tensor_args, False, OrderedDict()))
            return rebuild if state is None else (*rebuild, swap(state))  # a third item: pickled as BUILD

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", nbytes // 4) if obj is storage else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"state_dict": {"w": Tensor()}})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", bytes(nbytes) if data is None else data, compress_type=compress)


@pytest.mark.parametrize("make, msg", [
    (lambda p: p.write_bytes(os.urandom(64)), "cannot be read as a pytorch checkpoint"),
    (lambda p: torch.save([torch.zeros(2)], p), "not a checkpoint dict"),
    (lambda p: torch.save({"model": {"w": torch.zeros(2)}}, p), "no 'state_dict' entry"),
    (lambda p: torch.save({"state_dict": {"w": 3}}, p), "not a plain dense tensor"),
    (lambda p: _crafted_zip(p, (0, (100,), (1,))), "outside its storage"),  # 100 floats from 4
    (lambda p: _crafted_zip(p, (3, (2, 2), (1, 1))), "outside its storage"),  # elements 3..5 of 4
    (lambda p: _crafted_zip(p, (0, (4,), (-1,))), "malformed tensor record"),
    # Sizes torch cannot hold in int64: set_() / torch.empty would raise TypeError or overflow.
    (lambda p: _crafted_zip(p, (0, (2**70,), (0,))), "malformed tensor record"),
    (lambda p: _crafted_zip(p, (0, (0, 2**70), (1, 1))), "malformed tensor record"),
    (lambda p: _crafted_zip(p, (2**63, (1,), (1,))), "malformed tensor record"),
    (lambda p: _crafted_zip(p, (0, (2**62,), (0,))), "overflow int64"),  # 2**62 floats: 2**64 bytes
    (lambda p: _crafted_zip(p, (0, (2, 2), (2**62, 1))), "overflow int64"),  # last element past int64
])
def test_reader_rejects_bad_files_with_one_clear_error(tmp_path, make, msg):
    path = tmp_path / "bad.ckpt"
    make(path)
    with pytest.raises(WeightsError, match="bad.ckpt") as err:
        read_state_dict(path)
    assert msg in str(err.value).lower()
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("state", [("storage", 0, (100,), (1,)), ("storage", 0, (4,), (-1,)), (None, {"offset": 9})])
def test_reader_refuses_a_pickle_that_rewrites_a_validated_tensor_record(tmp_path, state):
    path = tmp_path / "bad.ckpt"
    _crafted_zip(path, (0, (4,), (1,)), state=state)  # valid when rebuilt, then a BUILD sets other fields
    with zipfile.ZipFile(path) as z:
        assert "BUILD" in {op.name for op, _, _ in pickletools.genops(z.read("archive/data.pkl"))}
    with pytest.raises(WeightsError, match="bad.ckpt") as err:
        read_state_dict(path)
    assert "(BUILD): refused" in str(err.value) and "\n" not in str(err.value)


def test_reader_refuses_build_on_a_storage_type(tmp_path):
    path = tmp_path / "bad.ckpt"
    with zipfile.ZipFile(path, "w") as z:  # GLOBAL torch.FloatStorage, EMPTY_DICT, BUILD, STOP
        z.writestr("archive/data.pkl", b"\x80\x02ctorch\nFloatStorage\n}b.")
    with pytest.raises(WeightsError, match=r"StorageType \(BUILD\): refused"):
        read_state_dict(path)


def test_reader_validates_a_tensor_record_again_where_it_reads_it(tmp_path):
    path = tmp_path / "ok.ckpt"
    _crafted_zip(path, (0, (4,), (1,)))
    with open_checkpoint(path) as ckpt:
        ref = ckpt.root["state_dict"]["w"]
        object.__setattr__(ref, "size", (2**70,))  # as a BUILD could have done before it was refused
        object.__setattr__(ref, "stride", (0,))
        with pytest.raises(pickle.UnpicklingError, match="malformed tensor record"):
            ckpt.tensor(ref)


@pytest.mark.parametrize("data, compress, msg", [
    (bytes(64 << 20), zipfile.ZIP_DEFLATED, "is compressed"),  # 64 MiB of zeros in ~64 KiB: a bomb
    (bytes(16), zipfile.ZIP_DEFLATED, "is compressed"),  # torch.save never compresses an entry
    (bytes(64), zipfile.ZIP_STORED, "holds 64 bytes, its storage record declares 16"),
], ids=["deflated-bomb", "deflated", "stored-oversized"])
def test_reader_refuses_storage_entries_larger_than_their_record_without_reading_them(
        tmp_path, monkeypatch, data, compress, msg):
    path = tmp_path / "bad.ckpt"
    _crafted_zip(path, (0, (4,), (1,)), data=data, compress=compress)
    assert path.stat().st_size < 1 << 20
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (
        opened.append(getattr(name, "filename", name)), real_open(self, name, *a, **k))[1])
    with pytest.raises(WeightsError, match="bad.ckpt") as err:
        read_state_dict(path)
    assert msg in str(err.value) and "archive/data/0" in str(err.value)
    assert "archive/data.pkl" in opened and "archive/data/0" not in opened


def test_reader_refuses_a_compressed_pickle(tmp_path):
    path = tmp_path / "bad.ckpt"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:  # only data.pkl DEFLATEd
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED
                         if info.filename.endswith("/data.pkl") else zipfile.ZIP_STORED)
    with pytest.raises(WeightsError, match="'archive/data.pkl' is compressed"):
        read_state_dict(path)


def test_reader_reads_a_crafted_in_bounds_view(tmp_path):
    path = tmp_path / "ok.ckpt"
    _crafted_zip(path, (1, (3,), (1,)))
    assert torch.equal(read_state_dict(path)[1]["w"], torch.zeros(3))


# --- taming-transformers' VQGAN ----------------------------------------------------------------------

DDCONFIG = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
                num_res_blocks=2, attn_resolutions=[8, 4], dropout=0.0)
N_EMBED = 48


def build_taming(embed_dim: int, seed: int = 0):
    """taming's own modules at a tiny size, random weights (norms too), the codebook spread over the
    encoder's outputs so that many codes are in use."""
    Encoder, Decoder, VectorQuantizer2 = taming_modules()
    torch.manual_seed(seed)
    z = DDCONFIG["z_channels"]
    mods = OrderedDict(encoder=Encoder(**DDCONFIG), decoder=Decoder(**DDCONFIG),
                       quantize=VectorQuantizer2(N_EMBED, embed_dim, beta=0.25),
                       quant_conv=torch.nn.Conv2d(z, embed_dim, 1), post_quant_conv=torch.nn.Conv2d(embed_dim, z, 1))
    with torch.no_grad():
        for m in mods.values():
            for mod in m.modules():
                if isinstance(mod, torch.nn.GroupNorm):
                    mod.weight.copy_(1 + 0.2 * torch.randn_like(mod.weight))
                    mod.bias.copy_(0.2 * torch.randn_like(mod.bias))
        h = mods["quant_conv"](mods["encoder"](torch.rand(8, 3, 16, 16) * 2 - 1))  # (8, e, 4, 4)
        h = h.permute(0, 2, 3, 1).reshape(-1, embed_dim)  # (128, e)
        picked = h[torch.randperm(h.shape[0])[:N_EMBED]]  # (K, e)
        mods["quantize"].embedding.weight.copy_(picked + 0.05 * torch.randn_like(picked))
    for m in mods.values():
        m.eval()
    return mods


def taming_forward(mods, x):
    """VQModel.encode / decode, as taming-transformers runs them."""
    with torch.no_grad():
        h = mods["quant_conv"](mods["encoder"](x))
        z_q, _, (_, _, idx) = mods["quantize"](h)
        rec = mods["decoder"](mods["post_quant_conv"](z_q))
    return idx.view(x.shape[0], h.shape[2], h.shape[3]), rec  # (B, h, w), (B, C, H, W)


def write_taming(tmp_path: Path, mods, embed_dim: int, marker: Path, **params) -> tuple[Path, Path]:
    state = OrderedDict((f"{name}.{k}", v) for name, m in mods.items() for k, v in m.state_dict().items())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)  # the GAN loss's weights ride along
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(8, 3, 3, 3)
    ckpt = tmp_path / "vqgan.ckpt"
    torch.save(lightning_checkpoint(state, marker), ckpt)
    config = tmp_path / "model.yaml"
    model = {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
             "params": {"embed_dim": embed_dim, "n_embed": N_EMBED, "monitor": "val/rec_loss",
                        "ddconfig": dict(DDCONFIG), "lossconfig": {
                            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                            "params": {"disc_start": 250001, "disc_weight": 0.8, "codebook_weight": 1.0}}}}
    model["params"].update(params)
    config.write_text(yaml.safe_dump({"model": model, "data": {"target": "main.DataModuleFromConfig"}}))
    return ckpt, config


@pytest.mark.parametrize("embed_dim", [8, 4], ids=["embed_dim=z_channels", "embed_dim<z_channels"])
def test_imported_taming_vqgan_gives_tamings_codes_and_reconstructions(tmp_path, capsys, embed_dim):
    mods = build_taming(embed_dim)
    marker = tmp_path / "pwned"
    ckpt, config = write_taming(tmp_path, mods, embed_dim, marker)
    with pytest.raises(pickle.UnpicklingError):  # the Lightning layout is what weights_only refuses
        torch.load(ckpt, weights_only=True)

    run = tmp_path / "run"
    assert main(["import", "taming", str(ckpt), "--config", str(config), "--out", str(run)]) == 0
    assert "16×16 images ↔ 4×4 tokens of 48 codes" in capsys.readouterr().out
    assert not marker.exists()
    model = VQTokenizer.from_pretrained(run)
    q = model.cfg.quantizer
    # Plain L2 nearest neighbour over the raw codebook, as VectorQuantizer2 does.
    assert (q.kind, q.l2_normalize, q.ema_decay, q.codebook_size) == ("vq", False, None, N_EMBED)
    assert q.code_dim == (None if embed_dim == 8 else embed_dim)
    assert (model.cfg.autoencoder.norm_groups, model.cfg.autoencoder.mid_attention) == (32, True)

    x = torch.rand(4, 3, 16, 16) * 2 - 1
    codes, rec = taming_forward(mods, x)
    assert codes.unique().numel() > 10  # many codes in play, so equal codes mean something
    assert torch.equal(model.encode(x), codes)
    with torch.no_grad():
        ours, out = model(x)
    assert torch.allclose(ours, rec, atol=1e-5, rtol=1e-4), (ours - rec).abs().max()
    # Decoding codes alone matches taming's decode of its codebook entries (vqgen clips to [-1, 1]).
    with torch.no_grad():
        z_q = mods["quantize"].get_codebook_entry(codes.flatten(), (4, 4, 4, embed_dim))  # (B, e, h, w)
        rec_codes = mods["decoder"](mods["post_quant_conv"](z_q))
    assert torch.allclose(model.decode(codes), rec_codes.clamp(-1, 1), atol=1e-5, rtol=1e-4)
    assert torch.equal(out.indices, codes)


def test_imported_run_works_with_eval_reconstruct_and_encode(tmp_path, capsys):
    ckpt, config = write_taming(tmp_path, build_taming(8), 8, tmp_path / "pwned")
    run = tmp_path / "run"
    import_taming(ckpt, config, run)
    data = synthetic_images(12, channels=3)
    imgs = tmp_path / "imgs" / "all"
    imgs.mkdir(parents=True)
    for i, img in enumerate(data.images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(imgs / f"{i}.png")
    spec = f"folder:{tmp_path / 'imgs'}"
    capsys.readouterr()
    assert main(["eval", "tokenizer", str(run), "--data", spec, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_images"] == 12 and "psnr" in metrics
    assert main(["reconstruct", str(run), "--data", spec, "--out", str(tmp_path / "g.png"), "--n", "4"]) == 0
    assert (tmp_path / "g.png").is_file()
    assert main(["encode", "--tokenizer", str(run), "--data", spec, "--out", str(tmp_path / "toks"),
                 "--no-progress"]) == 0
    assert any((tmp_path / "toks").iterdir())


@pytest.mark.parametrize("edit, key", [
    (lambda p: p["ddconfig"].update(double_z=True), "double_z"),
    (lambda p: p["ddconfig"].pop("double_z"), "double_z"),  # taming's default is true
    (lambda p: p["ddconfig"].update(resamp_with_conv=False), "resamp_with_conv"),
    (lambda p: p["ddconfig"].update(give_pre_end=True), "give_pre_end"),
    (lambda p: p["ddconfig"].update(out_ch=1), "out_ch"),
    (lambda p: p["ddconfig"].update(tanh_out=True), "tanh_out"),
    (lambda p: p["ddconfig"].update(ch=16), "ch × ch_mult"),
    (lambda p: p["ddconfig"].update(ch_mult="1,2"), "ch_mult"),
    (lambda p: p["ddconfig"].update(resolution=18), "resolution"),
    (lambda p: p["ddconfig"].pop("z_channels"), "z_channels"),
    (lambda p: p.update(remap="used.npy"), "remap"),
    (lambda p: p.update(colorize_nlabels=182), "colorize_nlabels"),
    (lambda p: p.update(kl_weight=1e-8), "kl_weight"),
    (lambda p: p.pop("n_embed"), "n_embed"),
    (lambda p: p.update(embed_dim=True), "embed_dim"),
])
def test_unsupported_taming_settings_are_one_clear_error(tmp_path, capsys, edit, key):
    cfg = tmp_path / "model.yaml"
    params = {"embed_dim": 8, "n_embed": N_EMBED, "ddconfig": dict(DDCONFIG), "lossconfig": {}}
    edit(params)
    cfg.write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": params}}))
    with pytest.raises(ConfigError, match="model.yaml"):
        read_taming_config(cfg)
    # The YAML is checked before the checkpoint is opened: a missing checkpoint does not matter yet.
    assert main(["import", "taming", str(tmp_path / "absent.ckpt"), "--config", str(cfg), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgen: error:") and key in err and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, msg", [
    ("model: {target: taming.models.vqgan.GumbelVQ, params: {}}", "model.target"),
    ("model: [1, 2]", "model must be a mapping"),
    ("model: {params: {ddconfig: {}}: x", "not valid yaml"),
])
def test_other_models_and_bad_yaml_are_refused(tmp_path, text, msg):
    cfg = tmp_path / "model.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="model.yaml") as err:
        read_taming_config(cfg)
    assert msg in str(err.value).lower()
    with pytest.raises(ConfigError, match="does not exist"):
        read_taming_config(tmp_path / "nope.yaml")


def test_checkpoint_not_matching_its_yaml_names_the_weight(tmp_path, capsys):
    mods = build_taming(8)
    ckpt, config = write_taming(tmp_path, mods, 8, tmp_path / "pwned")
    cfg = read_taming_config(config)
    _, state = read_state_dict(ckpt)
    for broken, msg in [
        ({k: v for k, v in state.items() if k != "decoder.conv_out.bias"}, "decoder.conv_out.bias"),
        ({**state, "quantize.used": torch.arange(4.0)}, "quantize.used"),
        ({**state, "quantize.embedding.weight": torch.randn(N_EMBED + 1, 8)}, "quantize.embedding.weight"),
        ({**state, "encoder.down.1.attn.0.q.weight": torch.randn(64, 64, 3, 3)}, "encoder.down.1.attn.0.q"),
        ({**state, "quant_conv.weight": torch.randn(8, 8, 1, 1).long()}, "quant_conv.weight"),
    ]:
        with pytest.raises(WeightsError, match="vqgan.ckpt") as err:
            convert_taming_state(broken, cfg, ckpt)
        assert msg in str(err.value)
    # A model.yaml of another size: the first mismatching weight is named, through the CLI in one line.
    other = yaml.safe_load(config.read_text())
    other["model"]["params"]["n_embed"] = 64
    config.write_text(yaml.safe_dump(other))
    assert main(["import", "taming", str(ckpt), "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgen: error:") and "quantize.embedding.weight" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
    # An existing run is never overwritten.
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not an empty directory"):
        import_taming(ckpt, config, tmp_path / "taken")


def test_legacy_format_taming_checkpoint_imports_the_same(tmp_path):
    mods = build_taming(4)
    ckpt, config = write_taming(tmp_path, mods, 4, tmp_path / "pwned")
    _, zip_state = read_state_dict(ckpt)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(lightning_checkpoint(zip_state, tmp_path / "pwned"), legacy, _use_new_zipfile_serialization=False)
    a = import_taming(ckpt, config, tmp_path / "a")
    b = import_taming(legacy, config, tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not (tmp_path / "pwned").exists()
    # With embed_dim < z_channels the 1×1 convolutions become projections: their shapes are checked first.
    broken = {**zip_state, "post_quant_conv.weight": torch.randn(8, 5, 1, 1)}
    with pytest.raises(WeightsError, match=r"post_quant_conv.weight has shape \(8, 5, 1, 1\)"):
        convert_taming_state(broken, read_taming_config(config), ckpt)
