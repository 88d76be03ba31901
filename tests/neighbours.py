"""The coexistence lab's neighbours (tests/netns/test_coexistence.py, test_watch.py): a container
behind a Docker-style bridge and a tunnel peer, in namespaces of their own beside the lab's."""

import subprocess
import sys
import uuid

from tests.labs import NICS, OUTSIDE4

GUEST4 = [nic.address for nic in NICS if nic.version == 4]
GUEST6 = [nic.address for nic in NICS if nic.version == 6]
CONTAINER4, CONTAINER6 = "172.17.0.2", "fd00:172:17::2"
PEER, BEHIND_PEER = "10.99.0.2", "10.98.0.5"

TCP_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.socket(family)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
server.settimeout(15)
print("listening", flush=True)
connection, peer = server.accept()
connection.sendall(f"hello {peer[0]}".encode())
connection.close()
"""

TCP_CLIENT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
client = socket.socket(family)
client.settimeout(5)
if len(sys.argv) > 3:
    client.bind((sys.argv[3], 0))
client.connect((sys.argv[1], int(sys.argv[2])))
print(client.recv(100).decode())
"""


class Neighbours:
    """The container and the tunnel peer, in namespaces of their own beside the lab's."""

    def __init__(self, lab):
        self.lab = lab
        tag = uuid.uuid4().hex[:8]
        self.ns = {"ctr": f"dn-{tag}-ctr", "peer": f"dn-{tag}-peer"}
        self.created = []

    def run(self, role, *command, check=True, timeout=30):
        if role in self.ns:
            argv = ["ip", "netns", "exec", self.ns[role], *command]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
            if check:
                assert result.returncode == 0, f"{argv}: {result.stderr}"
            return result
        return self.lab.run(role, *command, check=check, timeout=timeout)

    def create(self):
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
            self.created.append(name)
        self.lab.batch("guest", [
            "link add docker0 type bridge",
            "addr add 172.17.0.1/16 dev docker0",
            "addr add fd00:172:17::1/64 dev docker0 nodad",
            "link set docker0 up",
            f"link add vethc type veth peer name eth0 netns {self.ns['ctr']}",
            "link set vethc master docker0",
            "link set vethc up",
            f"link add wg0 type veth peer name eth0 netns {self.ns['peer']}",
            "addr add 10.99.0.1/16 dev wg0",
            "link set wg0 up",
            f"route add 10.98.0.0/16 via {PEER} dev wg0",
        ])
        for role, lines in {
            "ctr": [f"addr add {CONTAINER4}/16 dev eth0", f"addr add {CONTAINER6}/64 dev eth0 nodad",
                    "link set eth0 up", "link set lo up", "route add default via 172.17.0.1",
                    "route add default via fd00:172:17::1"],
            "peer": [f"addr add {PEER}/16 dev eth0", f"addr add {BEHIND_PEER}/32 dev lo", "link set eth0 up",
                     "link set lo up", "route add default via 10.99.0.1"],
        }.items():
            for line in lines:
                self.run(role, "ip", *line.split())
        self.lab.sysctl("guest", ["net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1",
                                  "net/ipv4/conf/docker0/rp_filter=1", "net/ipv4/conf/wg0/rp_filter=1"])
        self.lab.run("guest", "nft", "add table ip lab-nat; add chain ip lab-nat post { type nat hook postrouting "
                     'priority 100; }; add rule ip lab-nat post oifname "eth*" masquerade')
        return self

    def destroy(self):
        for name in self.created:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    def ping(self, role, address, source=None, tries=3):
        argv = ["ping", "-n", "-q", "-c", "1", "-W", "2", *(["-I", source] if source else []), address]
        return any(self.run(role, *argv, check=False).returncode == 0 for _ in range(tries))

    def tcp(self, server_role, listen, client_role, connect, source=None, port=8080, connect_port=None):
        """A TCP connection, accepted and answered; the server says whom it saw."""
        server = subprocess.Popen(self._argv(server_role, "-c", TCP_SERVER, listen, str(port)), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert server.stdout.readline().strip() == "listening", server.stderr.read()
            client = self.run(client_role, sys.executable, "-c", TCP_CLIENT, connect, str(connect_port or port),
                              *([source] if source else []), check=False)
            return client.returncode == 0 and client.stdout.startswith("hello")
        finally:
            server.kill()
            server.wait()

    def _argv(self, role, *args):
        ns = self.ns.get(role) or self.lab.ns[role]
        return ["ip", "netns", "exec", ns, sys.executable, *args]

    def paths(self, tries=3):
        """Every path the issue names, as name -> does it work."""
        results = {}
        for address in GUEST4 + GUEST6:
            results[f"container -> {address}"] = self.ping("ctr", address, tries=tries)
        for address in GUEST4:
            results[f"peer -> {address}"] = self.ping("peer", address, tries=tries)
            results[f"{address} -> behind the peer (static route)"] = self.ping("guest", BEHIND_PEER, address,
                                                                                tries=tries)
            results[f"{address} -> container"] = self.ping("guest", CONTAINER4, address, tries=tries)
        results["container -> outside (NAT)"] = self.ping("ctr", OUTSIDE4, tries=tries)
        return results
