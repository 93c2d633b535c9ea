"""infra/: the cluster files parse, agree with each other and with the code they run.

What can drift silently is what is checked: GPUs per worker, one image everywhere, the RayJob
entrypoint against the real CLI parser, the ConfigMap against configs/bmp_d3.yaml, the ray version
against the pinned stack, and the Dockerfile installing through the scripts instead of its own copy.
No ray, no docker, no network: files are parsed, submit.sh runs against a stub `ray`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmp_core.config import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
S3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"}


def _yaml_docs(name: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d is not None]


def _rayjob() -> dict[str, Any]:
    (job,) = [d for d in _yaml_docs("kuberay-rayjob.yaml") if d["kind"] == "RayJob"]
    return job


def _configmap() -> dict[str, Any]:
    (cm,) = [d for d in _yaml_docs("kuberay-rayjob.yaml") if d["kind"] == "ConfigMap"]
    return cm


def _pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod specs by role: head, worker group names, submitter."""
    cluster = job["spec"]["rayClusterSpec"]
    pods = {
        "head": cluster["headGroupSpec"]["template"]["spec"],
        "submitter": job["spec"]["submitterPodTemplate"]["spec"],
    }
    pods.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return pods


def _cli_parser() -> Any:
    cli = pytest.importorskip("jobs.cli", reason="jobs.cli not available yet")
    return cli._parser()


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="needs Python >= 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(requirements: Path, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}(\[[^\]]*\])?==(\S+)", requirements.read_text(), re.M)
    assert match, f"{name} is not pinned in {requirements}"
    return match.group(2)


@pytest.mark.parametrize("name", sorted(p.name for p in INFRA.glob("*.yaml")))
def test_every_yaml_parses_to_mappings(name: str) -> None:
    docs = _yaml_docs(name)
    assert docs and all(isinstance(d, dict) for d in docs)


# ---------------------------------------------------------------------------------------- ray-cluster.yaml


