#!/bin/sh
# Creates the ipsets and the iptables/ip6tables chain that contrib/exec/ipset.toml fills.
# Run as root once, and again at boot (ipsets and iptables rules are not persistent by
# themselves; ipset-persistent/netfilter-persistent can save them). Safe to run again.
#
#   usage: ipset-setup.sh TCP_PORTS [UDP_PORTS]      e.g. ipset-setup.sh 22,443 51820
#
# For each protected port: banned source -> drop; established/related -> accept;
# (source, protocol, port) in capyknock4/6 -> accept; anything else -> drop. And UDP to any port
# in the capyknock-knock set (the knock ports, which the daemon adds at start) -> drop, first.
set -eu

tcp_ports=${1:?usage: $0 TCP_PORTS [UDP_PORTS]}
udp_ports=${2:-}

ipset -exist create capyknock4 hash:ip,port family inet timeout 0
ipset -exist create capyknock6 hash:ip,port family inet6 timeout 0
ipset -exist create capyknock-ban4 hash:ip family inet timeout 0
ipset -exist create capyknock-ban6 hash:ip family inet6 timeout 0
ipset -exist create capyknock-knock bitmap:port range 0-65535

for v in 4 6; do
    if [ "$v" = 4 ]; then ipt=iptables; else ipt=ip6tables; fi
    "$ipt" -N capyknock 2>/dev/null || "$ipt" -F capyknock
    "$ipt" -A capyknock -m set --match-set "capyknock-ban$v" src -j DROP
    "$ipt" -A capyknock -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    "$ipt" -A capyknock -m set --match-set "capyknock$v" src,dst -j ACCEPT
    "$ipt" -A capyknock -j DROP
    "$ipt" -C INPUT -p udp -m set --match-set capyknock-knock dst -j DROP 2>/dev/null ||
        "$ipt" -I INPUT -p udp -m set --match-set capyknock-knock dst -j DROP
    for spec in "tcp:$tcp_ports" "udp:$udp_ports"; do
        proto=${spec%%:*}
        ports=${spec#*:}
        [ -n "$ports" ] || continue
        "$ipt" -C INPUT -p "$proto" -m multiport --dports "$ports" -j capyknock 2>/dev/null ||
            "$ipt" -I INPUT -p "$proto" -m multiport --dports "$ports" -j capyknock
    done
done
