#!/usr/bin/env bash
# Network namespaces for a simulated multi-host coordinator cluster (needs root and iproute2).
#
#   netns-cluster.sh up K N        namespaces gtK-n1..gtK-nN; node i answers at 10.77.K.i
#   netns-cluster.sh cut K I J     drop all traffic between nodes I and J (both ways)
#   netns-cluster.sh heal K I J    restore it
#   netns-cluster.sh down K N      remove everything `up` made
#
# Every pair of nodes has its own veth link and every node one link to the host, so no packet is
# ever forwarded by the host (whose FORWARD policy Docker sets to DROP). Node addresses live on
# each namespace's loopback (and, because IPv4 wants one, on each of its links); routes say which link leads to whom. A cut replaces the route with
# a blackhole on both sides, so the host (tests, agents) still reaches every node.
set -euo pipefail

cmd=${1:?usage: netns-cluster.sh up|down|cut|heal K ...}
k=${2:?K (1-250)}
ns() { echo "gt$k-n$1"; }
addr() { echo "10.77.$k.$1"; }

case "$cmd" in
up)
  n=${3:?N}
  for i in $(seq 1 "$n"); do
    ip netns add "$(ns "$i")"
    ip -n "$(ns "$i")" link set lo up
    ip -n "$(ns "$i")" addr add "$(addr "$i")/32" dev lo
    # host link: gtKhI on the host, "host" inside
    ip link add "gt${k}h$i" type veth peer name "gt${k}h${i}p"
    ip link set "gt${k}h${i}p" netns "$(ns "$i")"
    ip -n "$(ns "$i")" link set "gt${k}h${i}p" name host
    ip -n "$(ns "$i")" link set host up
    # IPv4 drops packets on a link without any IPv4 address: give each end one.
    ip -n "$(ns "$i")" addr add "$(addr "$i")/32" dev host
    ip addr add "$(addr 254)/32" dev "gt${k}h$i"
    ip link set "gt${k}h$i" up
    ip route add "$(addr "$i")/32" dev "gt${k}h$i" src "$(addr 254)"
    # replies to the host's own addresses go back over the host link
    ip -n "$(ns "$i")" route add default dev host
  done
  for i in $(seq 1 "$n"); do
    for j in $(seq $((i + 1)) "$n"); do
      ip link add "gt${k}m${i}x$j" type veth peer name "gt${k}m${j}x$i"
      ip link set "gt${k}m${i}x$j" netns "$(ns "$i")"
      ip link set "gt${k}m${j}x$i" netns "$(ns "$j")"
      ip -n "$(ns "$i")" link set "gt${k}m${i}x$j" name "to$j"
      ip -n "$(ns "$j")" link set "gt${k}m${j}x$i" name "to$i"
      ip -n "$(ns "$i")" addr add "$(addr "$i")/32" dev "to$j"
      ip -n "$(ns "$j")" addr add "$(addr "$j")/32" dev "to$i"
      ip -n "$(ns "$i")" link set "to$j" up
      ip -n "$(ns "$j")" link set "to$i" up
      ip -n "$(ns "$i")" route add "$(addr "$j")/32" dev "to$j" src "$(addr "$i")"
      ip -n "$(ns "$j")" route add "$(addr "$i")/32" dev "to$i" src "$(addr "$j")"
    done
  done
  ;;
cut)
  i=${3:?I}; j=${4:?J}
  ip -n "$(ns "$i")" route replace blackhole "$(addr "$j")/32"
  ip -n "$(ns "$j")" route replace blackhole "$(addr "$i")/32"
  ;;
heal)
  i=${3:?I}; j=${4:?J}
  ip -n "$(ns "$i")" route replace "$(addr "$j")/32" dev "to$j" src "$(addr "$i")"
  ip -n "$(ns "$j")" route replace "$(addr "$i")/32" dev "to$i" src "$(addr "$j")"
  ;;
down)
  n=${3:?N}
  for i in $(seq 1 "$n"); do
    ip link del "gt${k}h$i" 2>/dev/null || true
    ip netns del "$(ns "$i")" 2>/dev/null || true
  done
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
