"""The deployment files agree with the code: KubeRay manifests, the Serve config, the AWS launcher
config, the Dockerfiles, the local scripts and the commands of docs/deployment.md. Fast: no
cluster, no network, nothing started (the CLIs are only asked to parse).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from deblur.batch import BatchConfig
from deblur.cli import build_parser
from deblur.serving import ServingConfig
from deblur.settings import parse_overrides
from deblur.train.step import load_train_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
AWS_CONFIG = ROOT / "infra" / "aws" / "cluster.yaml"
DOCKER = ROOT / "infra" / "docker"
LOCAL = ROOT / "infra" / "local"
SERVE_CONFIG = ROOT / "serve" / "config.yaml"
SERVING_MODULE = ROOT / "platform" / "deblur" / "serving" / "app.py"  # the ingress deployment and build_app
DOCS = [ROOT / "docs" / "deployment.md", ROOT / "infra" / "aws" / "README.md", ROOT / "infra" / "docker" / "README.md"]

# The project's images: replace OWNER when publishing (infra/docker/README.md).
CPU_IMAGE = "ghcr.io/OWNER/deblur:cpu"
CUDA_IMAGE = "ghcr.io/OWNER/deblur:cuda"
KINDS = {"raycluster.yaml": "RayCluster", "rayservice.yaml": "RayService"}
GPU = "nvidia.com/gpu"
# Published EC2 shapes of the instance types the launcher config may use (vCPUs, GPUs).
EC2_SHAPES = {
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
}


# --- what the code says ------------------------------------------------------------------------


def _pyproject_ray() -> str:
    """The ray requirement of pyproject.toml, e.g. ``ray[train,data,serve]==2.60.0``."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in dependencies if re.match(r"ray\[", d)]
    assert "==" in ray, f"pyproject.toml should pin ray exactly, has {ray!r}"
    return ray


RAY_REQUIREMENT = _pyproject_ray()
RAY_VERSION = RAY_REQUIREMENT.split("==")[1]
# scripts/dev.sh installs the torch that the project is developed and tested with.
TORCH_VERSION = re.search(r'"torch==([0-9.]+)"', (ROOT / "scripts" / "dev.sh").read_text()).group(1)


def _job_subcommands() -> dict[str, str]:
    """``{"jobs/train.py": "train", ...}``: the `deblur` subcommand each job entrypoint runs."""
    found = {}
    for path in sorted((ROOT / "jobs").glob("*.py")):
        match = re.search(r'main\(\["([a-z]+)", \*sys\.argv\[1:\]\]\)', path.read_text())
        assert match, f"{path.name}: expected main([SUBCOMMAND, *sys.argv[1:]])"
        found[f"jobs/{path.name}"] = match.group(1)
    return found


JOBS = _job_subcommands()


def parse_job(argv: list[str]) -> tuple[str, Any]:
    """``["python", "jobs/train.py", ...]`` -> (subcommand, argparse namespace), with the real parser."""
    assert argv[:1] == ["python"] and len(argv) >= 2, f"not `python jobs/X.py ...`: {argv}"
    script = argv[1]
    assert script in JOBS, f"{script}: no such job entrypoint (have {sorted(JOBS)})"
    assert (ROOT / script).is_file()
    try:
        return JOBS[script], build_parser().parse_args([JOBS[script], *argv[2:]])
    except SystemExit:
        pytest.fail(f"`deblur {JOBS[script]}` does not accept {shlex.join(argv[2:])}")


# --- the manifests -----------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.name}: empty"
        out += [(path.name, d) for d in docs]
    return out


def by_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in manifests() if doc["kind"] == kind]


CLUSTER_SPEC_KEY = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayClusterSpec of a RayCluster, RayJob or RayService."""
    key = CLUSTER_SPEC_KEY[doc["kind"]]
    return doc["spec"] if key is None else doc["spec"][key]


def groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, group spec) for the head ("head") and every worker group."""
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
    return container


