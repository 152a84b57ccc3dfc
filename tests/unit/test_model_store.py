"""Models resolved once on the driver and shared (raysynth.generate.model_source / model_store):
a tiny Stable Diffusion pipeline saved in float32 and placed only in a "driver" Hugging Face
cache under a hub-style id reaches "nodes" whose caches are empty (each node = its own HF_HOME)
through the model store, is copied once per node, and loads there in float16 / bfloat16; the
dry-run report says "cached" / "cannot be reached offline" without touching the network.
These are also the model-loading tests the lowest-versions CI step runs (.ci/run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import hub_cached_sd, one_thread  # noqa: F401

from raysynth.config import build_config
from raysynth.config.schema import GeneratorConfig
from raysynth.errors import ConfigError
from raysynth.generate import model_source
from raysynth.generate.loading import apply_options, dtype_kwarg, load_pipeline
from raysynth.generate.model_store import local_copy, publish

pytestmark = pytest.mark.usefixtures("one_thread")

HUB_ID = "raysynth-tests/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[2]


def use_hf_home(monkeypatch, home: Path, offline: bool = True) -> None:
    """This process's Hugging Face cache is ``home`` (huggingface_hub reads its cache folder
    into a module constant at import: set both)."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.delenv("RAYSYNTH_MODEL_CACHE", raising=False)


@pytest.fixture(scope="module")
def driver_cache(tmp_path_factory):
    home = tmp_path_factory.mktemp("driver-hf")
    hub_cached_sd(home, HUB_ID, COMMIT)
    return home


