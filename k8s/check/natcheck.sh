#!/bin/sh
# In-cluster NAT traversal check (k8s/check/job.yaml): build two hosts behind symmetric NATs with the
# NAT lab, give its emulated internet a way out through this pod, run a mesh node on each host against
# the deployed bootstrap and relay, and ping one from the other by PeerId. Exit 0 when the ping gets
# through (its "via" is printed: a relay, since two symmetric NATs do not punch), 1 otherwise.
set -eu
P="${COREMESH_CHECK_PREFIX:-k8scheck}"  # the NAT lab run's prefix (its namespaces are P-NAME)
UPLINK_IP=192.0.2.1
BOOTSTRAP="${COREMESH_CHECK_BOOTSTRAP:?}"
RELAY_HOST="${COREMESH_CHECK_RELAY_HOST:?}"
KEYED_HOST="${COREMESH_CHECK_KEYED_RELAY_HOST:?}"
say() { echo "natcheck: $*"; }
W=$(mktemp -d /tmp/natcheck.XXXXXX)  # the nodes' data dirs and logs
# Names resolve here, in the pod; the emulated hosts get addresses.
resolve() { getent ahostsv4 "$1" | awk 'NR == 1 { print $1 }'; }
boot_host=${BOOTSTRAP%:*}
boot_ip=$(resolve "$boot_host")
relay_ip=$(resolve "$RELAY_HOST")
keyed_ip=$(resolve "$KEYED_HOST")
[ -n "$boot_ip" ] && [ -n "$relay_ip" ] && [ -n "$keyed_ip" ] || { say "cannot resolve the services"; exit 1; }
say "bootstrap $boot_ip:${BOOTSTRAP##*:}, STUN $relay_ip:3478, keyed relay tcp://$keyed_ip:8443"

# The container runtime mounts /proc/sys read-only; the NAT lab writes sysctls in its namespaces.
mount -o remount,rw /proc/sys 2>/dev/null || true
mkdir -p /run/netns
coremesh-natlab up "$(dirname "$0")/natcheck.toml" --prefix "$P"
cleanup() {
    for pid in $(cat "$W/pids" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    coremesh-natlab down "$P" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The uplink, by hand (the NAT lab has no way out of its emulated internet yet): a veth from this
# pod's network namespace into the internet's switch, the routers' default route through it, and the
# pod masquerading the emulated internet behind its own IP.
ip link add cmup0 type veth peer name up0 netns "$P-sw-internet"
ip -n "$P-sw-internet" link set up0 master br0 up
ip addr add "$UPLINK_IP/24" dev cmup0
ip link set cmup0 up
echo 1 > /proc/sys/net/ipv4/ip_forward
iptables -t nat -A POSTROUTING -s 192.0.2.0/24 ! -o cmup0 -j MASQUERADE
for router in nat_a nat_b; do ip -n "$P-$router" route replace default via "$UPLINK_IP"; done

: > "$W/pids"
for host in a b; do
    coremesh-natlab exec --prefix "$P" "$host" -- coremesh-node --listen 0.0.0.0:7946 \
        --data-dir "$W/$host" --admin 127.0.0.1:7947 --bootstrap "$boot_ip:${BOOTSTRAP##*:}" \
        --stun-server "$relay_ip:3478" --keyed-relay "tcp://$keyed_ip:8443" --log-format text \
        >"$W/$host.log" 2>&1 &
    echo $! >> "$W/pids"
done
status() { coremesh-natlab exec --prefix "$P" "$1" -- coremesh --admin 127.0.0.1:7947 status --json; }
peer_of() { status "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["peer_id"])'; }
tries=0
until b_id=$(peer_of b 2>/dev/null) && [ -n "$b_id" ] && peer_of a >/dev/null 2>&1; do
    tries=$((tries + 1))
    for pid in $(cat "$W/pids"); do
        kill -0 "$pid" 2>/dev/null || { say "a node exited"; tail -n 20 "$W/a.log" "$W/b.log"; exit 1; }
    done
    [ "$tries" -lt 60 ] || { say "the nodes did not start"; tail -n 20 "$W/a.log" "$W/b.log"; exit 1; }
    sleep 1
done
say "b is $b_id; waiting for its record in the DHT (through the bootstrap)"
tries=0
until coremesh-natlab exec --prefix "$P" a -- coremesh --admin 127.0.0.1:7947 lookup "$b_id" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || { say "b's record never reached the DHT"; tail -n 20 "$W/a.log" "$W/b.log"; exit 1; }
    sleep 1
done
say "a pings b by PeerId"
if coremesh-natlab exec --prefix "$P" a -- coremesh --admin 127.0.0.1:7947 ping --json "$b_id"; then
    say "ok: a reached b through the deployment"
    exit 0
fi
say "FAILED: a could not reach b"; tail -n 20 "$W/a.log" "$W/b.log"
exit 1
