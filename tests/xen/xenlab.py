"""Real Xen for the test suite: a Xen dom0 and two Debian PV guests under QEMU (TCG), started at
the same time, four routed vifs each. dom0 and each guest run the Debian release asked for:
by default a Debian 13 dom0 (Xen 4.20) with a Debian 13 and a Debian 12 guest.

    scripts/xen-lab up [--dom0 trixie|bookworm] [--guests trixie,bookworm] [--debs DIR]
        build the images (cached), boot, start both guests (`--guests bookworm`: both Debian 12;
        `--guests trixie:netplan,trixie:networkmanager`: what configures each guest's NICs,
        ifupdown where none is named)
    scripts/xen-lab build [same options]   only build the images (scripts/test, ahead of the suite)
    scripts/xen-lab exec dom0|guest1|guest2 -- COMMAND ...   (guest is guest1)
    scripts/xen-lab status | down

Images are built with mmdebstrap from Debian's archive (each release with its updates and
security archives) and cached under /var/tmp/domunet-xen-lab/<key>, the key being a hash of
the recipe (this folder), the .debs under test, the releases and each release's versions of
Xen, the kernel, systemd, Python and the network tools (read with apt in a private state). QEMU runs with
no network at all (`-nic none`): the lab's network lives inside dom0, in namespaces there,
as in the namespace lab. The host speaks to dom0's agent over QEMU's second serial port (a
unix socket); dom0's agent reaches a guest's over its Xen console. A guest's image is its
release's template with its own /etc/network/interfaces (files/guest, files/guest2) and host
name. Every QEMU this starts is ended by its pid: by `down`, and by `up` itself on failure or
Ctrl-C.
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
#: Debian's releases the lab builds, the Xen each one's dom0 runs, and that Xen's extra options.
#: Debian 13's dom0 kernel (6.12) under TCG with two vcpus died in its first minutes of traffic
#: ("Oops: int3" in __netif_receive_skb_core: a static branch patched while the other vcpu ran
#: it): its dom0 gets one vcpu (the guests have one each anyway).
RELEASES = {"bookworm": {"number": "12", "xen": "4.17", "options": ""},
            "trixie": {"number": "13", "xen": "4.20", "options": " dom0_max_vcpus=1"}}
DEFAULT_DOM0, DEFAULT_GUESTS = "trixie", ("trixie", "bookworm")
#: which of the .debs under test each image gets, installed with apt as a template would
DEBS = {"guest": ("domunet-common", "domunet"), "dom0": ("domunet-common", "domunet-dom0")}
HOST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs",
              "dpkg-scanpackages": "dpkg-dev"}
QEMU_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+svm"  # what boots Xen 4.17 and 4.20 and a PV dom0 under TCG
BOOT_TIMEOUT = 600  # under TCG, on a busy 2-core machine, a guest has taken 6.5 minutes to finish booting
#: What configures a guest's NICs, and the packages its image gets for it. One configuration
#: for all: the guest's /etc/network/interfaces (files/guest*), rendered for netplan (to
#: systemd-networkd) or as NetworkManager keyfiles where the guest runs that stack. ifupdown
#: gets its DHCP client (dhclient, its first choice; the others have their own).
STACKS = {"ifupdown": "isc-dhcp-client", "netplan": "netplan.io", "networkmanager": "network-manager"}
#: The lab's guests as the tests and `exec` name them -> their Xen domain names (`guest` is guest1).
DOMAINS = {"guest": "guest", "guest1": "guest", "guest2": "guest2"}
#: each guest's image, by its domain name (`phy:` disks in files/dom0/etc/xen: /dev/vdb, /dev/vdc)
GUESTS = ("guest", "guest2")


class XenLabError(Exception):
    pass


def log(message: str) -> None:
    print(f"xen-lab: {message}", file=sys.stderr, flush=True)


class Lab:
    """Which Debian release dom0 and each guest run, and what configures each guest's NICs:
    `--dom0 trixie --guests trixie,bookworm:netplan` (ifupdown where no stack is named). One guest
    entry is both guests'."""

    def __init__(self, dom0: str = DEFAULT_DOM0, guests: tuple[str, ...] = DEFAULT_GUESTS) -> None:
        if len(guests) == 1:
            guests = guests * len(GUESTS)
        if len(guests) != len(GUESTS):
            raise XenLabError(f"--guests: one release, or one for each of the {len(GUESTS)} guests")
        releases, stacks = [], []
        for entry in guests:
            release, _, stack = entry.partition(":")
            if stack and stack not in STACKS:
                raise XenLabError(f"no such network stack {stack!r}: {', '.join(STACKS)}")
            releases.append(release)
            stacks.append(stack or "ifupdown")
        for release in (dom0, *releases):
            if release not in RELEASES:
                raise XenLabError(f"no such release {release!r}: {', '.join(RELEASES)}")
        self.dom0, self.guests = dom0, dict(zip(GUESTS, releases))
        self.stacks = dict(zip(GUESTS, stacks))

    @classmethod
    def parse(cls, dom0: str | None, guests: str | None) -> Lab:
        return cls(dom0 or DEFAULT_DOM0, tuple(guests.split(",")) if guests else DEFAULT_GUESTS)

    @classmethod
    def from_environment(cls) -> Lab:
        """The test suite's lab: DOMUNET_XEN_DOM0 and DOMUNET_XEN_GUESTS (scripts/test --xen-bookworm)."""
        return cls.parse(os.environ.get("DOMUNET_XEN_DOM0"), os.environ.get("DOMUNET_XEN_GUESTS"))

    @property
    def releases(self) -> list[str]:
        return sorted({self.dom0, *self.guests.values()})

    @property
    def templates(self) -> list[tuple[str, str]]:
        """The guest images' templates: one per release and stack."""
        return sorted({(release, self.stacks[name]) for name, release in self.guests.items()})

    def describe(self) -> str:
        guests = ", ".join(f"{name}: Debian {RELEASES[r]['number']} ({r}){_with(self.stacks[name])}"
                           for name, r in self.guests.items())
        return f"dom0: Debian {RELEASES[self.dom0]['number']} ({self.dom0}), Xen {RELEASES[self.dom0]['xen']}; {guests}"

    def as_dict(self) -> dict:
        shown: dict = {"dom0": self.dom0, "guests": self.guests}
        if set(self.stacks.values()) != {"ifupdown"}:  # today's labs keep their cache key
            shown["stacks"] = self.stacks
        return shown