@pytest.fixture(scope="module")
def store_and_ref(driver_cache, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        use_hf_home(mp, driver_cache)
        status = model_source.model_status(HUB_ID)
        folder = model_source.resolve_model(HUB_ID)
        store = tmp_path_factory.mktemp("store")
        ref = publish(HUB_ID, folder, str(store))
    finally:
        mp.undo()
    return status, folder, store, ref


def test_driver_resolves_the_cached_snapshot_and_publishes_one_copy(store_and_ref):
    status, folder, store, ref = store_and_ref
    assert status.state == model_source.CACHED and status.usable
    assert folder.name == COMMIT and ref.revision == COMMIT
    copy = store / "raysynth-tests--tiny-sd" / COMMIT
    assert (copy / "manifest.json").is_file() and (copy / "unet" / "config.json").is_file()
    assert not (copy / "unet").is_symlink() and not any(p.is_symlink() for p in copy.rglob("*"))
    names = {rel for rel, _ in ref.files}
    assert "model_index.json" in names and any(n.startswith("unet/") for n in names)
    # published again: nothing is written (the store already has this revision)
    before = (copy / "manifest.json").stat().st_mtime_ns
    assert publish(HUB_ID, folder, str(store)) == ref
    assert (copy / "manifest.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_node_with_an_empty_cache_copies_once_and_loads_in_the_configured_dtype(
    store_and_ref, tmp_path, monkeypatch, dtype
):
    _status, _folder, store, ref = store_and_ref
    node = tmp_path / "node-hf"
    use_hf_home(monkeypatch, node)
    assert model_source.model_status(HUB_ID).state == model_source.OFFLINE  # empty cache
    folder, copied = local_copy(ref)
    assert copied == sum(size for _rel, size in ref.files) > 0
    assert folder == node / "raysynth-models" / "raysynth-tests--tiny-sd" / COMMIT
    assert local_copy(ref) == (folder, 0)  # this node has it now: nothing copied
    cfg = GeneratorConfig(kind="text2image", model=HUB_ID, dtype=dtype)
    pipe = load_pipeline(cfg, torch.device("cpu"), ref)
    want = getattr(torch, dtype)
    for name in ("unet", "vae", "text_encoder"):  # saved in float32
        assert {p.dtype for p in getattr(pipe, name).parameters()} == {want}, name


def test_a_node_that_has_the_snapshot_in_its_own_cache_copies_nothing(
    store_and_ref, driver_cache, tmp_path, monkeypatch
):
    _status, _folder, _store, ref = store_and_ref
    use_hf_home(monkeypatch, driver_cache)
    folder, copied = local_copy(ref)
    assert copied == 0 and folder.name == COMMIT and "snapshots" in folder.parts
    assert not (driver_cache / "raysynth-models").exists()


def test_a_store_copy_that_does_not_match_is_refused(store_and_ref, tmp_path, monkeypatch):
    _status, folder, _store, ref = store_and_ref
    bad_store = tmp_path / "bad-store"
    publish(HUB_ID, folder, str(bad_store))
    index = bad_store / "raysynth-tests--tiny-sd" / COMMIT / "model_index.json"
    index.write_text(index.read_text() + " ")
    use_hf_home(monkeypatch, tmp_path / "node")
    from dataclasses import replace

    with pytest.raises(ConfigError, match="does not match the driver's files"):
        local_copy(replace(ref, store=str(bad_store)))
    assert not list((tmp_path / "node" / "raysynth-models").rglob("model_index.json"))
    with pytest.raises(ConfigError, match="no model store to copy it from"):
        local_copy(replace(ref, store=""))


RECIPES = ("flowers10-unicon", "cubs10-unicon", "imagenet-lt-feedback", "nico-feedback",
           "flowers102-diffcoremix", "air-flowers102")


def test_every_recipe_dry_runs_offline_with_an_empty_cache(tmp_path, monkeypatch, capsys):
    """`raysynth run --dry-run --config jobs/NAME.yaml` on a machine with no network (offline)
    and an empty cache succeeds, listing what cannot be reached; a real run fails up front."""
    from raysynth.cli import main
    from raysynth.flows.run import check

    use_hf_home(monkeypatch, tmp_path / "empty")
    for name in RECIPES:
        path = ROOT / "jobs" / f"{name}.yaml"
        assert main(["run", "--dry-run", "--config", str(path)]) == 0, name
        out = capsys.readouterr().out
        model = build_config(config_file=path).synthesis.generator.model
        assert f"generator {model}: cannot be reached" in out, name  # offline, or no such file
        assert "ViT-B-32/openai: cannot be reached offline" in out or "unclip" in model, name
        assert "is not on this machine; not checked" in out, name
    with pytest.raises(ConfigError, match="cannot be loaded offline"):
        check(build_config(config_file=ROOT / "jobs" / "flowers10-unicon.yaml"))


def test_download_size_counts_what_from_pretrained_fetches():
    files = [
        ("model_index.json", 500), ("v1-5-pruned.safetensors", 7_000), ("v1-5-pruned.ckpt", 7_000),
        ("unet/diffusion_pytorch_model.safetensors", 3_000),
        ("unet/diffusion_pytorch_model.bin", 3_000),
        ("unet/diffusion_pytorch_model.fp16.safetensors", 1_500),
        ("unet/config.json", 100), ("vae/diffusion_pytorch_model.bin", 300),
    ]
    assert model_source.download_size(files) == 500 + 3_000 + 100 + 300
    assert model_source.human_size(4_265_000_000) == "4.3 GB"


def test_dtype_is_passed_under_the_name_this_diffusers_takes():
    import diffusers
    from packaging.version import Version

    new = Version(diffusers.__version__).release >= (0, 40)
    assert dtype_kwarg() == ("dtype" if new else "torch_dtype")


def test_vae_slicing_and_tiling_follow_the_config(store_and_ref, monkeypatch, tmp_path):
    _status, folder, _store, _ref = store_and_ref
    cfg = GeneratorConfig(kind="text2image", model=str(folder))
    pipe = load_pipeline(cfg, torch.device("cpu"), batch_size=1)
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling  # auto, SD 1.x, batch 1
    assert apply_options(pipe, cfg, sdxl=False, batch_size=8)["vae_slicing"]
    assert pipe.vae.use_slicing and not pipe.vae.use_tiling
    on = apply_options(pipe, cfg, sdxl=True, batch_size=1)
    assert on["vae_slicing"] and on["vae_tiling"] and pipe.vae.use_tiling
    off = GeneratorConfig(kind="text2image", model=str(folder), vae_slicing="off",
                          vae_tiling="off", channels_last=True)
    assert not apply_options(pipe, off, sdxl=True, batch_size=32)["vae_slicing"]
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    w = next(p for p in pipe.unet.parameters() if p.dim() == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)