def test_cluster_config_is_valid_for_the_installed_ray_launcher() -> None:
    """The launcher's own JSON schema (shipped in the ray wheel) rejects unknown or mistyped keys."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates ray without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    schema_path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(
        yaml.safe_load((INFRA / "ray-cluster.yaml").read_text()), json.loads(schema_path.read_text())
    )


def test_cluster_gpu_workers_have_one_gpu_each_and_the_head_none() -> None:
    cfg = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(t["resources"].get("GPU") == 1 for t in workers)
    # bmp-label sizes its GPU actors from the GPUs present at start: one GPU node must always be up.
    assert sum(t["min_workers"] for t in workers) >= 1
    assert max(t["max_workers"] for t in workers) <= cfg["max_workers"]


def test_cluster_nodes_reach_s3_through_an_instance_profile_not_keys() -> None:
    text = (INFRA / "ray-cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    for name, node_type in cfg["available_node_types"].items():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    assert not any(var in text for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))


def test_cluster_nodes_install_with_setup_sh_and_start_that_venvs_ray() -> None:
    """The nodes use the documented install (scripts/setup.sh); the ray that starts is the one it put in the venv."""
    cfg = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    mount = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    (setup,) = [c for c in cfg["setup_commands"] if "scripts/setup.sh" in c]
    words = shlex.split(setup)
    script = words.index(f"{mount}/scripts/setup.sh")
    venv = words[script + 1]
    assert (REPO / "scripts" / "setup.sh").is_file() and "install_models.sh" in (
        REPO / "scripts/setup.sh"
    ).read_text()
    for command in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        for ray_call in re.findall(r"(\S*ray) (?:start|stop)", command):
            assert ray_call == f"{venv}/bin/ray", command
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard`'s SSH tunnel only


# ---------------------------------------------------------------------------------------- kuberay-rayjob.yaml


def test_rayjob_gpu_workers_ask_one_gpu_and_the_head_none() -> None:
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]  # the driver needs none; a GPU there idles


def test_one_image_everywhere_tagged_with_the_project_version() -> None:
    images = {c["image"] for pod in _pods(_rayjob()).values() for c in pod["containers"]}
    assert len(images) == 1, images
    (image,) = images
    version = _pyproject()["project"]["version"]
    assert image.rsplit(":", 1)[1] == version
    name_and_tag = image.rsplit("/", 1)[-1]  # what `docker build -t` names it before the push
    assert name_and_tag in (INFRA / "Dockerfile").read_text()
    assert name_and_tag in (REPO / "docs" / "clusters.md").read_text()  # the documented docker build


def test_rayjob_ray_version_is_the_pinned_one() -> None:
    assert _rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == _pin(
        REPO / "requirements" / "models.txt", "ray"
    )


def test_rayjob_entrypoint_is_a_valid_bmp_label_run() -> None:
    parser = _cli_parser()
    spec = _rayjob()["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "bmp-label"
    args = parser.parse_args(argv[1:])
    assert args.command == "run" and not args.overrides
    # Every $VAR is set on the submitter pod, whose shell expands the entrypoint (K8sJobMode).
    assert spec["submissionMode"] == "K8sJobMode"
    submitter_env = {e["name"] for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert set(re.findall(r"\$\{?(\w+)", spec["entrypoint"])) == {"INPUT", "OUTPUT"} <= submitter_env
    assert (args.input, args.output) == ("$INPUT", "$OUTPUT")
    # The job sizes its GPU actors from the GPUs present at start: at least one pod must be up then,
    # and --num-workers beyond that is what makes the autoscaler add pods, up to maxReplicas.
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["minReplicas"] >= 1 and args.num_workers == group["maxReplicas"]
    # --config is the ConfigMap's file, mounted on every Ray pod.
    key = next(iter(_configmap()["data"]))
    for role, pod in _pods(_rayjob()).items():
        if role == "submitter":
            continue
        volume = next(
            v
            for v in pod["volumes"]
            if v.get("configMap", {}).get("name") == _configmap()["metadata"]["name"]
        )
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert os.path.join(mount["mountPath"], key) == args.config, role


def test_configmap_config_is_bmp_d3_with_the_image_weights_cache() -> None:
    """Loads with the real config loader, and differs from configs/bmp_d3.yaml only in cache_dir, which
    is the folder the Dockerfile bakes weights into."""
    text = next(iter(_configmap()["data"].values()))
    from bmp_core.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load(text))
    bake = re.search(r"bmp-label weights\s+\S+\s+--to\s+([^\s;]+)", (INFRA / "Dockerfile").read_text())
    assert bake and cfg.models.cache_dir == bake.group(1)
    reference = load_config(REPO / "configs" / "bmp_d3.yaml", [f"models.cache_dir={cfg.models.cache_dir}"])
    assert config_to_dict(cfg) == config_to_dict(reference)


def test_ray_pods_get_s3_credentials_from_a_secret_only() -> None:
    for role, pod in _pods(_rayjob()).items():
        if role == "submitter":
            continue
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert set(env) >= S3_ENV, role
        for name in S3_ENV:
            assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], (role, name)


# ---------------------------------------------------------------------------------------- runtime_env.yaml


def test_runtime_env_ships_the_checkout_and_no_credentials() -> None:
    env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert set(env) <= {"working_dir", "excludes", "env_vars"}  # no pip/conda: the nodes have the stack
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray rejects non-string values
    assert not [k for k in env["env_vars"] if re.search(r"AWS_|SECRET|TOKEN|PASSWORD|KEY", k)]
    # setup.sh's default venv lives inside the checkout and must not be uploaded (500 MiB limit).
    default_venv = re.search(r"^VENV=(\S+)", (REPO / "scripts" / "setup.sh").read_text(), re.M).group(1)
    assert default_venv in env["excludes"]
    # The RayJob runs from the image (no working_dir) with the same settings.
    rayjob_env = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    assert rayjob_env["env_vars"] == env["env_vars"]


# ---------------------------------------------------------------------------------------- Dockerfile


def _dockerfile_runs() -> list[str]:
    """RUN instructions with their continuation lines joined."""
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def test_dockerfile_installs_through_the_project_scripts_not_a_copy() -> None:
    runs = " ".join(_dockerfile_runs())
    assert "bash scripts/install_models.sh" in runs
    # The cache layer reads the same lock as the script: models.txt, or models-cu12.txt with CUDA=12.
    assert 'pip install -r "requirements/$lock"' in runs and "lock=models.txt" in runs
    assert "lock=models-cu12.txt" in runs and 'install_models.sh /opt/venv/bin/python --cuda "$CUDA"' in runs
    extras = re.search(r"pip install -e \"?\.\[([\w,]+)\]", runs)
    assert extras, "the project is not installed with pip install -e .[extras]"
    declared = _pyproject()["project"]["optional-dependencies"]
    assert {"s3", "ray"} <= set(extras.group(1).split(",")) <= set(declared)
    # No version pins of its own: every pin lives in requirements/models.txt or the scripts.
    assert not re.search(r"[\w.-]+==\d", runs), runs


def test_dockerfile_python_matches_the_cluster_launcher_nodes() -> None:
    """Ray needs the same Python minor version on every node and client."""
    docker = set(re.findall(r"python3\.\d+", (INFRA / "Dockerfile").read_text()))
    cluster = set(re.findall(r"python3\.\d+", (INFRA / "ray-cluster.yaml").read_text()))
    assert len(docker) == 1 and docker == cluster


def test_docker_context_leaves_out_local_state() -> None:
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    default_venv = re.search(r"^VENV=(\S+)", (REPO / "scripts" / "setup.sh").read_text(), re.M).group(1)
    assert ".git" in ignored and any(p.endswith(default_venv) for p in ignored)


def _weights_check(config_name: str, dest: Path) -> subprocess.CompletedProcess[str]:
    """``bmp-label weights CONFIG --to DEST --check`` (the Dockerfile's command, checking only): one
    line per checkpoint, naming where it must be; fetches nothing."""
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "weights", str(REPO / "configs" / config_name), "--to", str(dest),
         "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_baked_weights_are_where_the_job_looks(tmp_path: Path) -> None:
    """`bmp-label weights --to DEST` fills DEST in the cache layout resolve_checkpoint reads first, so a
    job with models.cache_dir=DEST finds them offline; --check names exactly those paths."""
    from bmp_core.models.checkpoints import cache_path_for

    done = _weights_check("bmp_d3.yaml", tmp_path)
    assert done.returncode == 2, done.stderr  # nothing there yet: every file is reported missing
    lines = done.stdout.splitlines()
    models = load_config(REPO / "configs" / "bmp_d3.yaml").models
    uris = [models.detector.checkpoint, models.pose.checkpoint, models.segmenter.checkpoint]
    assert len(lines) == 3
    for line, uri in zip(lines, uris, strict=True):
        assert line.startswith("FAILED") and uri in line and str(cache_path_for(uri, tmp_path)) in line
    assert "bmp-label weights: 3 of 3 checkpoint(s) not checked" in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # --check fetches nothing
    fake = _weights_check("fake.yaml", tmp_path)
    assert fake.returncode == 2 and "names no checkpoint" in fake.stderr  # nothing to bake is an error


# ---------------------------------------------------------------------------------------- submit.sh


def _submit(
    tmp_path: Path, *args: str, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run submit.sh with a stub `ray` that records its argv; returns (result, recorded argv)."""
    record = tmp_path / "argv.json"
    stub = tmp_path / "ray"
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd()}}, open({str(record)!r}, 'w'))\n"
    )
    stub.chmod(0o755)
    env = {**os.environ, "RAY": str(stub), "RAY_ADDRESS": "http://10.0.0.5:8265"}
    result = subprocess.run(
        ["bash", str(INFRA / "submit.sh"), *args],
        env=env,
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
    )
    recorded = json.loads(record.read_text()) if record.exists() else None
    return result, recorded