def _with(stack: str) -> str:
    return "" if stack == "ifupdown" else f" with {stack}"


def packages(role: str, release: str, stack: str = "ifupdown") -> str:
    if role == "guest":
        return f"{PACKAGES_BOTH} {STACKS[stack]}".strip()
    xen = RELEASES[release]["xen"]
    return f"{PACKAGES_BOTH} nftables dnsmasq-base xen-hypervisor-{xen}-amd64 xen-utils-{xen}"


# --- building the images --------------------------------------------------------------------

def mirror() -> str:
    """The Debian archive this machine's apt uses (its URI serves every release)."""
    found = subprocess.run([str(SOURCE / "scripts" / "debian-mirror")], capture_output=True, text=True)
    if found.returncode != 0:
        raise XenLabError(f"no Debian archive to build the images from: {found.stderr.strip()}")
    return found.stdout.strip()


def sources(release: str, archive: str) -> list[str]:
    """A release as an admin installs it: with its updates and its security archive."""
    security = archive.rsplit("/", 1)[0] + "/debian-security"
    return [f"deb {archive} {release} main", f"deb {archive} {release}-updates main",
            f"deb {security} {release}-security main"]


def candidates(release: str, archive: str, names: list[str]) -> str:
    """The versions the archive has now for these packages of a release (apt-cache policy in a
    private apt state, so the host's apt is untouched): what goes into the cache key."""
    state = CACHE / "apt" / release
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text("\n".join(sources(release, archive)) + "\n")
    options = ["-o", f"Dir::State={state}", "-o", f"Dir::State::Lists={state / 'lists'}",
               "-o", f"Dir::Cache={state}", "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
               "-o", "Dir::Etc::SourceParts=-", "-o", "Dir::Etc::Preferences=-", "-o", "Dir::Etc::PreferencesParts=-",
               "-o", f"Dir::State::status={state / 'status'}"]
    (state / "status").touch()
    update = subprocess.run(["apt-get", *options, "-qq", "update"], capture_output=True, text=True)
    if update.returncode != 0:
        raise XenLabError(f"apt cannot read Debian {release}'s archive {archive}: {update.stderr.strip()[-800:]}")
    policy = subprocess.run(["apt-cache", *options, "policy", *names], capture_output=True, text=True).stdout
    found = {}
    name = ""
    for line in policy.splitlines():
        if line and not line.startswith(" "):
            name = line.rstrip(":")
        elif "Candidate:" in line:
            found[name] = line.split()[-1]
    missing = [n for n in names if found.get(n) in (None, "(none)")]
    if missing:
        raise XenLabError(f"Debian {release}'s archive has no {', '.join(missing)}")
    return " ".join(f"{n}={found[n]}" for n in names)


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


