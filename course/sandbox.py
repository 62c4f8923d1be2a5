"""Autograding kernels in a bubblewrap sandbox (used by ``nbgrader_config.py``, ``make grade``).

A student's notebook is code the instructor has never read. nbgrader runs it in a Jupyter kernel;
:class:`SandboxKernelManager` starts that kernel inside `bubblewrap <https://github.com/containers/bubblewrap>`_
(Debian's ``bubblewrap``, the ``bwrap`` command), so that it runs

- with **no network** (a network namespace of its own, with no interface but loopback);
- as an **unprivileged user** (uid 1000 in a user namespace of its own, every capability dropped,
  no further user namespaces), in **its own process tree** (``/proc`` shows only the sandbox),
  killed with the grader (``--die-with-parent``);
- on a **filesystem that holds only what the course needs**, read-only: the system's ``/usr``
  (programs, libraries, fonts), the Python installation, the course environment (``.venv``),
  the ``lora_edu`` package and its recorded results. The course folder (gradebook, instructor
  notebooks, every submission and graded notebook), the repository's ``notebooks/`` with the
  solutions, ``/home``, ``/root``, the host's ``/tmp`` and ``/etc`` are simply not there;
- with **a private, size-capped scratch space**: ``/tmp`` (also the home folder and the working
  folder) and ``/dev/shm`` are fresh memory file systems of ``tmp_size`` bytes each, gone when
  the kernel ends; everything else is read-only;
- with **resource limits**: ``memory_limit`` bytes of data memory (``RLIMIT_DATA``: a larger
  allocation fails with ``MemoryError``) and ``RLIMIT_AS``, no file larger than
  ``file_size_limit``, no core dumps;
- with **a clean environment**: only the variables in :data:`PASSED_ENV` (locale, the course's
  ``LORA_EDU_*`` and thread settings) and a fixed ``HOME``/``USER``; never the grader's tokens;
  numerical libraries use ``threads`` threads (1: predictable times on a busy machine);
- with **names for the loopback only**: an ``/etc/hosts`` of its own (``localhost`` and the sandbox's
  host name ``grading`` are 127.0.0.1) and an ``/etc/nsswitch.conf`` that looks names up in that
  file alone. Chapter 08 starts two processes that meet on ``localhost`` (``torchrun --standalone``);
  without these files ``localhost`` does not resolve and the job fails or waits until its timeout.

The kernel talks to nbgrader through Unix sockets (Jupyter's ``ipc`` transport) in a private
folder made for this one kernel, the only host folder it can write to (the sockets live there);
:meth:`SandboxKernelManager.scratch_bytes` lets the grader watch its size.

``sandbox = "off"`` starts an ordinary kernel (``make grade`` refuses that unless told
``--no-sandbox``). See README, "For instructors", for the threat model and its limits.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Integer, List, Unicode, default

GiB = 1024 ** 3
MiB = 1024 ** 2

# The host environment variables a sandboxed kernel keeps (if set); everything else is dropped.
PASSED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONHASHSEED", "IPYKERNEL_CELL_NAME",
              "PYDEVD_DISABLE_FILE_VALIDATION", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS", "MPLBACKEND")
# What the kernel sees of /etc: the loader cache, fonts, time zone. Not passwd, not shadow, not hosts.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/fonts", "/etc/localtime",
             "/etc/alternatives", "/etc/mime.types")
INSIDE_HOME = "/tmp/home"
INSIDE_WORK = "/tmp/work"
SANDBOX_UID = 1000

# Runs inside the sandbox, before the kernel: set the resource limits, then become the kernel.
_LIMITS = """\
import os, resource, sys
data, address, fsize = (int(v) for v in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_DATA, (data, data))
resource.setrlimit(resource.RLIMIT_AS, (address, address))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.execv(sys.argv[5], sys.argv[5:])
"""


def _host_layout() -> list[str]:
    """bwrap arguments for the top-level system folders (/usr, and /bin, /lib... as links or binds)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    return args


