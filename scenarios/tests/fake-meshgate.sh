#!/bin/bash
# A stand-in for the `meshgate` binary in the lab's process tests: it takes
# the discovery/agent command lines of docs/contracts.md, listens (discovery)
# or writes status.json with every sibling node as a peer (agent), and
# honours the agent's signals. With a file `no-peers` next to it, agents
# report no peers.
mode=$1
shift
while [ $# -gt 0 ]; do
  case $1 in
    --state-dir) dir=$2; shift ;;
    --node) node=$2; shift ;;
    --cluster) cluster=$2; shift ;;
    --cluster-id) cid=$2; shift ;;
    --listen) listen=$2; shift ;;
    --underlay-ip) uip=$2; shift ;;
    --pod-cidr) cidr=$2; shift ;;
  esac
  shift
done
here=$(dirname "$0")
case $mode in
  discovery)
    echo "fake discovery $cluster on $listen"
    exec python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${listen%:*}', ${listen#*:})); s.listen(); time.sleep(1e6)" meshgate-fake-discovery
    ;;
  agent)
    echo "fake agent $cluster/$node starting"
    key="key-$node-$RANDOM"
    rotations=0
    trap 'key="key-$node-$RANDOM"; rotations=$((rotations+1)); echo rotated' USR1
    trap 'echo leaving; exit 0' TERM
    trap 'echo restart; exit 0' USR2
    while true; do
      peers=""
      if [ ! -e "$here/no-peers" ]; then
        for p in "$dir"/../*; do
          p=$(basename "$p")
          [ "$p" = "$node" ] && continue
          peers="$peers${peers:+,}{\"node\":\"$p\",\"cluster\":\"$cluster\",\"public_key\":\"k\",\"endpoint\":\"x:51820\",\"allowed_ips\":[],\"last_handshake_age_ms\":5,\"tx_bytes\":1,\"rx_bytes\":2}"
        done
      fi
      cat > "$dir/status.json.tmp" <<JSON
{"node":"$node","cluster":"$cluster","cluster_id":$cid,"backend":"fake","public_key":"$key","tunnel_ip":"100.64.4.1","underlay_ip":"$uip","listen_port":51820,"pod_cidr":"$cidr","discovery_connected":true,"pid":$$,"updated_unix_ms":0,"key_rotations":$rotations,"peers":[$peers]}
JSON
      mv "$dir/status.json.tmp" "$dir/status.json"
      sleep 0.1
    done
    ;;
esac