def cache_key(lab: Lab, debs: Path, archive: str) -> str:
    """The recipe (this folder), the .debs under test, which release each machine runs and the
    archive's versions of what matters in each (kernel, Xen, systemd, pyroute2, the network tools)."""
    digest = hashlib.sha256()
    recipe = [HERE / "xenlab.py", HERE / "agent.py", *FILES.rglob("*")]  # not the tests: they need no rebuild
    for path in sorted([*recipe, *debs.glob("*.deb")]):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(lab.as_dict(), sort_keys=True).encode())
    for release in lab.releases:
        xen = RELEASES[release]["xen"]
        versioned = ["linux-image-amd64", "systemd", "python3", "python3-pyroute2", "ifupdown", "iproute2",
                     "nftables", "xenstore-utils"]
        if release == lab.dom0:
            versioned += [f"xen-hypervisor-{xen}-amd64", f"xen-utils-{xen}"]
        digest.update(f"{release}: {candidates(release, archive, versioned)}\n".encode())
    return digest.hexdigest()[:16]


def _mmdebstrap(role: str, release: str, root: Path, debs: Path, archive: str, logfile: Path,
                stack: str = "ifupdown") -> None:
    wanted = [str(next(debs.glob(f"{name}_*_all.deb"))) for name in DEBS[role]]
    local = " ".join(f"/tmp/debs/{Path(p).name}" for p in wanted)
    enable = ["--customize-hook=chroot \"$1\" systemctl enable systemd-networkd.service"] if stack == "netplan" else []
    argv = [
        "mmdebstrap", "--variant=minbase", f"--include={packages(role, release, stack)}", *enable,
        "--customize-hook=mkdir -p \"$1/tmp/debs\"",
        f"--customize-hook=copy-in {' '.join(wanted)} /tmp/debs",
        f"--customize-hook=chroot \"$1\" apt-get install -y --no-install-recommends {local}",
        "--customize-hook=rm -rf \"$1/tmp/debs\"",
        release, str(root), *sources(release, archive),
    ]
    with open(logfile, "w") as out:
        if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            raise XenLabError(f"mmdebstrap of the {release} {role} image failed; see {logfile}")


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
    """What the template's admin set up: fstab, consoles, the agent; the guest's
    /etc/network/interfaces (no domunet configuration at all); dom0's guest configs."""
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


def parse_interfaces(text: str) -> dict[str, dict[str, str]]:
    """The lab's /etc/network/interfaces (static and DHCP stanzas), per NIC: family, address,
    gateway; a DHCP NIC has `dhcp` instead of an address."""
    nics: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["iface"] and words[1] != "lo":
            current = nics.setdefault(words[1], {"family": words[2]})
            if words[3:4] == ["dhcp"]:
                current["dhcp"] = "yes"
        elif words[:1] == ["iface"]:
            current = None
        elif current is not None and len(words) == 2 and words[0] in ("address", "gateway"):
            current[words[0]] = words[1]
    return nics


