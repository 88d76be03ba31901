"""Real Xen for the test suite: a Xen 4.17 dom0 and two Debian 12 PV guests under QEMU (TCG),
started at the same time, four routed vifs each.

    scripts/xen-lab up [--debs DIR]     build the images (cached), boot, start both guests
    scripts/xen-lab exec dom0|guest1|guest2 -- COMMAND ...   (guest is guest1)
    scripts/xen-lab status | down

Images are built once with mmdebstrap from Debian 12's archive and cached under
/var/tmp/domunet-xen-lab/<key>, the key being a hash of the recipe (this folder), the
.debs under test and the archive's versions of Xen, the kernel and systemd. QEMU runs with
no network at all (`-nic none`): the lab's network lives inside dom0, in namespaces there,
as in the namespace lab. The host speaks to dom0's agent over QEMU's second serial port (a
unix socket); dom0's agent reaches a guest's over its Xen console. guest2's image is guest1's
template with its own /etc/network/interfaces (files/guest2) and host name. Every QEMU this starts
is ended by its pid: by `down`, and by `up` itself on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent
CACHE = Path(os.environ.get("DOMUNET_XEN_LAB_CACHE", "/var/tmp/domunet-xen-lab"))
RUN = CACHE / "run"
FILES = HERE / "files"

PACKAGES_BOTH = ("systemd-sysv udev kmod ifupdown iproute2 python3 iputils-ping netbase linux-image-amd64 "
                 "initramfs-tools xenstore-utils")
PACKAGES = {
    "guest": PACKAGES_BOTH,
    "dom0": PACKAGES_BOTH + " nftables xen-hypervisor-4.17-amd64 xen-utils-4.17",
}
#: which of the .debs under test each image gets, installed with apt as a template would
DEBS = {"guest": ("domunet-common", "domunet"), "dom0": ("domunet-common", "domunet-dom0")}
#: the archive's versions that go into the cache key
VERSIONED = ("linux-image-amd64", "xen-hypervisor-4.17-amd64", "xen-utils-4.17", "systemd", "python3-pyroute2",
             "ifupdown", "iproute2", "nftables")
HOST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs",
              "dpkg-scanpackages": "dpkg-dev"}
QEMU_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+svm"  # what boots Xen 4.17 and a PV dom0 under TCG
BOOT_TIMEOUT = 420
#: The lab's guests as the tests and `exec` name them -> their Xen domain names (`guest` is guest1).
DOMAINS = {"guest": "guest", "guest1": "guest", "guest2": "guest2"}


class XenLabError(Exception):
    pass


def log(message: str) -> None:
    print(f"xen-lab: {message}", file=sys.stderr, flush=True)


# --- building the images --------------------------------------------------------------------

def mirror() -> str:
    """The Debian 12 archive this machine's apt uses."""
    query = ["apt-get", "indextargets", "--format", "$(REPO_URI)", "Identifier: Packages", "Codename: bookworm",
             "Origin: Debian", "Label: Debian"]
    found = subprocess.run(query, capture_output=True, text=True).stdout.split()
    if not found:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        found = subprocess.run(query, capture_output=True, text=True).stdout.split()
    if not found:
        raise XenLabError("apt knows no Debian 12 (bookworm) archive to build the images from")
    return found[0]