def course_paths() -> list[str]:
    """The host folders a kernel needs to run the course, bound read-only at the same paths.

    The Python installation and the environment (``sys.base_prefix``, ``sys.prefix``), the
    ``lora_edu`` package wherever it is installed (an editable install points into the
    checkout), and the recorded results it reads (``benchmarks/results`` next to it, or
    ``$LORA_EDU_RESULTS``). Never the checkout itself: its ``notebooks/`` hold the solutions.
    """
    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))]
    spec = importlib.util.find_spec("lora_edu")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            paths.append(location)
            results = Path(location).resolve().parent / "benchmarks" / "results"
            if results.is_dir():
                paths.append(str(results))
    if os.environ.get("LORA_EDU_RESULTS"):
        paths.append(os.environ["LORA_EDU_RESULTS"])
    kept: list[str] = []
    # Each folder at its real path and, when a link leads to it, at that path too (the kernel is
    # started by the path the grader knows, such as .venv/bin/python).
    wanted = {os.path.realpath(p) for p in paths if os.path.isdir(p)}
    wanted |= {os.path.abspath(p) for p in paths if os.path.isdir(p)}
    for path in sorted(wanted):
        if path.startswith("/usr/") or path == "/usr":
            continue  # already there
        if not any(path.startswith(k + os.sep) for k in kept):
            kept.append(path)
    return kept


def matplotlib_font_cache() -> str | None:
    """The host's matplotlib font list (``fontlist-v*.json``), so a kernel need not rebuild it."""
    folders = [os.environ.get("MPLCONFIGDIR"),
               os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "matplotlib")]
    for folder in filter(None, folders):
        found = sorted(Path(folder).glob("fontlist-v*.json"))
        if found:
            return str(found[-1])
    return None


def sandbox_env(host_env: dict[str, str], threads: int = 1) -> dict[str, str]:
    """The kernel's whole environment: :data:`PASSED_ENV` from the host, and fixed values.

    ``threads``: OpenMP / MKL / OpenBLAS threads, unless the host sets them. One thread by default:
    a notebook's time is then its CPU time, whatever else the machine runs (two threads on a busy
    machine were several times slower than one).
    """
    env = {key: host_env[key] for key in PASSED_ENV if key in host_env}
    env.setdefault("LANG", "C.UTF-8")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(key, str(threads))
    env.update({
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": INSIDE_HOME, "USER": "student", "LOGNAME": "student", "TMPDIR": "/tmp",
        # Grading runs on the CPU (the sandbox has no GPU device); pure Python malloc arenas stay few.
        "LORA_EDU_DEVICE": "cpu", "MALLOC_ARENA_MAX": "2",
    })
    if host_env.get("LORA_EDU_RESULTS"):
        env["LORA_EDU_RESULTS"] = host_env["LORA_EDU_RESULTS"]
    return env


def supports_tmpfs_size(bwrap: str = "bwrap") -> bool:
    """Whether this bwrap has ``--size`` (bubblewrap 0.8 and later)."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out.stdout + out.stderr


# The sandbox's own name files (written into the kernel's private folder, bound read-only over /etc).
HOSTS = "127.0.0.1 localhost grading\n::1 localhost ip6-localhost ip6-loopback\n"
NSSWITCH = "hosts: files\n"


def _name_files(ipc_dir: str) -> list[str]:
    """bwrap arguments binding the sandbox's ``/etc/hosts`` and ``/etc/nsswitch.conf`` (written here)."""
    folder = Path(ipc_dir) / "etc"
    folder.mkdir(exist_ok=True)
    args = []
    for name, text in (("hosts", HOSTS), ("nsswitch.conf", NSSWITCH)):
        (folder / name).write_text(text)
        args += ["--ro-bind", str(folder / name), f"/etc/{name}"]
    return args


