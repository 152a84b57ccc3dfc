"""Every shipped recipe (``jobs/*.yaml``) and embedded preset loads, says how to run it, and holds
only differences from what it starts from (STYLE: torchtune's configs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raysynth.config import RunConfig, build_config, list_presets
from raysynth.config.load import flatten, read_yaml, to_dict
from raysynth.data.splits import long_tail_groups, train_counts

ROOT = Path(__file__).resolve().parents[2]
JOBS_DIR = ROOT / "jobs"
RECIPES = sorted(JOBS_DIR.glob("*.yaml"))
MAIN_RECIPES = (
    "flowers10-unicon",
    "cubs10-unicon",
    "imagenet-lt-feedback",
    "nico-feedback",
    "flowers102-diffcoremix",
    "air-flowers102",
)
EMBEDDED = ("digits", "digits-lt")

# Hugging Face repositories the GPU recipes may name, by generator kind: public diffusers
# pipelines of that kind (model_index.json: StableDiffusionPipeline / StableUnCLIPImg2ImgPipeline).
# runwayml/stable-diffusion-v1-5 is left out: it was taken down; stable-diffusion-v1-5/… is the
# maintained copy. Likewise stabilityai/stable-diffusion-2-* (withdrawn from the hub in Nov 2025):
# sd2-community/… are the community mirrors. Add an id here only after checking its model_index.json.
REAL_MODELS = {
    "text2image": {"stable-diffusion-v1-5/stable-diffusion-v1-5", "CompVis/stable-diffusion-v1-4"},
    "unclip": {
        "sd2-community/stable-diffusion-2-1-unclip",
    },
}
# Pipelines whose component configs fit a single-file checkpoint a recipe names (CosXL: SDXL base).
REAL_SINGLE_FILE_CONFIGS = {"stabilityai/stable-diffusion-xl-base-1.0"}
# open_clip (model, pretrained tag) pairs the recipes may name (all in open_clip.list_pretrained()).
REAL_CLIP = {("ViT-B-32", "openai"), ("ViT-B-16", "openai"), ("ViT-L-14", "openai")}
# Keys whose lines must carry an inline comment: the models, data and resources a recipe names.
EXPLAINED_KEYS = (
    "path",
    "model",
    "clip_model",
    "clip_pretrained",
    "gpus_per_actor",
    "max_actors",
    "gpus_per_trial",
    "use_gpu",
    "num_workers",
)


def _ids(paths):
    return [p.name for p in paths]


def header(path: Path) -> str:
    """The comment block a recipe starts with (up to its first non-comment line)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            lines.append(line)
        elif line.strip():
            break
    return "\n".join(lines)


def test_every_recipe_of_the_brief_ships():
    names = {p.stem for p in RECIPES}
    assert {*EMBEDDED, *MAIN_RECIPES} <= names
    readme = (JOBS_DIR / "README.md").read_text()
    for p in RECIPES:
        assert f"`{p.name}`" in readme, f"jobs/README.md has no row for {p.name}"


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_loads(path):
    cfg = build_config(config_file=path)
    assert isinstance(cfg, RunConfig)
    values = flatten(read_yaml(path))
    assert cfg.preset == values.get("base", path.stem)


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_starts_with_the_commands_that_run_it(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} must start with a comment giving its commands"
    head = header(path)
    local = f"raysynth run --config jobs/{path.name}"
    cluster = (
        "ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- "
        f"raysynth run --config jobs/{path.name}"
    )
    assert local in head
    assert cluster in head


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_sets_only_values_that_differ_from_its_starting_point(path):
    values = flatten(read_yaml(path))
    base = values.pop("base", None)
    start = build_config(preset=base) if base else RunConfig()
    reference = flatten(to_dict(start))
    resolved = flatten(to_dict(build_config(config_file=path)))
    same = {k: values[k] for k in values if resolved[k] == reference[k]}
    assert not same, f"{path.name} repeats values it would get anyway: {same}"
    if base:  # jobs/digits.yaml, jobs/digits-lt.yaml: the preset itself, nothing else
        assert values == {}, f"{path.name} should be 'base: {base}' only"


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_models_data_and_resources_are_explained_where_they_are_set(path):
    pattern = re.compile(rf"^\s*({'|'.join(EXPLAINED_KEYS)}):\s*\S")
    bare = [
        line.strip()
        for line in path.read_text().splitlines()
        if pattern.match(line) and " # " not in line
    ]
    assert not bare, f"{path.name}: say in a comment what these are: {bare}"


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_gpu_recipes_name_real_models_and_ask_for_gpus(path):
    cfg = build_config(config_file=path)
    gen = cfg.synthesis.generator
    if gen.kind == "pixel":  # trained by raysynth itself: nothing to download
        return
    if gen.model.endswith(".safetensors"):  # a single-file model: its configs' pipeline is real
        assert gen.single_file_config in REAL_SINGLE_FILE_CONFIGS, gen.single_file_config
        assert gen.single_file_config in header(path) and gen.model in header(path)
    else:
        assert gen.model in REAL_MODELS[gen.kind], f"{path.name}: unknown {gen.kind} model {gen.model}"
        assert gen.model in header(path), f"{path.name}: explain {gen.model} in the header"
    assert cfg.synthesis.pool.gpus_per_actor >= 1, "a latent diffusion pipeline needs a whole GPU"
    assert gen.dtype == "float16"
    assert cfg.train.use_gpu
    if cfg.filter.enabled and cfg.filter.embedder in ("open_clip", "auto"):
        assert (cfg.filter.clip_model, cfg.filter.clip_pretrained) in REAL_CLIP


