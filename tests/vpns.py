"""The route shapes real VPN clients put in main (shared/FACTS.md), for the unit and namespace tests."""

#: WireGuard clients' "exclude private IPs" AllowedIPs: all public IPv4 space, as routes through wg0.
WIREGUARD_PUBLIC4 = [
    "0.0.0.0/5", "8.0.0.0/7", "11.0.0.0/8", "12.0.0.0/6", "16.0.0.0/4", "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/3",
    "160.0.0.0/5", "168.0.0.0/6", "172.0.0.0/12", "172.32.0.0/11", "172.64.0.0/10", "172.128.0.0/9", "173.0.0.0/8",
    "174.0.0.0/7", "176.0.0.0/4", "192.0.0.0/9", "192.128.0.0/11", "192.160.0.0/13", "192.169.0.0/16",
    "192.170.0.0/15", "192.172.0.0/14", "192.176.0.0/12", "192.192.0.0/10", "193.0.0.0/8", "194.0.0.0/7",
    "196.0.0.0/6", "200.0.0.0/5", "208.0.0.0/4"]
#: ... and its IPv6 halves
WIREGUARD_HALVES6 = ["::/1", "8000::/1"]
#: OpenVPN's `redirect-gateway def1 ipv6`
OPENVPN_DEF1_IPV6 = ["0.0.0.0/1", "128.0.0.0/1", "2000::/4", "3000::/4", "fc00::/7"]