def check_host() -> None:
    missing = sorted({package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise XenLabError(f"needs {', '.join(missing)}: apt-get install {' '.join(missing)}")
    if os.geteuid() != 0:
        raise XenLabError("run as root (the images are built with mmdebstrap as root)")


def build_debs(into: Path) -> Path:
    """The checkout's .debs, built as scripts/test builds them."""
    tree = into / "domunet"
    shutil.copytree(SOURCE, tree, ignore=shutil.ignore_patterns(".git", ".pybuild", ".hypothesis", "__pycache__"))
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise XenLabError(f"dpkg-buildpackage failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return into


def cache_key(debs: Path) -> str:
    digest = hashlib.sha256()
    recipe = [HERE / "xenlab.py", HERE / "agent.py", *FILES.rglob("*")]  # not the tests: they need no rebuild
    for path in sorted([*recipe, *debs.glob("*.deb")]):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    policy = subprocess.run(["apt-cache", "policy", *VERSIONED], capture_output=True, text=True).stdout
    digest.update("".join(line for line in policy.splitlines() if "Candidate" in line).encode())
    return digest.hexdigest()[:16]


def _mmdebstrap(role: str, root: Path, debs: Path, archive: str, logfile: Path) -> None:
    wanted = [str(next(debs.glob(f"{name}_*_all.deb"))) for name in DEBS[role]]
    local = " ".join(f"/tmp/debs/{Path(p).name}" for p in wanted)
    argv = [
        "mmdebstrap", "--variant=minbase", f"--include={PACKAGES[role]}",
        "--customize-hook=mkdir -p \"$1/tmp/debs\"",
        f"--customize-hook=copy-in {' '.join(wanted)} /tmp/debs",
        f"--customize-hook=chroot \"$1\" apt-get install -y --no-install-recommends {local}",
        "--customize-hook=rm -rf \"$1/tmp/debs\"",
        "bookworm", str(root), archive,
    ]
    with open(logfile, "w") as out:
        if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            raise XenLabError(f"mmdebstrap of the {role} image failed; see {logfile}")


def _install(root: Path, files: dict[str, str | Path], mode: int = 0o644) -> None:
    for target, content in files.items():
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, path)
        else:
            path.write_text(content)
        path.chmod(mode)


def _configure(role: str, root: Path) -> None:
    """What the template's admin set up: fstab, hostname, consoles, the agent; the guest's
    /etc/network/interfaces (no domunet configuration at all); dom0's guest config."""
    device, disk = ("/dev/hvc0", "/dev/xvda") if role == "guest" else ("/dev/ttyS1", "/dev/vda")
    _install(root, {
        "/etc/fstab": f"{disk} / ext4 errors=remount-ro 0 1\n",
        "/etc/hostname": f"xenlab-{role}\n",
        "/etc/systemd/system/xenlab-agent.service": (FILES / "xenlab-agent.service").read_text().replace(
            "@DEVICE@", device),
    })
    _install(root, {"/usr/local/sbin/xenlab-agent": HERE / "agent.py"}, 0o755)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "xenlab-agent.service").symlink_to("/etc/systemd/system/xenlab-agent.service")
    for unit in ("serial-getty@hvc0.service", "serial-getty@ttyS0.service", "serial-getty@ttyS1.service",
                 "getty@tty1.service"):
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    for name in sorted((FILES / role).rglob("*")):
        if name.is_file():
            _install(root, {"/" + str(name.relative_to(FILES / role)): name},
                     0o755 if "/sbin/" in str(name) else 0o644)
    if role == "guest":
        (wants / "xenlab-echo.service").symlink_to("/etc/systemd/system/xenlab-echo.service")


def build(debs: Path) -> Path:
    """The images for these .debs: from the cache, or built now (about 2 minutes)."""
    key = cache_key(debs)
    images = CACHE / key
    if (images / "ready").exists():
        return images
    check_host()
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.iterdir():
        if stale.is_dir() and stale.name not in ("run", key):
            shutil.rmtree(stale, ignore_errors=True)
    images.mkdir(exist_ok=True)
    archive = mirror()
    log(f"building the dom0 and guest images from {archive} (cached in {images})")
    work = Path(tempfile.mkdtemp(prefix="xenlab-build-", dir=CACHE))
    try:
        roots = {role: work / role for role in ("dom0", "guest")}
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(_mmdebstrap, role, roots[role], debs, archive, images / f"{role}-build.log")
                         for role in roots]:
                done.result()
        for role, root in roots.items():
            _configure(role, root)
        boot = roots["dom0"] / "boot"
        kernel = next(boot.glob("vmlinuz-*"))
        initrd = next(boot.glob("initrd.img-*"))
        shutil.copyfile(kernel, images / "vmlinuz")
        shutil.copyfile(initrd, images / "initrd.img")
        with open(images / "xen", "wb") as out:
            subprocess.run(["gunzip", "-c", str(next(boot.glob("xen-4.17-amd64.gz")))], stdout=out, check=True)
        # the guest boots the guest image's own kernel, which dom0 hands to xl
        guest_boot = roots["guest"] / "boot"
        _install(roots["dom0"], {"/var/lib/xenlab/vmlinuz": next(guest_boot.glob("vmlinuz-*")),
                                 "/var/lib/xenlab/initrd.img": next(guest_boot.glob("initrd.img-*"))})
        for role, root in roots.items():
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", role, "-d", str(root), str(images / f"{role}.img"), "3G"],
                           check=True)
        # guest2: the same template with its own network configuration and name
        _install(roots["guest"], {"/etc/hostname": "xenlab-guest2\n",
                                  "/etc/network/interfaces": FILES / "guest2/etc/network/interfaces"})
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "guest2", "-d", str(roots["guest"]),
                        str(images / "guest2.img"), "3G"], check=True)
        (images / "ready").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return images


# --- running QEMU ---------------------------------------------------------------------------