def sandbox_command(kernel_cmd: list[str], ipc_dir: str, *, env: dict[str, str], memory_limit: int,
                    address_limit: int, file_size_limit: int, tmp_size: int | None, bwrap: str = "bwrap",
                    ro_paths: list[str] | None = None, font_cache: str | None = None) -> list[str]:
    """The bwrap command line that runs ``kernel_cmd`` in the sandbox (see the module docstring).

    ``ipc_dir`` (a fresh host folder holding the connection file) is the one writable host path.
    ``tmp_size=None`` leaves the scratch file systems without a size cap (bwrap older than 0.8).
    """
    size = ["--size", str(tmp_size)] if tmp_size else []
    args = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--die-with-parent", "--cap-drop", "ALL", "--hostname", "grading"]
    args += _host_layout() + _name_files(ipc_dir)
    args += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/dev/shm", *size, "--tmpfs", "/tmp",
             "--dir", INSIDE_HOME, "--dir", INSIDE_WORK]
    # After the scratch /tmp, not before: a checkout under /tmp (a CI clone, say) would be hidden by it.
    for path in course_paths() if ro_paths is None else ro_paths:
        args += ["--ro-bind", os.path.realpath(path), path]
    if font_cache:
        args += ["--ro-bind", font_cache, f"{INSIDE_HOME}/.cache/matplotlib/{os.path.basename(font_cache)}"]
    args += ["--bind", ipc_dir, ipc_dir, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", INSIDE_WORK,
             "--clearenv"]
    for key, value in sorted(env.items()):
        args += ["--setenv", key, value]
    limits = [str(memory_limit), str(address_limit), str(file_size_limit)]
    return args + ["--", sys.executable, "-c", _LIMITS, *limits, "--", *kernel_cmd]


def probe(bwrap: str = "bwrap") -> str | None:
    """None if ``bwrap`` can start a sandbox here; otherwise why not (shown to the instructor)."""
    path = shutil.which(bwrap)
    if path is None:
        return (f"`{bwrap}` is not installed: install Debian's bubblewrap (`sudo apt-get install bubblewrap`) "
                "or the same package of your distribution")
    with tempfile.TemporaryDirectory(prefix="grading-probe-") as ipc:
        cmd = sandbox_command([sys.executable, "-c", "print('ok')"], ipc, env=sandbox_env(dict(os.environ)),
                              memory_limit=GiB, address_limit=8 * GiB, file_size_limit=MiB,
                              tmp_size=MiB if supports_tmpfs_size(path) else None, bwrap=path)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ipc)
        except subprocess.TimeoutExpired:
            return f"`{path}` did not start a sandbox within 60 s"
    if out.returncode != 0 or out.stdout.strip() != "ok":
        return (f"`{path}` cannot start a sandbox here (exit code {out.returncode}): {out.stderr.strip()[-500:]}. "
                "Unprivileged user namespaces must be allowed (Ubuntu 24.04: an AppArmor profile for bwrap, "
                "or `sysctl kernel.apparmor_restrict_unprivileged_userns=0`)")
    return None