def test_submit_sh_builds_a_job_submit_the_cli_accepts(tmp_path: Path) -> None:
    parser = _cli_parser()
    result, recorded = _submit(
        tmp_path,
        "s3://b/in/",
        "s3://b/out/",
        str(REPO / "configs" / "fake.yaml"),
        "--",
        "--num-workers",
        "4",
        "loop.iterations=3",
    )
    assert result.returncode == 0, result.stderr
    argv = recorded["argv"]
    assert argv[:2] == ["job", "submit"]
    assert argv[argv.index("--address") + 1] == "http://10.0.0.5:8265"
    assert argv[argv.index("--runtime-env") + 1] == "infra/runtime_env.yaml"
    assert Path(recorded["cwd"]) == REPO  # where runtime_env.yaml's working_dir "." points
    entry = argv[argv.index("--") + 1 :]
    assert entry[0] == "bmp-label"
    args = parser.parse_args(entry[1:])
    assert (args.command, args.input, args.output) == ("run", "s3://b/in/", "s3://b/out/")
    assert args.config == "configs/fake.yaml"  # repo-relative: it exists in the uploaded working_dir
    assert (args.num_workers, args.overrides) == (4, ["loop.iterations=3"])


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("out/images", "s3://b/out/"), "relative"),
        (("s3://b/in/", "labels"), "relative"),
        (("s3://b/in/", "s3://b/out/", "{outside}"), "outside"),
        (("s3://b/in/", "s3://b/out/", "configs/no_such.yaml"), "not found"),
    ],
)
def test_submit_sh_refuses_what_would_fail_on_the_cluster(
    tmp_path: Path, args: tuple[str, ...], complaint: str
) -> None:
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "configs" / "fake.yaml").read_text())
    result, recorded = _submit(tmp_path, *(a.format(outside=outside) for a in args))
    assert result.returncode == 2 and complaint in result.stderr and recorded is None