def running_pid() -> int | None:
    """The pid of the lab's QEMU, if it still runs (checked against its command line)."""
    try:
        pid = int((RUN / "qemu.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(RUN).encode() in cmdline and b"qemu-system" in cmdline else None


def up(debs: Path | None = None) -> None:
    pid = running_pid()
    if pid:
        raise XenLabError(f"a lab runs already (QEMU pid {pid}): `scripts/xen-lab down` first")
    check_host()
    with tempfile.TemporaryDirectory(prefix="xenlab-debs-") as scratch:
        images = build(debs or build_debs(Path(scratch)))
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    (RUN / "images").symlink_to(images)
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", QEMU_CPU, "-smp", "2", "-m", "3072",
        "-display", "none", "-nic", "none", "-no-reboot", "-name", f"xenlab,process=xenlab-{RUN}",
        "-kernel", str(images / "xen"),
        "-append", "dom0_mem=1280M,max:1280M console=com1 com1=115200,8n1 loglvl=warning guest_loglvl=warning",
        "-initrd", f"{images / 'vmlinuz'} root=/dev/vda rw console=hvc0 quiet,{images / 'initrd.img'}",
        "-drive", f"file={images / 'dom0.img'},if=virtio,format=raw,snapshot=on",
        "-drive", f"file={images / 'guest.img'},if=virtio,format=raw,snapshot=on",
        "-drive", f"file={images / 'guest2.img'},if=virtio,format=raw,snapshot=on",
        "-serial", f"file:{RUN / 'console.log'}",
        "-serial", f"unix:{RUN / 'agent.sock'},server=on,wait=off",
    ]
    with open(RUN / "qemu.log", "w") as out:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (RUN / "qemu.pid").write_text(f"{qemu.pid}\n")
    started = time.monotonic()
    try:
        wait_ready("dom0", qemu)
        log(f"dom0 is up ({time.monotonic() - started:.0f} s); starting the lab's network and both guests")
        result = execute("dom0", ["/usr/local/sbin/xenlab-setup"], timeout=300)
        if result["rc"] != 0:
            raise XenLabError(f"dom0's setup failed ({result['rc']}): {result['stdout']}{result['stderr']}")
        wait_ready("guest", qemu)
        wait_ready("guest2", qemu)
        log(f"both guests are up ({time.monotonic() - started:.0f} s); "
            "`scripts/xen-lab exec dom0|guest1|guest2 -- CMD`")
    except BaseException:
        down()
        raise


def wait_ready(role: str, qemu: subprocess.Popen | None = None, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if qemu is not None and qemu.poll() is not None:
            raise XenLabError(f"QEMU ended ({qemu.returncode}); see {RUN / 'qemu.log'} and {RUN / 'console.log'}")
        try:
            if execute(role, ["true"], timeout=10, answer_within=15)["rc"] == 0:
                return
        except XenLabError:
            pass
        time.sleep(2)
    raise XenLabError(f"{role} did not come up within {timeout:.0f} s; see {RUN / 'console.log'}")


def down() -> bool:
    """End the lab's QEMU by its pid; True when one ran."""
    pid = running_pid()
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if running_pid() is None:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (RUN / "qemu.pid").unlink()
    return pid is not None


# --- speaking to the agents -----------------------------------------------------------------

def execute(role: str, argv: list[str], timeout: float = 120, stdin: str = "",
            answer_within: float | None = None) -> dict:
    """Run argv in dom0 or the guest: {"rc", "stdout", "stderr"}."""
    request: dict = {"argv": argv, "timeout": timeout, "stdin": stdin}
    if role in DOMAINS:
        request = {"guest": request, "timeout": timeout, "domain": DOMAINS[role]}
    elif role != "dom0":
        raise XenLabError(f"no such machine {role!r}: dom0, {', '.join(DOMAINS)}")
    ident = uuid.uuid4().hex[:12]
    data = base64.b64encode(json.dumps(request).encode()).decode()
    RUN.mkdir(parents=True, exist_ok=True)
    with open(RUN / "agent.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            channel.connect(str(RUN / "agent.sock"))
        except OSError as error:
            raise XenLabError(f"cannot reach dom0's agent ({error}): is the lab up?") from None
        with channel:
            channel.sendall(f"\r\n@@XL REQ {ident} {data}\r\n".encode())
            deadline = time.monotonic() + (answer_within or timeout + 90)
            buffer = b""
            while time.monotonic() < deadline:
                channel.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    chunk = channel.recv(1 << 16)
                except socket.timeout:
                    break
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
                for line in complete:
                    at = line.find(b"@@XL RES " + ident.encode() + b" ")
                    if at >= 0:
                        payload = line[at:].split()[3]
                        return json.loads(base64.b64decode(payload))
    raise XenLabError(f"{role} did not answer {argv[:3]} in time")


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/xen-lab", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    start = verbs.add_parser("up", help="build the images if needed, boot Xen, start the guest; leave it running")
    start.add_argument("--debs", type=Path, help="the .debs to install (default: built from this checkout)")
    run = verbs.add_parser("exec", help="run a command in dom0 or a guest: exec dom0 -- ip addr "
                                        "(guest is guest1)")
    run.add_argument("role", choices=("dom0", *DOMAINS))
    run.add_argument("--timeout", type=float, default=300)
    run.add_argument("command", nargs=argparse.REMAINDER)
    verbs.add_parser("down", help="end the lab's QEMU")
    verbs.add_parser("status", help="is a lab running?")
    args = parser.parse_args(argv)
    try:
        if args.verb == "up":
            up(args.debs.resolve() if args.debs else None)
        elif args.verb == "down":
            log("QEMU ended" if down() else "no lab was running")
        elif args.verb == "status":
            pid = running_pid()
            print(f"running: QEMU pid {pid}, console log {RUN / 'console.log'}" if pid else "not running")
            return 0 if pid else 3
        else:
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec: no command (exec dom0 -- COMMAND ...)")
            result = execute(args.role, command, timeout=args.timeout)
            sys.stdout.write(result["stdout"])
            sys.stderr.write(result["stderr"])
            return int(result["rc"])
    except XenLabError as error:
        log(str(error))
        return 2
    except KeyboardInterrupt:
        down()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