def gpu_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for name, g in groups(spec) if name != "head" and GPU in ray_container(g)["resources"].get("limits", {})]


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def max_pods(group: dict[str, Any], spec: dict[str, Any]) -> int:
    return group["maxReplicas"] if spec.get("enableInTreeAutoscaling") else group["replicas"]


def walk(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def test_each_manifest_is_kuberay_v1_of_the_kind_its_name_says() -> None:
    names = {p.name for p in K8S.glob("*.yaml")}
    assert {"raycluster.yaml", "rayjob-train.yaml", "rayjob-batch.yaml", "rayservice.yaml"} <= names
    for name, doc in manifests():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["kind"] == KINDS.get(name, "RayJob"), name
        assert doc["metadata"]["name"], name
        cluster_spec(doc)  # each has a cluster spec where KubeRay expects one


def test_images_are_the_projects_and_match_the_hardware() -> None:
    for name, doc in manifests():
        for image in walk(doc, "image"):
            assert image in {CPU_IMAGE, CUDA_IMAGE}, f"{name}: {image} is not one of the project's images"
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == RAY_VERSION, f"{name}: rayVersion must be the images' Ray, {RAY_VERSION}"
        for group_name, group in groups(spec):
            container = ray_container(group)
            wants_gpu = GPU in container["resources"].get("limits", {})
            expected = CUDA_IMAGE if wants_gpu else CPU_IMAGE
            assert container["image"] == expected, f"{name}/{group_name}: {container['image']}, expected {expected}"
            assert container.get("workingDir") == "/app", f"{name}/{group_name}: jobs/ must be the cwd"


def test_ray_start_params_are_real_ray_start_flags() -> None:
    from ray.scripts.scripts import start

    flags = {opt.lstrip("-") for param in start.params for opt in param.opts}
    for name, doc in manifests():
        for group_name, group in groups(cluster_spec(doc)):
            unknown = set(group["rayStartParams"]) - flags
            assert not unknown, f"{name}/{group_name}: not `ray start` flags: {unknown}"


def test_gpu_workers_have_one_gpu_and_the_cpus_training_and_batch_reserve() -> None:
    paper = load_train_config("paper")
    batch = BatchConfig()
    assert paper.use_gpu, "the paper preset is the GPU preset"
    for name, doc in manifests():
        spec = cluster_spec(doc)
        assert gpu_groups(spec), f"{name}: no GPU worker group"
        for group in gpu_groups(spec):
            resources = ray_container(group)["resources"]
            for kind in ("requests", "limits"):
                assert int(resources[kind][GPU]) == 1, f"{name}/{group['groupName']}: {kind} must ask for 1 GPU"
            # A Train worker reserves {GPU: 1, CPU: cpus_per_worker}; Ray counts the pod's CPUs.
            pod_cpus = cpus(resources["limits"]["cpu"])
            assert pod_cpus >= paper.cpus_per_worker, f"{name}: {pod_cpus} CPUs < paper cpus_per_worker"
            assert pod_cpus >= batch.cpus_per_actor
            assert cpus(resources["requests"]["cpu"]) == pod_cpus, f"{name}: requests and limits differ"
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_s3_settings_come_from_the_secret_never_from_the_manifest() -> None:
    for name, doc in manifests():
        for group_name, group in groups(cluster_spec(doc)):
            env = {e["name"]: e for e in ray_container(group)["env"]}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DEBLUR_S3_ENDPOINT"):
                assert "value" not in env[key], f"{name}/{group_name}: {key} written into the manifest"
                ref = env[key]["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == ("deblur-s3", key), f"{name}/{group_name}: {key}"
                # Optional: without the Secret the pods use an IAM role (IRSA, Pod Identity).
                assert ref["optional"] is True


def autoscaler_launches(doc: dict[str, Any], demands: list[dict[str, float]]) -> tuple[dict[str, int], list[Any]]:
    """(worker pods by group, demands left unplaced) that Ray's autoscaler would launch for ``demands``
    on the RayCluster ``doc`` with only its head running: Ray's own code, as KubeRay's autoscaler
    sidecar runs it (the CR turned into node types, then the autoscaler's bin packing)."""
    import functools

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    config = autoscaling_config(doc)
    head = config["head_node_type"]
    scorer = functools.partial(
        _default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary(node_availabilities={})
    )
    nodes, left = get_nodes_for(config["available_node_types"], {head: 1}, head, config["max_workers"], demands, scorer)
    assert head not in nodes
    return dict(nodes), left


def autoscaling_config(doc: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = copy.deepcopy(doc)
    cr["metadata"].setdefault("namespace", "default")  # kubectl applies it to the current namespace
    return _derive_autoscaling_config_from_ray_cr(cr)


def check_autoscales_from_zero(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    # The switch: without it KubeRay runs no autoscaler and the replica counts never change.
    assert spec.get("enableInTreeAutoscaling") is True, "no autoscaler"
    config = autoscaling_config(doc)
    types, head = config["available_node_types"], config["head_node_type"]
    workers = {name: t for name, t in types.items() if name != head}
    # Idle, the autoscaler keeps min_workers pods of each group, and removes idle ones down to it.
    assert workers and {name: t["min_workers"] for name, t in workers.items()} == dict.fromkeys(workers, 0)
    assert 0 < config["idle_timeout_minutes"] < 60
    # The work the deployment runs here (docs/deployment.md): training with the paper preset, the
    # batch job's GPU actors, Ray Data's CPU tasks. None fits on the head; from zero worker pods,
    # the autoscaler launches pods of the right group for all of it.
    paper = load_train_config("paper")
    _, batch = parse_job(shlex.split(rayjob("rayjob-batch.yaml")["spec"]["entrypoint"]))
    demands = {
        "train": [{"CPU": paper.cpus_per_worker, "GPU": 1}] * paper.num_workers,
        "batch": [{"CPU": batch.cpus_per_actor, "GPU": batch.gpus_per_actor}] * batch.actors,
        "synth": [{"CPU": 1}] * 8,
    }
    for work, demand in demands.items():
        head_only = {k: v for k, v in types[head]["resources"].items() if k != "memory"}
        assert not any(all(head_only.get(k, 0) >= v for k, v in d.items()) for d in demand), f"{work} fits the head"
        nodes, left = autoscaler_launches(doc, demand)
        assert left == [], f"{work}: the autoscaler cannot place {left}"
        wants_gpu = any(d.get("GPU") for d in demand)
        for group, count in nodes.items():
            assert count > 0 and (types[group]["resources"].get("GPU", 0) > 0) == wants_gpu, f"{work}: {nodes}"


def test_the_long_lived_cluster_autoscales_its_workers_from_zero() -> None:
    ((_, doc),) = by_kind("RayCluster")
    check_autoscales_from_zero(doc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda spec: spec.update(enableInTreeAutoscaling=False),
        lambda spec: spec["workerGroupSpecs"][1].update(minReplicas=1, replicas=1),
        lambda spec: spec["workerGroupSpecs"][1].update(maxReplicas=0, replicas=0),
        lambda spec: [
            r.pop(GPU) for r in spec["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"].values()
        ],
        lambda spec: spec["workerGroupSpecs"].pop(0),
    ],
    ids=["no autoscaler", "a GPU pod kept", "no GPU pods", "GPU group without GPUs", "no CPU group"],
)
def test_the_autoscaling_check_fails_for_a_cluster_that_cannot_scale_from_zero(mutate: Any) -> None:
    ((_, doc),) = by_kind("RayCluster")
    doc = copy.deepcopy(doc)
    assert [g["groupName"] for g in doc["spec"]["workerGroupSpecs"]] == ["cpu", "gpu"]
    mutate(doc["spec"])
    with pytest.raises(AssertionError):
        check_autoscales_from_zero(doc)


def test_the_long_lived_cluster_asks_kuberay_for_token_auth() -> None:
    ((_, doc),) = by_kind("RayCluster")
    assert doc["spec"]["authOptions"]["mode"] == "token"


def rayjob(name: str) -> dict[str, Any]:
    ((_, doc),) = [(n, d) for n, d in by_kind("RayJob") if n == name]
    return doc


def train_entrypoint() -> list[str]:
    """The words of the training RayJob's entrypoint: the cluster size the deployment aims at."""
    return shlex.split(rayjob("rayjob-train.yaml")["spec"]["entrypoint"])


def test_every_rayjob_entrypoint_parses_with_the_real_cli() -> None:
    assert by_kind("RayJob")
    for name, doc in by_kind("RayJob"):
        parse_job(shlex.split(doc["spec"]["entrypoint"]))
        assert doc["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token", name


def test_training_job_fits_the_cluster_it_creates() -> None:
    doc = rayjob("rayjob-train.yaml")
    command, args = parse_job(train_entrypoint())
    assert command == "train"
    assert args.preset == "paper"
    config = load_train_config(args.preset, parse_overrides(args.set))  # also checks batch_size % num_workers
    assert config.use_gpu and config.num_workers > 1
    spec = doc["spec"]["rayClusterSpec"]
    (group,) = gpu_groups(spec)
    # DDP workers are gang-scheduled: every one must have its pod, one GPU each.
    assert max_pods(group, spec) >= config.num_workers
    assert cpus(ray_container(group)["resources"]["limits"]["cpu"]) >= config.cpus_per_worker


def test_batch_job_asks_for_gpus_explicitly_on_a_cluster_that_starts_without_them() -> None:
    doc = rayjob("rayjob-batch.yaml")
    command, args = parse_job(shlex.split(doc["spec"]["entrypoint"]))
    assert command == "batch"
    spec = doc["spec"]["rayClusterSpec"]
    (group,) = gpu_groups(spec)
    if spec.get("enableInTreeAutoscaling") and group["minReplicas"] == 0:
        # batch.py decides GPUs per actor and pool size from the GPUs present at start: none here.
        assert args.gpus_per_actor == 1, "an autoscaled GPU group from 0 needs --gpus-per-actor 1"
        assert args.actors is not None, "... and --actors, or the pool is sized for a cluster with no GPU"
    assert args.actors <= max_pods(group, spec)
    config = BatchConfig(cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor)
    assert cpus(ray_container(group)["resources"]["limits"]["cpu"]) >= config.cpus_per_actor


# --- Serve ---------------------------------------------------------------------------------------


def _render_module() -> Any:
    """infra/k8s/render_rayservice.py, imported from its file (infra/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_rayservice", K8S / "render_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_replaces_only_the_serve_config_block() -> None:
    render = _render_module().render
    manifest = "# head\nspec:\n  serveConfigV2: |\n    old: 1\n\n    more: 2\n  rayClusterConfig:\n    x: 1  # kept\n"
    config = "# a comment\napplications:\n  - name: a\n\n    import_path: m:app\n"
    rendered = render(manifest, config)
    assert rendered.startswith("# head\nspec:\n  serveConfigV2: |\n    # a comment\n")
    assert rendered.endswith("  rayClusterConfig:\n    x: 1  # kept\n")
    assert yaml.safe_load(rendered)["spec"]["serveConfigV2"] == config
    assert render(rendered, config) == rendered
    with pytest.raises(ValueError):
        render(manifest, "  indented: first line\n")


def serve_configs() -> list[tuple[str, dict[str, Any]]]:
    """(name, parsed) of serve/config.yaml and of the RayService's copy of it."""
    assert SERVE_CONFIG.is_file(), "serve/config.yaml is missing: it is the endpoint's Serve config"
    ((_, doc),) = by_kind("RayService")
    return [
        ("serve/config.yaml", yaml.safe_load(SERVE_CONFIG.read_text())),
        ("rayservice.yaml serveConfigV2", yaml.safe_load(doc["spec"]["serveConfigV2"])),
    ]


def build_app_deployment() -> tuple[str, dict[str, Any]]:
    """(class name, keyword arguments) of the ``@serve.deployment(...)`` in serving/app.py, from its source."""
    tree = ast.parse(SERVING_MODULE.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "build_app" for n in tree.body), "no build_app"
    found = [
        (node.name, decorator)
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        for decorator in node.decorator_list
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "serve.deployment"
    ]
    assert len(found) == 1, f"expected one @serve.deployment(...) class in serving/app.py, found {len(found)}"
    name, decorator = found[0]
    return name, {keyword.arg: ast.literal_eval(keyword.value) for keyword in decorator.keywords}


def node_resources(group: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) that Ray offers on a pod of the group: rayStartParams, else the container's limits."""
    params = group["rayStartParams"]
    limits = ray_container(group)["resources"].get("limits", {})
    node_cpus = float(params["num-cpus"]) if "num-cpus" in params else cpus(limits.get("cpu", 0))
    node_gpus = float(params["num-gpus"]) if "num-gpus" in params else float(limits.get(GPU, 0))
    return node_cpus, node_gpus


def check_endpoint_fits(name: str, spec: dict[str, Any], args: ServingConfig) -> None:
    """The ingress replicas and the session actors of an endpoint with ``args`` can be placed on ``spec``."""
    _, options = build_app_deployment()
    ingress_cpus = options["ray_actor_options"]["num_cpus"]
    pods = [node_resources(group) for _, group in groups(spec)]
    assert any(c >= ingress_cpus for c, _ in pods), f"{name}: no pod holds an ingress replica ({ingress_cpus} CPU)"
    session_gpus = args.session_gpus
    if session_gpus is None:
        # deblur.serving decides once, when the ingress starts: a GPU per session if the cluster
        # has a GPU then. GPU pods that start from 0 would make every session a CPU one.
        assert gpu_groups(spec), f"{name}: session_gpus null on a cluster without GPU pods"
        assert any(g["minReplicas"] >= 1 for g in gpu_groups(spec)), (
            f"{name}: session_gpus null but no GPU pod is up when the ingress starts: sessions would run on CPUs"
        )
        session_gpus = 1.0
    assert any(c >= args.session_cpus and g >= session_gpus for c, g in pods), (
        f"{name}: no pod fits a session actor ({args.session_cpus:g} CPU, {session_gpus:g} GPU)"
    )


def documented_gpu_serve_config() -> dict[str, Any]:
    """What the `sed ... serve/config.yaml > FILE` of docs/deployment.md writes for the RayCluster."""
    (words,) = [w for _, w in documented_commands() if w[0] == "sed" and "serve/config.yaml" in w]
    assert ">" in words, f"expected `sed ... serve/config.yaml > FILE`: {shlex.join(words)}"
    result = subprocess.run(words[: words.index(">")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_serve_config_args_and_deployments_are_those_of_build_app() -> None:
    name, options = build_app_deployment()
    known = set(ServingConfig.model_fields)
    for source, config in serve_configs():
        (app,) = config["applications"]
        assert app["import_path"] == "deblur.serving:build_app", source
        ServingConfig.from_dict(app["args"])  # strict: an unknown setting or a bad value raises
        assert set(app["args"]) == known, (
            f"{source}: args should list every ServingConfig setting; missing {sorted(known - set(app['args']))}"
        )
        (deployment,) = app["deployments"]
        assert deployment["name"] == name, f"{source}: build_app has no deployment {deployment['name']!r} but {name!r}"
        settings = {k: v for k, v in deployment.items() if k != "name"}
        # Serve applies the config's values over the decorator's: `serve run` of build_app and a
        # `serve deploy` of the config must not be two different endpoints.
        assert settings == options, f"{source}: {settings} differs from build_app's @serve.deployment({options})"


def test_endpoints_fit_the_clusters_that_serve_them() -> None:
    ((name, doc),) = by_kind("RayService")
    served = yaml.safe_load(doc["spec"]["serveConfigV2"])
    check_endpoint_fits(name, cluster_spec(doc), ServingConfig.from_dict(served["applications"][0]["args"]))

    # The long-lived RayCluster's GPU pods start from 0: the guide deploys a copy with session_gpus 1.
    gpu_config = documented_gpu_serve_config()
    args = gpu_config["applications"][0]["args"]
    original = yaml.safe_load(SERVE_CONFIG.read_text())
    assert args["session_gpus"] == 1
    assert {**args, "session_gpus": None} == original["applications"][0]["args"], "the sed changed more"
    ((name, doc),) = by_kind("RayCluster")
    check_endpoint_fits(name, cluster_spec(doc), ServingConfig.from_dict(args))


def test_clusters_that_serve_expose_its_port_and_pass_its_api_key() -> None:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    port = config["http_options"]["port"]
    key_env = config["applications"][0]["args"]["api_key_env"]
    for kind in ("RayCluster", "RayService"):
        ((name, doc),) = by_kind(kind)
        spec = cluster_spec(doc)
        head_ports = {p["containerPort"] for p in ray_container(spec["headGroupSpec"]).get("ports", [])}
        assert port in head_ports, f"{name}: the head does not expose Serve's port {port}"
        for group_name, group in groups(spec):  # replicas may run in any group
            env = {e["name"]: e for e in ray_container(group)["env"]}
            assert key_env in env, f"{name}/{group_name}: no {key_env} (api_key_env) where replicas run"
            assert "value" not in env[key_env], f"{name}/{group_name}: the API key written into the manifest"
            ref = env[key_env]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"], ref["optional"]) == ("deblur-api", key_env, True), f"{name}/{group_name}"


def test_serve_import_paths_name_existing_modules() -> None:
    assert SERVING_MODULE.is_file(), "platform/deblur/serving/app.py is missing"
    paths = [app["import_path"] for _, config in serve_configs() for app in config["applications"]]
    assert paths
    for import_path in paths:
        module, _, attribute = import_path.partition(":")
        if module.startswith("deblur."):
            source = ROOT / "platform" / Path(*module.split(".")).with_suffix(".py")
        else:
            source = ROOT / Path(*module.split(".")).with_suffix(".py")
        if not source.is_file():  # a package
            source = source.with_suffix("") / "__init__.py"
        assert source.is_file(), f"{import_path}: no module {source.relative_to(ROOT)}"
        tree = ast.parse(source.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert attribute in names, f"{import_path}: {source.name} defines no {attribute!r} at module level"


def test_rayservice_carries_serve_config_yaml() -> None:
    assert SERVE_CONFIG.is_file(), "serve/config.yaml is missing: it is the endpoint's Serve config"
    result = subprocess.run(
        [sys.executable, str(K8S / "render_rayservice.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- AWS cluster launcher ------------------------------------------------------------------------


def test_aws_cluster_config_is_valid_for_the_launcher_and_pins_the_versions() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import fillout_defaults, validate_config
    from ray.scripts.scripts import start

    config = yaml.safe_load(AWS_CONFIG.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(fillout_defaults(copy.deepcopy(config)))  # what `ray up` checks, offline
    assert config["provider"]["type"] == "aws"

    common = " ".join(config["setup_commands"])
    assert f'pip install "{RAY_REQUIREMENT}"' in common
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = " ".join(config[key])
        assert f'"torch=={TORCH_VERSION}"' in commands, key
        assert "pip install ~/deblur" in commands, key  # the project, not editable
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (command,) = [c for c in config[key] if "ray start" in c]
        words = shlex.split(command.split(";")[-1])
        words = words[words.index("ray") + 2 :]
        start.make_context("start", words)  # raises on an unknown flag

    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    (gpu_type,) = [n for n in nodes.values() if EC2_SHAPES[n["node_config"]["InstanceType"]][1] > 0]
    vcpus, gpus = EC2_SHAPES[gpu_type["node_config"]["InstanceType"]]
    paper = load_train_config("paper")
    assert gpus == 1 and vcpus > paper.cpus_per_worker, "a Train worker plus room for reading shards"
    assert gpu_type["min_workers"] == 0
    train_workers = load_train_config("paper", parse_overrides(parse_job(train_entrypoint())[1].set)).num_workers
    assert gpu_type["max_workers"] >= train_workers
    assert EC2_SHAPES[head["node_config"]["InstanceType"]][1] == 0, "a CPU head"
    assert "IamInstanceProfile" in gpu_type["node_config"], "workers reach S3 through an instance role"


# --- Docker --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_dockerfiles_pin_the_projects_versions(flavour: str) -> None:
    text = (DOCKER / f"Dockerfile.{flavour}").read_text()
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert re.search(r"^FROM python:3\.11-", text, re.M) and "3.11" in requires
    assert f'"torch=={TORCH_VERSION}"' in text
    assert f'pip install "{RAY_REQUIREMENT}"' in text
    assert re.search(r"^COPY \. /app$", text, re.M) and re.search(r"^RUN pip install /app", text, re.M)
    assert "pip install -e" not in text
    assert re.search(r"^WORKDIR /app$", text, re.M)
    if flavour == "cpu":
        assert "--index-url https://download.pytorch.org/whl/cpu" in text
    ignore = (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignore)


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex, as Docker compiles it (moby/patternmatcher)."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.index("]", i + 1)
            out += pattern[i : end + 1].replace("[!", "[^")
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore(path: Path) -> Any:
    """``excluded(relative_posix_path) -> bool`` for a .dockerignore file, with Docker's rules: patterns
    relative to the context root, ``!`` re-includes, the last matching pattern wins, and a pattern
    that matches a parent directory matches everything in it."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((negate, _docker_pattern(pattern)))

    def excluded(name: str) -> bool:
        parts = name.split("/")
        parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        matched = False
        for negate, regex in rules:
            if negate != matched:
                continue
            if regex.match(name) or any(regex.match(parent) for parent in parents):
                matched = not negate
        return matched

    excluded.negations = any(negate for negate, _ in rules)  # type: ignore[attr-defined]
    return excluded


def build_context(flavour: str) -> set[str]:
    """The files of this working tree that ``docker build -f infra/docker/Dockerfile.FLAVOUR .`` sends
    (BuildKit reads ``Dockerfile.FLAVOUR.dockerignore`` beside the Dockerfile), as posix paths."""
    excluded = dockerignore(DOCKER / f"Dockerfile.{flavour}.dockerignore")
    files = set()
    for directory, dirnames, filenames in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else f"{base}/"
        if not excluded.negations:  # nothing below an excluded directory can come back
            dirnames[:] = [d for d in dirnames if not excluded(prefix + d)]
        files |= {prefix + f for f in filenames if not excluded(prefix + f)}
    return files


def git_files(*args: str) -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the files git tracks and ignores are unknown")
    result = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", *args], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [f for f in result.stdout.decode().split("\0") if f]


def test_the_docker_rules_match_as_docker_does() -> None:
    excluded = dockerignore(DOCKER / "Dockerfile.cpu.dockerignore")
    assert excluded(".git/HEAD") and excluded("platform/deblur/__pycache__/x.cpython-311.pyc")
    assert excluded("x.partial.mp4") and excluded("a/b/.c.partial.mkv") and excluded("tests/unit/test_data.py")
    assert excluded("out") and not excluded("platform/out") and not excluded("platform/deblur/video.py")


def test_both_dockerfiles_build_from_the_same_files() -> None:
    assert build_context("cpu") == build_context("cuda")


@pytest.mark.parametrize("flavour", ["cpu", "cuda"])
def test_the_image_gets_the_package_and_jobs_and_no_tests_or_local_state(flavour: str) -> None:
    context = build_context(flavour)
    # Everything `pip install /app` and the jobs use: the package with its data (weights, presets,
    # web pages), its metadata and readme, the job entrypoints and the Serve config.
    tracked = git_files("--cached")
    needed = {f for f in tracked if f.split("/")[0] in {"platform", "jobs", "serve"}}
    needed |= {"pyproject.toml", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]}
    assert any(f.startswith("platform/deblur/weights/") for f in needed)
    assert sorted(needed - context) == []
    # Nothing of the tests, the repository's history, or this checkout's local state (whatever
    # git ignores: virtualenvs, caches, build and run outputs, partial files).
    assert not any(f.startswith(("tests/", ".git/")) for f in context)
    ignored = git_files("--others", "--ignored", "--exclude-standard", "--directory")
    leaked = sorted(f for f in ignored if f.rstrip("/") in context or any(c.startswith(f) for c in context))
    assert leaked == [], f"git-ignored files in the {flavour} image's build context"


# --- local scripts -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["start.sh", "stop.sh", "status.sh", "common.sh"])
def test_local_scripts_are_valid_bash(name: str) -> None:
    path = LOCAL / name
    if name != "common.sh":  # sourced, not run
        assert os.access(path, os.X_OK), f"{name} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_local_stop_never_runs_ray_stop() -> None:
    # `ray stop` stops every Ray process on the machine, not only the head start.sh started.
    for name in ("start.sh", "stop.sh", "status.sh", "common.sh"):
        code = "\n".join(line.split("#")[0] for line in (LOCAL / name).read_text().splitlines())
        assert not re.search(r"\bray\"? stop\b", code), name


# --- the documented commands ---------------------------------------------------------------------


def documented_commands() -> Iterator[tuple[str, list[str]]]:
    """(file, words) of every shell command in the ```bash blocks of the deployment docs."""
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            pending, heredoc = "", None
            for line in block.replace("\\\n", " ").splitlines():
                if heredoc:  # a here-document's body is data, not commands
                    heredoc = None if line.strip() == heredoc else heredoc
                    continue
                try:
                    words = shlex.split(pending + line, comments=True)
                except ValueError:  # a quoted string going on over the next line
                    pending += line + "\n"
                    continue
                pending = ""
                if match := re.search(r"<<-?'?(\w+)'?", line):
                    heredoc = match.group(1)
                command: list[str] = []
                for word in [*words, ";"]:
                    if word not in {"&", "&&", "||", "|", ";"}:
                        command.append(word)
                        continue
                    while command and re.match(r"^[A-Z_]+=", command[0]):  # VAR=value prefixes
                        command = command[1:]
                    if command:
                        yield path.name, command
                    command = []


def test_documented_ray_and_job_commands_parse_with_the_real_clis() -> None:
    from ray.scripts.scripts import cli as ray_cli
    from ray.serve.scripts import cli as serve_cli

    jobs_seen = set()
    for name, words in documented_commands():
        if words[0] == "serve":
            try:
                serve_cli.commands[words[1]].make_context(" ".join(words[:2]), list(words[2:]))
            except Exception as error:
                pytest.fail(f"{name}: {shlex.join(words)}: {error}")
            continue
        if words[0] != "ray":
            continue
        command = ray_cli.commands[words[1]]
        rest = words[2:]
        if words[1] == "job":
            command, rest = command.commands[words[2]], words[3:]
        try:
            context = command.make_context(" ".join(words[:3]), list(rest))
        except Exception as error:
            pytest.fail(f"{name}: {shlex.join(words)}: {error}")
        entrypoint = context.params.get("entrypoint")
        if entrypoint:
            parse_job(list(entrypoint))
            jobs_seen.add(entrypoint[1])
    # docs/deployment.md shows a submit command for every job.
    assert jobs_seen == set(JOBS), f"no documented `ray job submit` for {set(JOBS) - jobs_seen}"
