"""The deployment files under ``cluster/``: the runtime environment ``ray job submit`` uploads, the
Ray cluster launcher config, and the KubeRay RayCluster / RayJob manifests (DESIGN §5).

No cloud and no Kubernetes: the launcher config is validated with the autoscaler's own JSON schema
and ``validate_config``; the manifests are checked field by field, and against the recipes they run.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from raysynth.config import build_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
MAIN_RECIPES = (
    "flowers10-unicon",
    "cubs10-unicon",
    "imagenet-lt-feedback",
    "nico-feedback",
    "flowers102-diffcoremix",
    "air-flowers102",
)
RECIPES = sorted((ROOT / "jobs").glob("*.yaml"))
IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)(?P<variant>-[\w.-]+)?$")


def load(path: Path):
    return yaml.safe_load(path.read_text())


def recipe_configs():
    return {p.stem: build_config(config_file=p) for p in RECIPES}


def pinned_ray() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "ray"]
    return req


def check_image(image: str) -> None:
    """A Ray image whose version is the installed Ray's and inside pyproject's ``ray`` range, on
    a Python that pyproject allows (and that the tests run)."""
    m = IMAGE.match(image)
    assert m, f"{image}: expected rayproject/ray:X.Y.Z[-variant]"
    version = m["version"]
    assert version == ray.__version__, f"{image} runs Ray {version}, tests run {ray.__version__}"
    assert Version(version) in pinned_ray().specifier, f"{image} is outside {pinned_ray()}"
    py = re.search(r"-py(\d)(\d+)", m["variant"] or "")
    assert py, f"{image}: name the Python (-py311)"
    python = Version(f"{py[1]}.{py[2]}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert python in SpecifierSet(project["requires-python"]), f"{image}: Python {python}"
    assert (python.major, python.minor) == sys.version_info[:2], f"{image}: tests run another Python"
    assert "-gpu" in m["variant"] or "-cu" in m["variant"], f"{image}: a CUDA image for GPU nodes"


RAYSYNTH_IMAGE = "${RAYSYNTH_IMAGE}"  # cluster/Dockerfile's image, substituted by envsubst


def dockerfile_base() -> str:
    (line,) = [ln for ln in (CLUSTER / "Dockerfile").read_text().splitlines() if ln.startswith("FROM ")]
    return line.split()[1]


def test_dockerfile_builds_on_the_pinned_ray_and_python_and_installs_raysynths_deps():
    check_image(dockerfile_base())
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*torch[^\n]*--index-url \"\$\{TORCH_INDEX\}\"", text)
    assert re.search(r"^ && pip install --no-cache-dir \.", text, re.M), "raysynth's dependencies"
    assert "RAYSYNTH_MODEL_CACHE=/model-cache" in text


# --- runtime_env.yaml ---------------------------------------------------------------------------


def runtime_env() -> dict:
    return load(CLUSTER / "runtime_env.yaml")


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = runtime_env()
    RuntimeEnv(working_dir=".", **env)  # raises on an unknown field or a malformed value
    assert "working_dir" not in env, "`ray job submit --working-dir .` names the working dir"
    assert env["pip"]["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("runs/digits/synthetic/part-0.parquet", True),
        ("runs", True),
        (".git/objects/ab/cdef", True),
        ("weights/unet.safetensors", True),
        ("checkpoints/epoch-3.pt", True),
        ("runs/x/train/checkpoint_000001/model.safetensors", True),
        (".venv/lib/python3.11/site-packages/torch/__init__.py", True),
        (".venv-gpu/bin/python", True),
        ("bench-tune.json", True),
        ("raysynth/train/__pycache__/losses.cpython-311.pyc", True),
        ("raysynth/cli.py", False),
        ("raysynth/presets/digits.yaml", False),
        ("jobs/flowers10-unicon.yaml", False),
        ("cluster/runtime_env.yaml", False),
        ("pyproject.toml", False),
    ],
)
def test_runtime_env_excludes(path, excluded):
    from ray._private.runtime_env.packaging import _get_excludes

    match = _get_excludes(ROOT, runtime_env()["excludes"])
    assert match(ROOT / path) is excluded


def upload_size(root: Path, excludes: list[str]) -> tuple[int, int]:
    """(bytes, files) the working_dir package of ``root`` would hold, walked as Ray walks it.

    Ray's own traversal and exclude matching (``_dir_travel``, ``_get_excludes``); .gitignore is
    not applied, so the excludes alone must keep the package small. Ray zips without
    compression, so the package is the files' sizes plus a local and a central header per file.
    """
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    total = [0, 0]

    def add(path: Path) -> None:
        if path.is_file():
            rel = len(str(path.relative_to(root)))
            total[0] += path.stat().st_size + 30 + 46 + 2 * rel  # zip headers
            total[1] += 1

    _dir_travel(root, [_get_excludes(root, excludes)], add, include_gitignore=False)
    return total[0], total[1]


def test_working_dir_upload_stays_under_rays_limit():
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    size, files = upload_size(ROOT, runtime_env()["excludes"])
    assert files > 0
    assert size < GCS_STORAGE_MAX_SIZE, (
        f"`ray job submit --working-dir .` would upload {size / 2**20:.1f} MiB in {files} files; "
        f"Ray refuses {GCS_STORAGE_MAX_SIZE / 2**20:.0f} MiB. Exclude the large paths in "
        "cluster/runtime_env.yaml."
    )


def test_upload_size_counts_what_is_not_excluded(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "big.parquet").write_bytes(b"x" * 5000)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_bytes(b"y" * 100)
    size, files = upload_size(tmp_path, ["runs"])
    assert files == 1 and 100 < size < 5000


# --- cluster.yaml (Ray cluster launcher) --------------------------------------------------------


def launcher() -> dict:
    return load(CLUSTER / "cluster.yaml")


def gpu_worker_types(cfg: dict) -> dict:
    return {
        name: t
        for name, t in cfg["available_node_types"].items()
        if name != cfg["head_node_type"] and t.get("resources", {}).get("GPU", 0) > 0
    }


def test_launcher_config_matches_the_autoscaler_schema():
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(launcher(), json.loads(schema_path.read_text()))


def test_launcher_config_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher())))  # fills defaults, then validates


def test_launcher_head_is_cpu_only_and_workers_autoscale_from_zero():
    cfg = launcher()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu = gpu_worker_types(cfg)
    assert len(gpu) == 1, "one autoscaling GPU worker type"
    (worker,) = gpu.values()
    assert worker["min_workers"] == 0
    assert 1 <= worker["max_workers"] <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0


def test_launcher_installs_raysynth_on_every_node():
    cfg = launcher()
    assert cfg["file_mounts"]["~/raysynth"] == "."
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and "~/raysynth" in c]
    assert installs, "setup_commands (every node) must pip install the synced repository"
    assert cfg["docker"]["image"] == RAYSYNTH_IMAGE
    for key in ("head_image", "worker_image"):
        assert key not in cfg["docker"], "one image everywhere"


def test_launcher_nodes_run_an_ami_whose_driver_fits_torchs_cuda_build():
    cfg = launcher()
    for name, t in cfg["available_node_types"].items():
        ami = t["node_config"]["ImageId"]
        assert ami.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"), name
        assert "nvidia-driver" in ami and "ubuntu-22.04" in ami, name
    assert "cu128" in (CLUSTER / "Dockerfile").read_text()  # CUDA 12.8: driver >= 570


def test_launcher_turns_token_auth_on_and_binds_the_dashboard_locally():
    cfg = launcher()
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    (head_start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_launcher_gpu_workers_fit_every_recipe():
    cfg = launcher()
    (worker,) = gpu_worker_types(cfg).values()
    gpus, cpus = worker["resources"]["GPU"], worker["resources"]["CPU"]
    for name, rc in recipe_configs().items():
        s = rc.synthesis.pool
        assert s.gpus_per_actor <= gpus and s.cpus_per_actor <= cpus, name
        assert s.max_actors * s.gpus_per_actor <= worker["max_workers"] * gpus, name
        assert rc.tune.gpus_per_trial <= gpus and rc.tune.cpus_per_trial <= cpus, name
        if rc.train.use_gpu and rc.train.num_workers:
            assert rc.train.num_workers <= worker["max_workers"] * gpus, name
            assert rc.train.cpus_per_worker <= cpus, name


# --- KubeRay ------------------------------------------------------------------------------------


def raycluster() -> dict:
    return load(KUBERAY / "raycluster.yaml")


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def gpus_of(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def cpus_of(container: dict) -> float:
    cpu = str(container["resources"]["limits"]["cpu"])
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "never expose the head publicly"
    assert not head.get("enableIngress", False)
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert all(gpus_of(c) == 0 for c in containers(head)), "the head is CPU only"
    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(gpus_of(c) for c in containers(g))]
    assert gpu_groups, "a GPU worker group"
    for g in gpu_groups:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        assert g.get("replicas", 0) <= g["maxReplicas"]
        for c in containers(g):
            requests = c["resources"].get("requests", {})
            assert int(requests.get("nvidia.com/gpu", gpus_of(c))) == gpus_of(c)
    for group in (head, *groups):
        for c in containers(group):
            assert c["image"] == RAYSYNTH_IMAGE, "cluster/Dockerfile's image everywhere"


def test_raycluster_manifest():
    doc = raycluster()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    check_cluster_spec(doc["spec"])


def rayjob(name: str) -> dict:
    return load(KUBERAY / f"rayjob-{name}.yaml")


@pytest.mark.parametrize("name", MAIN_RECIPES)
def test_rayjob_manifest(name):
    doc = rayjob(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert spec["rayClusterSpec"] == raycluster()["spec"], "keep it identical to raycluster.yaml"
    check_cluster_spec(spec["rayClusterSpec"])
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"] == "${RAYSYNTH_SRC_ZIP}"
    assert {k: env[k] for k in ("pip", "env_vars")} == {
        k: runtime_env()[k] for k in ("pip", "env_vars")
    }, "the same runtime environment as cluster/runtime_env.yaml"


@pytest.mark.parametrize("name", MAIN_RECIPES)
def test_rayjob_entrypoint_runs_its_recipe(name):
    entry = rayjob(name)["spec"]["entrypoint"]
    m = re.match(r"^raysynth run --config (\S+)( |$)", entry)
    assert m, entry
    assert m[1] == f"jobs/{name}.yaml"
    path = ROOT / m[1]
    assert path.is_file()
    build_config(config_file=path)


@pytest.mark.parametrize("name", MAIN_RECIPES)
def test_rayjob_cluster_has_the_gpus_its_recipe_asks_for(name):
    rc = build_config(config_file=ROOT / "jobs" / f"{name}.yaml")
    spec = rayjob(name)["spec"]["rayClusterSpec"]
    gpu_groups = [(g, c) for g in spec["workerGroupSpecs"] for c in containers(g) if gpus_of(c) > 0]
    wants_gpu = rc.synthesis.pool.gpus_per_actor > 0 or rc.tune.gpus_per_trial > 0 or rc.train.use_gpu
    if wants_gpu:
        assert gpu_groups, f"{name} asks for GPUs: its cluster needs a GPU worker group"
    for g, c in gpu_groups:
        gpus = gpus_of(c)
        assert gpus >= rc.synthesis.pool.gpus_per_actor
        assert gpus >= rc.tune.gpus_per_trial
        assert rc.synthesis.pool.max_actors * rc.synthesis.pool.gpus_per_actor <= g["maxReplicas"] * gpus
        assert cpus_of(c) >= max(rc.synthesis.pool.cpus_per_actor, rc.tune.cpus_per_trial)
        if rc.train.use_gpu and rc.train.num_workers:
            assert rc.train.num_workers <= g["maxReplicas"] * gpus


def mounts(container: dict, spec: dict) -> dict[str, dict]:
    """mountPath → the pod volume it mounts, of one container of a group ``spec``."""
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def under(path: str, mounted: dict[str, dict]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted)


@pytest.mark.parametrize("name", MAIN_RECIPES)
def test_rayjob_pods_mount_the_recipes_data_and_the_model_store(name):
    rc = build_config(config_file=ROOT / "jobs" / f"{name}.yaml")
    spec = rayjob(name)["spec"]
    store = re.search(r"--set synthesis\.generator\.model_store=(\S+)", spec["entrypoint"])
    assert store, "the entrypoint names the model store every pod mounts"
    cluster = spec["rayClusterSpec"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        for c in containers(group):
            mounted = mounts(c, group)
            assert under(rc.data.path, mounted), f"{name}: {rc.data.path} is not mounted"
            assert under(store[1], mounted), f"{name}: the model store {store[1]}"
            assert mounted[store[1].rsplit("/", 1)[0]]["persistentVolumeClaim"], "shared, not per pod"
            assert under("/model-cache", mounted), "RAYSYNTH_MODEL_CACHE (cluster/Dockerfile)"
            if rc.air.unlabeled_path:
                assert under(rc.air.unlabeled_path, mounted), name


def test_every_main_recipe_has_a_rayjob_and_nothing_else_does():
    shipped = {p.stem.removeprefix("rayjob-") for p in KUBERAY.glob("rayjob-*.yaml")}
    assert shipped == set(MAIN_RECIPES)


def test_cluster_readme_covers_access_and_auth():
    text = (CLUSTER / "README.md").read_text()
    for needle in (
        "ray dashboard cluster/cluster.yaml",
        "kubectl port-forward",
        "RAY_AUTH_MODE=token",
        "ray get-auth-token --generate",
        "authOptions",
        "tensorboard",
        "127.0.0.1",
    ):
        assert needle in text, needle
    assert not re.search(r"port-forward[^\n]*--address[= ]0\.0\.0\.0", text)


# --- secrets: token files and what the working dir uploads --------------------------------------

TOKEN_WRITE = re.compile(r"ray get-auth-token --generate|>\s*\S*(token|auth_token)\b")


def readme_commands() -> list[str]:
    """Every command of the README's ``bash`` blocks, one per logical line (``\\`` continuations
    joined, comments kept)."""
    text = (CLUSTER / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(line.strip())
    return commands


def token_commands() -> list[str]:
    return [c for c in readme_commands() if TOKEN_WRITE.search(c.split(" #")[0])]


def test_readme_creates_every_token_file_0600_from_the_start():
    writes = token_commands()
    assert len(writes) >= 3, writes  # the launcher's token and two KubeRay copies
    for cmd in writes:
        umask = re.match(r"^\(umask 0?077 && .*\)(\s+#.*)?$", cmd)
        install = re.search(r"\binstall\b[^|;&]*-m\s*0?600\b", cmd)
        assert umask or install, f"writes a token without umask 077 / install -m 600: {cmd}"
        if umask and ">" in cmd:
            target = re.search(r">\s*(\S+?token)\b", cmd)[1]
            assert f"rm -f {target} &&" in cmd, f"`>` keeps an existing file's mode: {cmd}"
    for cmd in readme_commands():
        assert not re.search(r"\bchmod\b", cmd), f"chmod after writing leaves a window: {cmd}"


def test_readme_writes_no_archive_into_the_repository():
    for cmd in readme_commands():
        m = re.search(r"git archive .*-o\s+(\S+)", cmd)
        if m:
            assert m[1].startswith(('"${TMPDIR', "/", "~", "$")), cmd


@pytest.mark.parametrize("existing", [False, True])
def test_the_documented_kubectl_token_command_creates_the_file_0600(tmp_path, existing):
    """Run the README's command itself under bash, in a temporary HOME, with a stand-in
    ``kubectl`` on PATH that prints the Secret's base64 value (no cluster here); an older
    world-readable copy of the file must not keep its mode."""
    import os
    import stat
    import subprocess

    (cmd,) = [c for c in token_commands() if "raysynth-k8s.token" in c]
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text("#!/bin/sh\nprintf %s c2VjcmV0LXRva2Vu\n")  # base64 of "secret-token"
    fake.chmod(0o755)
    token = home / ".ray" / "raysynth-k8s.token"
    if existing:
        token.parent.mkdir()
        token.write_text("old")
        token.chmod(0o644)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", f"umask 022; {cmd}"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert token.read_text() == "secret-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    if not existing:
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "path",
    [
        "cluster/raysynth-k8s.token",
        "auth_token",
        ".env",
        ".env.local",
        "deploy/.env",
        "keys/cluster.pem",
        "keys/server.key",
        "raysynth-src.zip",
        "data/flowers.tar.gz",
        "data/flowers.tgz",
        ".ray/auth_token",
        ".aws/credentials",
    ],
)
def test_runtime_env_excludes_secrets_and_archives(path):
    from ray._private.runtime_env.packaging import _get_excludes

    match = _get_excludes(ROOT, runtime_env()["excludes"])
    assert match(ROOT / path) is True, path