def test_real_clip_pairs_exist_in_open_clip():
    open_clip = pytest.importorskip("open_clip")
    assert REAL_CLIP.issubset(open_clip.list_pretrained())


def test_main_recipes_carry_the_papers_settings():
    cfg = {name: build_config(config_file=JOBS_DIR / f"{name}.yaml") for name in MAIN_RECIPES}
    for name in ("flowers10-unicon", "cubs10-unicon"):
        c = cfg[name]
        assert c.flow == "unicon" and c.encoder.arch == "resnet18"
        assert c.synthesis.quota == "fixed" and c.synthesis.per_class == 32
        assert c.synthesis.prompt == "a photo of {class}"
        assert c.data.source == "imagefolder" and c.data.k == 16
        assert 0 < c.tune.gpus_per_trial <= 1 and c.tune.max_concurrent >= 1
    for name in ("imagenet-lt-feedback", "nico-feedback"):
        c = cfg[name]
        assert c.flow == "classifier" and c.synthesis.generator.kind == "unclip"
        assert 0 < c.synthesis.generator.image_dropout < 1
        fb = c.synthesis.feedback
        assert (fb.criterion, fb.every, c.synthesis.generator.num_steps) == ("entropy", 5, 30)
        assert fb.scale > 0 and c.synthesis.quota == "top_up"
        assert c.end_to_end.synthetic_share == 0.5
    lt = cfg["imagenet-lt-feedback"]
    assert lt.synthesis.top_up_to == 1300 and lt.end_to_end.balanced_softmax
    assert lt.data.split_files.format == "path_label" and lt.data.split_files.sample_k is False
    assert lt.encoder.arch == "resnext50_32x4d"
    assert (lt.end_to_end.optimizer, lt.end_to_end.schedule) == ("sgd", "cosine")
    nico = cfg["nico-feedback"]
    assert "{context}" in nico.synthesis.prompt and nico.synthesis.per_group
    assert nico.data.split_files.format == "csv" and nico.data.split_files.group_names
    assert (nico.encoder.arch, nico.encoder.pretrained) == ("resnet50", "IMAGENET1K_V1")
    mix = cfg["flowers102-diffcoremix"]
    assert mix.flow == "classifier" and mix.mix.enabled and mix.mix.fraction == 1.0
    assert mix.synthesis.negative_prompt and "{context}" in mix.synthesis.prompt
    assert mix.filter.threshold == "pairs" and mix.filter.embedder == "open_clip"
    assert mix.data.split_files.format == "flowers102"  # the official 10 train images per class
    assert mix.encoder.arch == "preact_resnet34" and mix.end_to_end.optimizer == "sgd"


def test_the_unicon_recipes_fit_their_smallest_class():
    """k + val + test + pool must fit the smallest class (Flowers10: 137, CUBS10: 79 images)."""
    for name, smallest in (("flowers10-unicon", 137), ("cubs10-unicon", 79)):
        d = build_config(config_file=JOBS_DIR / f"{name}.yaml").data
        assert d.k + d.val_per_class + d.test_per_class + d.pool_per_class <= smallest


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_presets_load(name):
    assert name in list_presets()
    cfg = build_config(preset=name)
    assert cfg.preset == name
    assert cfg.data.source == "digits" and cfg.synthesis.generator.kind == "pixel"
    assert cfg.synthesis.pool.gpus_per_actor == 0 and not cfg.train.use_gpu
    assert build_config(config_file=JOBS_DIR / f"{name}.yaml") == cfg


def test_digits_lt_is_long_tailed_and_feedback_guided():
    cfg = build_config(preset="digits-lt")
    assert cfg.flow == "classifier"
    counts = train_counts(10, cfg.data)
    assert counts[0] == cfg.data.k == 40 and counts[-1] == 4
    assert counts == sorted(counts, reverse=True)
    groups = long_tail_groups(counts)
    assert groups["many"] == [0, 1, 2] and groups["few"] == [7, 8, 9]
    assert (cfg.synthesis.quota, cfg.synthesis.top_up_to) == ("top_up", cfg.data.k)
    fb = cfg.synthesis.feedback
    # hardness feedback on six of 100 steps (chosen on the validation split; see the preset)
    assert fb.criterion == "hardness" and 0 < fb.scale <= 0.1
    steps = cfg.synthesis.generator.num_steps
    assert steps == 100 and len(range(0, steps, fb.every)) == 6
    assert cfg.end_to_end.synthetic_share == 0.5 and cfg.end_to_end.balanced_softmax


def test_digits_preset_is_unchanged():
    cfg = build_config(preset="digits")
    assert cfg.flow == "unicon" and cfg.data.k == 16 and cfg.data.imbalance_factor == 1.0
    assert cfg.synthesis.feedback.criterion == "none"