def stack_files(stack: str, interfaces: str) -> dict[str, str]:
    """The guest's own network configuration for its stack, rendered from its interfaces file:
    ifupdown takes that file; netplan a YAML file (rendered to systemd-networkd at boot), with
    only loopback left to ifupdown; NetworkManager a keyfile per NIC, loopback as before."""
    if stack == "ifupdown":
        return {"/etc/network/interfaces": interfaces}
    loopback = "auto lo\niface lo inet loopback\n"
    nics = parse_interfaces(interfaces)
    if stack == "netplan":
        lines = ["network:", "  version: 2", "  renderer: networkd", "  ethernets:"]
        for name, nic in nics.items():
            address = "dhcp4: true" if "dhcp" in nic else f"addresses: [\"{nic['address']}\"]"
            lines += [f"    {name}:", f"      {address}", "      accept-ra: false"]
            if "gateway" in nic:
                lines.append(f"      routes: [{{to: default, via: \"{nic['gateway']}\"}}]")
        return {"/etc/netplan/50-xenlab.yaml": "\n".join(lines) + "\n", "/etc/network/interfaces": loopback}
    files = {"/etc/network/interfaces": loopback}
    for name, nic in nics.items():
        address = nic.get("address", "") + (f",{nic['gateway']}" if "gateway" in nic else "")
        ipv4, ipv6 = ((f"method=manual\naddress1={address}", "method=ignore") if nic["family"] == "inet"
                      else ("method=disabled", f"method=manual\naddress1={address}"))
        if "dhcp" in nic:
            ipv4, ipv6 = "method=auto", "method=ignore"
        files[f"/etc/NetworkManager/system-connections/{name}.nmconnection"] = (
            f"[connection]\nid={name}\ntype=ethernet\ninterface-name={name}\n\n[ipv4]\n{ipv4}\n\n[ipv6]\n{ipv6}\n")
    return files


def _image(root: Path, label: str, image: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(root), str(image), "3G"], check=True)