class SandboxKernelManager(AsyncKernelManager):
    """A Jupyter kernel manager that starts each kernel inside bubblewrap (see the module docstring).

    Configure it in ``nbgrader_config.py`` (``c.SandboxKernelManager.memory_limit = ...``);
    ``sandbox = "off"`` makes it an ordinary ``AsyncKernelManager``.
    """

    sandbox = Unicode("bwrap", help='"bwrap" (isolate every kernel) or "off" (trusted code only).').tag(config=True)
    bwrap = Unicode("bwrap", help="The bubblewrap executable.").tag(config=True)
    memory_limit = Integer(3 * GiB, help="RLIMIT_DATA of the kernel, bytes: the heap and private "
                                         "memory it may allocate.").tag(config=True)
    address_limit = Integer(16 * GiB, help="RLIMIT_AS of the kernel, bytes: all mapped memory, shared "
                                           "and reserved included.").tag(config=True)
    file_size_limit = Integer(256 * MiB, help="The largest file the kernel may write, bytes.").tag(config=True)
    tmp_size = Integer(512 * MiB, help="Size of the kernel's /tmp (and of /dev/shm), bytes.").tag(config=True)
    threads = Integer(1, help="Threads of the kernel's numerical libraries (OMP_NUM_THREADS...), unless "
                              "set in the grader's environment.").tag(config=True)
    extra_paths = List(Unicode(), help="More host folders to show read-only at the same path "
                                       "(e.g. a data set the notebooks read).").tag(config=True)

    @default("transport")
    def _transport_default(self) -> str:
        return "tcp" if self.sandbox == "off" else "ipc"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._scratch: str | None = None
        self._log_path: str | None = None
        if self.sandbox not in ("bwrap", "off"):
            raise ValueError(f'SandboxKernelManager.sandbox must be "bwrap" or "off", got {self.sandbox!r}')
        if self.sandbox == "bwrap":
            self.transport = "ipc"
            self._scratch = tempfile.mkdtemp(prefix="grading-kernel-")
            os.chmod(self._scratch, 0o700)
            ipc = os.path.join(self._scratch, "ipc")
            os.mkdir(ipc, 0o700)
            self.connection_file = os.path.join(ipc, "kernel.json")
            self.ip = os.path.join(ipc, "kernel")
            self._log_path = os.path.join(self._scratch, "kernel.log")  # outside the sandbox's view

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw):
        if self.sandbox == "bwrap":
            ipc = os.path.dirname(self.connection_file)
            bwrap = shutil.which(self.bwrap) or self.bwrap
            tmp_size = self.tmp_size if supports_tmpfs_size(bwrap) else None
            kernel_cmd = sandbox_command(
                kernel_cmd, ipc, env=sandbox_env(kw.get("env") or dict(os.environ), self.threads), bwrap=bwrap,
                memory_limit=self.memory_limit, address_limit=self.address_limit,
                file_size_limit=self.file_size_limit, tmp_size=tmp_size,
                ro_paths=course_paths() + [p for p in self.extra_paths if os.path.isdir(p)],
                font_cache=matplotlib_font_cache())
            kw["cwd"] = ipc
            kw["stdout"] = subprocess.DEVNULL
            kw["env"] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # bwrap's own; --clearenv inside
            with open(self._log_path, "ab") as log:  # the kernel's stderr, read back by log_tail()
                kw["stderr"] = log
                return await super()._async_launch_kernel(kernel_cmd, **kw)
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_interrupt_kernel(self) -> None:
        if self.sandbox == "bwrap" and self.has_kernel:
            # SIGINT to the kernel's process group (Jupyter's way) would reach bwrap too, which dies of
            # it and takes the kernel along. Ask the kernel instead: ipykernel then signals only itself.
            self._connect_control_socket()
            self.session.send(self._control_socket, self.session.msg("interrupt_request", content={}))
            return
        await super()._async_interrupt_kernel()

    interrupt_kernel = _async_interrupt_kernel

    def log_tail(self, size: int = 2000) -> str:
        """The end of what the sandboxed kernel wrote to its stderr (a crash report, usually)."""
        if not self._log_path or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(self._log_path) - size))
            return fh.read().decode("utf-8", "replace")

    def scratch_bytes(self) -> int:
        """Bytes in the host folder the kernel can write to (its sockets' folder), log excluded."""
        if not self._scratch:
            return 0
        total = 0
        for folder, _, files in os.walk(os.path.join(self._scratch, "ipc")):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        return total

    def exit_status(self) -> int | None:
        """The kernel's exit status once it has ended (bwrap passes it on; 128 + N: killed by signal N)."""
        process = getattr(self.provisioner, "process", None)
        return None if process is None else process.poll()

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._scratch and not restart:
            shutil.rmtree(self._scratch, ignore_errors=True)

    cleanup_resources = _async_cleanup_resources
