"""``metadns submit [run|tune]``: render the Slurm batch script of a campaign (or of a Tune
sweep) and submit it with sbatch.

The script (``cluster/metadns_ray.sbatch.template``) follows Ray's Slurm guide: a Ray head on
the batch host and one Ray worker on each other node (``srun``, one task per node, each reading
its own node's CPUs; Ray detects GPUs), with every Ray port taken from a block derived from the
job id.  It keeps Ray token authentication on (token file on shared storage, mode 600), checks
CUDA on every node first when GPUs are requested, and runs ``metadns run CONFIG --out OUT
--resume --quiet --executor ray --address HEAD:PORT`` (or ``metadns tune ... --resume``) as the
driver.  It is written to ``OUT/<config name>/slurm/job.sbatch`` (``tune.sbatch``); Slurm's log
goes beside it (``slurm-<job id>.out``), and so do Ray's logs of a failed job
(``ray-logs-<job id>/``).  Jobs are requeueable: a preempted job, or one near its time limit,
is requeued and resumes from its last checkpoint.

Nothing here imports ``ray``: this module only validates, renders and calls Slurm's commands.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config, grid_points, load_config
from pipeline.errors import SubmitError, setup_errors  # SubmitError: defined there, part of this module's interface
from pipeline.outputs import atomic_write_text
from pipeline.campaign import prepare_campaign

TEMPLATE = Path(__file__).resolve().parents[2] / "cluster" / "metadns_ray.sbatch.template"
SCRIPT_NAMES = {"run": "job.sbatch", "tune": "tune.sbatch"}
TOKEN_NAME = "ray_auth_token"
PORT_FIRST = 10000
PORT_BLOCK = 550
PORT_SLOTS = 40
"""A job's Ray ports: the block of PORT_BLOCK ports from PORT_FIRST + PORT_BLOCK × (job id mod
PORT_SLOTS), i.e. 10000-31999, below Linux's ephemeral range.  In the block: +0 GCS, +1 Ray
client server, +2 node manager, +3 object manager, +4/+5 dashboard agent (HTTP, gRPC), +6
runtime-env agent, +7 metrics export, +8 to the end worker processes (542 per node)."""
_GPUS = re.compile(r"^(?:([A-Za-z0-9_.-]+):)?(\d+)$")
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
# Slurm time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or no limit.
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
                   r"|UNLIMITED|INFINITE)$", re.IGNORECASE)
_JOB_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,128}$")
_MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_FIELD = re.compile(r"\{\{([A-Z_]+)\}\}")
FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                             "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"})


@dataclass(frozen=True)
class SubmitOptions:
    """What ``metadns submit`` renders.  Paths may be relative (made absolute against the
    current directory, which is also the job's working directory).

    ``command``: "run" (a campaign) or "tune" (a Ray Tune sweep of the config).
    ``gpus_per_node``: "COUNT" or "TYPE:COUNT" (e.g. "a100:4"); "0" asks for none.
    ``cpus_per_node`` None: whole nodes (``--exclusive``) and Ray gets every CPU Slurm gives.
    ``env``: ("venv", DIR) | ("conda", NAME_OR_PREFIX) | ("none", "") | None (the environment
    of the Python running this, see :func:`default_environment`).  ``setup``: shell lines the
    job runs first (``module load ...``).  ``ray_port`` 0: the job's block of Ray ports is
    derived from its id (PORT_FIRST); otherwise it starts there.  The head's address:
    ``head_ip``, else the IPv4 address of ``ray_interface`` on the head, else what the head's
    host name resolves to.  ``loopback``: single-node jobs only; Ray advertises and binds
    127.0.0.1 (tests).
    """

    config: Path
    command: str = "run"
    out: Path = Path("runs")
    profile: str | None = None
    overrides: tuple[str, ...] = ()
    nodes: int = 1
    gpus_per_node: str = "0"
    cpus_per_node: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    job_name: str | None = None
    sbatch_args: tuple[str, ...] = ()
    env: tuple[str, str] | None = None
    setup: tuple[str, ...] = ()
    ray_port: int = 0
    head_ip: str | None = None
    ray_interface: str | None = None
    loopback: bool = False
    signal_seconds: int = 120
    startup_timeout_s: int = 300
    template: Path = TEMPLATE
    workdir: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class RenderedJob:
    """A rendered batch script and where it goes (absolute paths)."""

    config: Config
    script: str
    script_path: Path
    slurm_dir: Path
    log_pattern: Path     # Slurm's --output, %j = job id

    def log_path(self, job_id: str) -> Path:
        return Path(str(self.log_pattern).replace("%j", job_id))


def default_environment() -> tuple[str, str]:
    """The environment of the running interpreter: its venv, its conda env, else none (the
    job then uses the PATH it inherits from sbatch)."""
    prefix = Path(sys.prefix)
    if (prefix / "pyvenv.cfg").exists() and (prefix / "bin" / "activate").exists():
        return ("venv", str(prefix))
    if (prefix / "conda-meta").is_dir():
        return ("conda", str(prefix))
    return ("none", "")


def _activation(env: tuple[str, str]) -> str:
    kind, value = env
    if kind == "venv":
        venv = Path(value).expanduser().resolve()
        if not (venv / "bin" / "activate").exists():
            raise SubmitError("--venv", f"{venv} is not a virtual environment (no bin/activate); "
                                        "pass the folder made by `python -m venv`, e.g. --venv .venv")
        quoted = shlex.quote(str(venv / "bin" / "activate"))
        return f"source {quoted} || fail {shlex.quote(f'cannot activate the venv {venv}')}"
    if kind == "conda":
        if not value or any(c.isspace() for c in value):
            raise SubmitError("--conda-env", f"must name a conda environment or its prefix, got {value!r}")
        env_name = shlex.quote(value)
        return ("set +u  # conda's activation scripts read unset variables\n"
                'eval "$("${CONDA_EXE:-conda}" shell.bash hook)" '
                f"&& conda activate {env_name} || fail {shlex.quote(f'cannot activate the conda env {value}')}\n"
                "set -u")
    if kind == "none":
        return "# no environment activation: the job uses the PATH it inherited from sbatch"
    raise SubmitError("--env", f"unknown environment kind {kind!r}; use --venv, --conda-env or --no-env")


def _sbatch_value(option: str, value: str) -> str:
    """A value for an ``#SBATCH`` line: sbatch reads these lines itself, so no shell quoting;
    whitespace and newlines are refused."""
    if not value or any(c.isspace() for c in value):
        raise SubmitError(option, f"must be non-empty without spaces, got {value!r}")
    return value


def gpu_request(value: str) -> tuple[str, int]:
    """``--gpus-per-node`` as (the value of ``#SBATCH --gpus-per-node``, GPU count): "4" → ("4",
    4), "a100:4" → ("a100:4", 4), "0" → ("", 0)."""
    match = _GPUS.match(str(value).strip())
    if match is None or (match.group(1) and int(match.group(2)) == 0):
        raise SubmitError("--gpus-per-node", f"must be COUNT or TYPE:COUNT, e.g. 4 or a100:4 (COUNT ≥ 1 with a "
                                             f"TYPE; 0: no GPUs), got {value!r}")
    kind, count = match.group(1), int(match.group(2))
    if count == 0:
        return "", 0
    return (f"{kind}:{count}" if kind else str(count)), count


def _setup_block(lines: tuple[str, ...]) -> str:
    """The ``--setup`` lines as script text: each runs in order (``set -u`` off, as module and
    conda scripts read unset variables) and a non-zero status stops the job naming the line."""
    if not lines:
        return "# (no --setup lines)"
    block = ["set +u  # module and conda scripts read unset variables"]
    for number, line in enumerate(lines, start=1):
        if not line.strip() or any(c in line for c in "\n\r\0") or line.rstrip().endswith("\\"):
            raise SubmitError("--setup", f"takes one complete shell line per use (repeat the option for more; no "
                                         f"line breaks or trailing backslash), got {line!r}")
        block += [line, f'setup_status=$?; [[ $setup_status -eq 0 ]] || fail "--setup line {number} exited with '
                        f'status $setup_status: "{shlex.quote(line)}']
    block.append("set -u")
    return "\n".join(block)


def _check(options: SubmitOptions) -> None:
    if options.command not in SCRIPT_NAMES:
        raise SubmitError("command", f"must be one of {sorted(SCRIPT_NAMES)}, got {options.command!r}")
    if options.nodes < 1:
        raise SubmitError("--nodes", f"must be at least 1, got {options.nodes}")
    gpu_request(options.gpus_per_node)
    if options.cpus_per_node is not None and options.cpus_per_node < 1:
        raise SubmitError("--cpus-per-node", f"must be at least 1, got {options.cpus_per_node}")
    if options.mem is not None and not _MEMORY.match(options.mem):
        raise SubmitError("--mem", f"must be a Slurm memory size such as 32G or 64000M, got {options.mem!r}")
    if options.time is not None and not _TIME.match(options.time):
        raise SubmitError("--time", f"must be a Slurm time limit (MM, HH:MM:SS, D-HH, D-HH:MM:SS), "
                                    f"got {options.time!r}")
    if options.job_name is not None and not _JOB_NAME.match(options.job_name):
        raise SubmitError("--job-name", f"letters, digits and ._+- only (at most 128), got {options.job_name!r}")
    if options.ray_port != 0 and not 1024 <= options.ray_port <= 65536 - PORT_BLOCK:
        raise SubmitError("--ray-port", f"is the first of the job's {PORT_BLOCK} Ray ports: 1024–{65536 - PORT_BLOCK} "
                                        f"(0: derived from the job id), got {options.ray_port}")
    if options.loopback and options.nodes != 1:
        raise SubmitError("--loopback", f"binds Ray to 127.0.0.1, which only a single-node job can use; "
                                        f"drop it or use --nodes 1 (got --nodes {options.nodes})")
    chosen = [name for name, value in (("--loopback", options.loopback), ("--head-ip", options.head_ip),
                                       ("--ray-interface", options.ray_interface)) if value]
    if len(chosen) > 1:
        raise SubmitError(chosen[1], f"and {chosen[0]} both choose the head's address; keep one of them")
    if options.head_ip is not None:
        try:
            ipaddress.IPv4Address(options.head_ip)
        except ValueError:
            raise SubmitError("--head-ip", f"must be the head node's IPv4 address, e.g. 10.1.2.3, got "
                                           f"{options.head_ip!r}") from None
    if options.ray_interface is not None and not _INTERFACE.match(options.ray_interface):
        raise SubmitError("--ray-interface", f"must name a network interface, e.g. ib0 or eth0 (as `ip -o -4 addr` "
                                             f"lists them), got {options.ray_interface!r}")
    if options.signal_seconds < 1:
        raise SubmitError("--signal-seconds", f"must be at least 1, got {options.signal_seconds}")
    if options.startup_timeout_s < 1:
        raise SubmitError("--startup-timeout", f"must be at least 1 s, got {options.startup_timeout_s}")
    for arg in options.sbatch_args:
        if not arg.startswith("-") or "\n" in arg:
            raise SubmitError("--sbatch-arg", f"takes one sbatch option per use, e.g. --sbatch-arg=--qos=long; "
                                              f"got {arg!r}")


def render(options: SubmitOptions) -> RenderedJob:
    """Validate the options and the config (nothing is written) and render the batch script.

    Raises SubmitError for bad options, ConfigError for an invalid config, RunFolderExists when
    ``OUT`` holds runs of this campaign made with other settings (TuneFolderExists: another
    sweep), FileNotFoundError for a missing config.
    """
    _check(options)
    workdir = Path(options.workdir).resolve()
    config_path = (workdir / options.config).resolve()
    out = (workdir / Path(options.out).expanduser()).resolve()
    config = load_config(config_path, options.overrides, profile=options.profile)
    if options.command == "tune":  # everything `metadns tune --resume` checks before writing
        from pipeline.distributed.tune import check_same_sweep, plan_tune  # noqa: PLC0415 - torch, only for sweeps

        plan = plan_tune(config, out)
        if plan.out_dir.exists():
            check_same_sweep(plan)
    else:
        for tag, point_config in grid_points(config):  # everything `metadns run --resume` checks before writing
            prepare_campaign(point_config, out, resume=True, point=tag, check_device=False)  # for the job's nodes
    slurm_dir = out / config.name / "slurm"
    for option, path in (("--out", slurm_dir), ("CONFIG", config_path), ("working directory", workdir)):
        _sbatch_value(option, str(path))
    log_pattern = slurm_dir / "slurm-%j.out"

    resources = []
    if options.cpus_per_node is None:
        resources.append("#SBATCH --exclusive")
    else:
        resources.append(f"#SBATCH --cpus-per-task={options.cpus_per_node}")
    gpus, gpu_count = gpu_request(options.gpus_per_node)
    if gpu_count:
        resources.append(f"#SBATCH --gpus-per-node={gpus}")
    if options.mem is not None:
        resources.append(f"#SBATCH --mem={options.mem}")
    if options.time is not None:
        resources.append(f"#SBATCH --time={options.time}")
    if options.partition is not None:
        resources.append(f"#SBATCH --partition={_sbatch_value('--partition', options.partition)}")
    if options.account is not None:
        resources.append(f"#SBATCH --account={_sbatch_value('--account', options.account)}")
    extra = "\n".join(f"#SBATCH {arg}" for arg in options.sbatch_args) or "# (no extra sbatch options)"

    driver = ["metadns", options.command, str(config_path), "--out", str(out), "--resume", "--quiet"]
    if options.command == "run":
        driver += ["--executor", "ray"]
    if options.profile is not None:
        driver += ["--profile", options.profile]
    for override in options.overrides:
        driver += ["--set", override]

    fields = {
        "JOB_NAME": options.job_name or _sbatch_value("--job-name", f"metadns-{config.name}"),
        "NODES": str(options.nodes),
        "SBATCH_RESOURCES": "\n".join(resources),
        "SBATCH_EXTRA": extra,
        "LOG_FILE": str(log_pattern),
        "WORKDIR": str(workdir),
        "SIGNAL_SECONDS": str(options.signal_seconds),
        "DRIVER": " ".join(shlex.quote(word) for word in driver),
        "DRIVER_STOP_SIGNAL": "INT" if options.command == "tune" else "TERM",  # Tune saves its state on SIGINT
        "SLURM_DIR": shlex.quote(str(slurm_dir)),
        "GPUS_PER_NODE": str(gpu_count),
        "PORT_BASE": str(options.ray_port),
        "PORT_FIRST": str(PORT_FIRST),
        "PORT_BLOCK": str(PORT_BLOCK),
        "PORT_SLOTS": str(PORT_SLOTS),
        "HEAD_IP": shlex.quote(options.head_ip or ""),
        "RAY_INTERFACE": shlex.quote(options.ray_interface or ""),
        "LOOPBACK": "1" if options.loopback else "0",
        "STARTUP_TIMEOUT_S": str(options.startup_timeout_s),
        "SETUP": _setup_block(options.setup),
        "ACTIVATE": _activation(options.env or default_environment()),
    }
    try:
        template = Path(options.template).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmitError("--template", f"batch script template {options.template} not found (it ships in the "
                                        "repository's cluster/ folder; pass --template PATH)") from None
    missing = sorted(set(_FIELD.findall(template)) - set(fields))
    if missing:
        raise SubmitError("--template", f"{options.template} has fields this version does not fill: {missing}")
    script = _FIELD.sub(lambda match: fields[match.group(1)], template)
    return RenderedJob(config=config, script=script, script_path=slurm_dir / SCRIPT_NAMES[options.command],
                       slurm_dir=slurm_dir, log_pattern=log_pattern)


def _slurm_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SubmitError(name, f"Slurm's `{name}` is not on PATH: run on a Slurm login node (or use "
                                "--dry-run to print the batch script)")
    return path


def _active_jobs_of(script_path: Path) -> list[str]:
    """Ids of pending/running jobs whose batch script is ``script_path`` (empty if squeue fails)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return []
    result = subprocess.run([squeue, "-h", "-o", "%i %o"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return []
    jobs = []
    for line in result.stdout.splitlines():
        job_id, _, command = line.strip().partition(" ")
        if command.strip() == str(script_path):
            jobs.append(job_id)
    return jobs


def submit(job: RenderedJob, wait: bool = False, echo=print) -> tuple[str, int]:
    """Write ``job.script`` (atomically) and submit it with ``sbatch --parsable``.

    Returns (job id, exit code): 0 when submitted (with ``wait``: when the job ended with
    status 0; otherwise sbatch's non-zero status).  Raises SubmitError when sbatch is missing,
    a job of this campaign is still queued or running, or sbatch refuses the script (the
    written script is then removed).
    """
    sbatch = _slurm_command("sbatch")
    running = _active_jobs_of(job.script_path)
    if running:
        raise SubmitError("--out", f"job(s) {', '.join(running)} still run this campaign ({job.script_path}); "
                                   "wait for them, scancel them, or choose another --out")
    job.slurm_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.script_path, job.script)
    job.script_path.chmod(0o755)
    command = [sbatch, "--parsable", *(["--wait"] if wait else []), str(job.script_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line = process.stdout.readline().strip()
    if not first_line:
        _, error = process.communicate()
        job.script_path.unlink(missing_ok=True)
        raise SubmitError("sbatch", f"refused the job: {error.strip() or f'exit status {process.returncode}'}")
    job_id = first_line.split(";")[0]
    echo(f"submitted job {job_id}: script {job.script_path}, log {job.log_path(job_id)}")
    if not wait:
        process.communicate()
        return job_id, 0
    echo(f"waiting for job {job_id} (sbatch --wait) ...")
    _, error = process.communicate()
    if process.returncode != 0:
        echo(f"job {job_id} ended with status {process.returncode}: {error.strip()}")
    return job_id, process.returncode


def job_state(job_id: str) -> tuple[str, str] | None:
    """(JobState, ExitCode) of a job from ``scontrol show job``; None once Slurm has forgotten it."""
    scontrol = _slurm_command("scontrol")
    result = subprocess.run([scontrol, "show", "job", "-o", str(job_id)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "")


def wait_for_job(job_id: str, timeout_s: float, poll_s: float = 2.0) -> tuple[str, str]:
    """Poll ``scontrol`` until the job reaches a final state; returns (JobState, ExitCode).
    Raises TimeoutError after ``timeout_s`` seconds (the job is left alone)."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state is not None and state[0] in FINISHED_STATES:
            return state
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s:.0f} s (last state {state})")


def options_from_args(args) -> SubmitOptions:
    """SubmitOptions from the namespace that pipeline.cli parsed for ``metadns submit``."""
    env = None
    if args.venv is not None:
        env = ("venv", str(args.venv))
    elif args.conda_env is not None:
        env = ("conda", args.conda_env)
    elif args.no_env:
        env = ("none", "")
    return SubmitOptions(
        config=args.config, command=args.command, out=args.out, profile=args.profile, overrides=tuple(args.overrides),
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node, mem=args.mem,
        time=args.time, partition=args.partition, account=args.account, job_name=args.job_name,
        sbatch_args=tuple(args.sbatch_args), env=env, setup=tuple(args.setup), ray_port=args.ray_port,
        head_ip=args.head_ip, ray_interface=args.ray_interface, loopback=args.loopback,
        signal_seconds=args.signal_seconds, startup_timeout_s=args.startup_timeout, template=args.template or TEMPLATE)


def submit_command(args) -> int:
    """``metadns submit``: 0 submitted (or printed with --dry-run); with --wait, 1 when the job
    did not end with status 0.  Bad options, an invalid config, a clash with existing runs or
    jobs, sbatch missing or refusing raise a SetupError (``metadns`` exits 2)."""
    with setup_errors(FileNotFoundError):
        job = render(options_from_args(args))
        if args.dry_run:
            sys.stdout.write(job.script)
            return 0
        _, status = submit(job, wait=args.wait)
    return 0 if status == 0 else 1


__all__ = ["SubmitOptions", "RenderedJob", "SubmitError", "render", "submit", "submit_command", "job_state",
           "wait_for_job", "default_environment", "options_from_args", "gpu_request", "TEMPLATE", "PORT_FIRST",
           "PORT_BLOCK", "PORT_SLOTS"]