def build(lab: Lab, debs: Path) -> Path:
    """The images for this lab and these .debs: from the cache, or built now (about 2 minutes):
    dom0's, and each guest's from its release's template (guest2's has its own
    /etc/network/interfaces, files/guest2, and host name)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time: a second waits and finds it cached
        return _build(lab, debs)


def _build(lab: Lab, debs: Path) -> Path:
    archive = mirror()
    key = cache_key(lab, debs, archive)
    images = CACHE / key
    if (images / "ready").exists():
        return images
    check_host()
    built = sorted((p for p in CACHE.iterdir() if p.is_dir() and p.name not in ("run", "apt", key)),
                   key=lambda p: p.stat().st_mtime)
    for stale in built[:-2]:  # the two labs built last stay (a bookworm and a trixie dom0, say)
        shutil.rmtree(stale, ignore_errors=True)
    images.mkdir(exist_ok=True)
    log(f"building the images from {archive} ({lab.describe()}; cached in {images})")
    work = Path(tempfile.mkdtemp(prefix="xenlab-build-", dir=CACHE))
    try:
        roots = {("dom0", lab.dom0, ""): work / f"dom0-{lab.dom0}"}
        roots.update({("guest", release, stack): work / f"guest-{release}-{stack}"
                      for release, stack in lab.templates})
        with ThreadPoolExecutor(len(roots)) as pool:
            for done in [pool.submit(_mmdebstrap, role, release, root, debs, archive,
                                     images / f"{role}-{release}{stack and '-' + stack}-build.log",
                                     stack or "ifupdown")
                         for (role, release, stack), root in roots.items()]:
                done.result()
        for (role, _, _), root in roots.items():
            _configure(role, root)
        dom0 = roots[("dom0", lab.dom0, "")]
        boot = dom0 / "boot"
        shutil.copyfile(next(boot.glob("vmlinuz-*")), images / "vmlinuz")
        shutil.copyfile(next(boot.glob("initrd.img-*")), images / "initrd.img")
        hypervisor = next(boot.glob(f"xen-{RELEASES[lab.dom0]['xen']}*-amd64.gz"))
        with open(images / "xen", "wb") as out:
            subprocess.run(["gunzip", "-c", str(hypervisor)], stdout=out, check=True)
        # each guest boots its own release's kernel, which dom0 hands to xl
        for name, release in lab.guests.items():
            guest_boot = roots[("guest", release, lab.stacks[name])] / "boot"
            _install(dom0, {f"/var/lib/xenlab/{name}/vmlinuz": next(guest_boot.glob("vmlinuz-*")),
                            f"/var/lib/xenlab/{name}/initrd.img": next(guest_boot.glob("initrd.img-*"))})
        _image(dom0, "dom0", images / "dom0.img")
        for name, release in lab.guests.items():
            template = roots[("guest", release, lab.stacks[name])]
            own = FILES / name / "etc/network/interfaces"
            interfaces = (own if own.exists() else FILES / "guest/etc/network/interfaces").read_text()
            _install(template, {"/etc/hostname": f"xenlab-{name}\n"})
            files = stack_files(lab.stacks[name], interfaces)
            _install(template, {"/etc/network/interfaces": files.pop("/etc/network/interfaces")})
            _install(template, files, 0o600)  # netplan and NetworkManager want their files root's alone
            _image(template, name, images / f"{name}.img")
        (images / "lab.json").write_text(json.dumps(lab.as_dict()) + "\n")
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


def up(lab: Lab, debs: Path | None = None) -> None:
    pid = running_pid()
    if pid:
        raise XenLabError(f"a lab runs already (QEMU pid {pid}): `scripts/xen-lab down` first")
    check_host()
    with tempfile.TemporaryDirectory(prefix="xenlab-debs-") as scratch:
        images = build(lab, debs or build_debs(Path(scratch)))
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    (RUN / "images").symlink_to(images)
    log(f"starting {lab.describe()}")
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", QEMU_CPU, "-smp", "2", "-m", "3072",
        "-display", "none", "-nic", "none", "-no-reboot", "-name", f"xenlab,process=xenlab-{RUN}",
        "-kernel", str(images / "xen"),
        "-append", "dom0_mem=1280M,max:1280M console=com1 com1=115200,8n1 loglvl=warning guest_loglvl=warning"
                   + RELEASES[lab.dom0]["options"],
        "-initrd", f"{images / 'vmlinuz'} root=/dev/vda rw console=hvc0 quiet,{images / 'initrd.img'}",
        "-drive", f"file={images / 'dom0.img'},if=virtio,format=raw,snapshot=on",
        *(arg for name in GUESTS for arg in ("-drive", f"file={images / name}.img,if=virtio,format=raw,snapshot=on")),
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
        for name in GUESTS:
            wait_booted(name, qemu)
        log(f"both guests are up ({time.monotonic() - started:.0f} s); "
            "`scripts/xen-lab exec dom0|guest1|guest2 -- CMD`")
    except BaseException:
        down()
        raise


def running_lab() -> Lab:
    """The releases of the lab that runs (or ran last)."""
    shown = json.loads((RUN / "images" / "lab.json").read_text())
    stacks = shown.get("stacks", {})
    return Lab(shown["dom0"], tuple(shown["guests"][name] + (f":{stacks[name]}" if name in stacks else "")
                                    for name in GUESTS))


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


def wait_booted(role: str, qemu: subprocess.Popen | None = None, timeout: float = BOOT_TIMEOUT) -> None:
    """The machine's agent answers (it starts early) and systemd has finished booting it: under
    TCG a guest's boot runs minutes past the agent (udev settle, ifupdown's hooks)."""
    deadline = time.monotonic() + timeout
    wait_ready(role, qemu, timeout)
    left = max(30.0, deadline - time.monotonic())
    state = execute(role, ["systemctl", "is-system-running", "--wait"], timeout=left)
    if state["stdout"].strip() not in ("running", "degraded"):
        raise XenLabError(f"{role} did not finish booting: systemd says {state['stdout'].strip()!r}")


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
    start = verbs.add_parser("up", help="build the images if needed, boot Xen, start both guests; leave it running")
    prepare = verbs.add_parser("build", help="only build the images (cached), as `up` would: scripts/test "
                                             "does it while other suites run")
    for verb in (start, prepare):
        verb.add_argument("--debs", type=Path, help="the .debs to install (default: built from this checkout)")
        verb.add_argument("--dom0", choices=RELEASES, default=DEFAULT_DOM0,
                          help=f"dom0's Debian release (default {DEFAULT_DOM0})")
        verb.add_argument("--guests", default=",".join(DEFAULT_GUESTS), metavar="RELEASE[:STACK][,...]",
                          help=f"guest1's and guest2's releases, or one for both, each with the network "
                               f"stack that configures it ({', '.join(STACKS)}; default ifupdown) (default "
                               f"{','.join(DEFAULT_GUESTS)})")
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
            up(Lab.parse(args.dom0, args.guests), args.debs.resolve() if args.debs else None)
        elif args.verb == "build":
            check_host()
            with tempfile.TemporaryDirectory(prefix="xenlab-debs-") as scratch:
                debs = args.debs.resolve() if args.debs else build_debs(Path(scratch))
                log(f"images ready: {build(Lab.parse(args.dom0, args.guests), debs)}")
        elif args.verb == "down":
            log("QEMU ended" if down() else "no lab was running")
        elif args.verb == "status":
            pid = running_pid()
            print(f"running: {running_lab().describe()}; QEMU pid {pid}, console log {RUN / 'console.log'}"
                  if pid else "not running")
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
