#!/usr/bin/env bash
# Two demo apps talking through two Trellis proxies, with mutual TLS between the proxies:
#
#   you ──► frontend (demo-app :8080) ──HTTP_PROXY──► proxy A ══mTLS HTTP/2══► proxy B ──► reviews (demo-app :9080)
#                                                          └─ certificates from `trellis control` (the mesh CA) ─┘
#
# Builds the release binary, starts the four processes, shows one request's journey, then keeps
# running until Ctrl-C (which stops everything).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
cargo build --release --quiet --bin trellis
T="$root/target/release/trellis"
logs="$(mktemp -d -t trellis-pair.XXXXXX)"

# The mesh CA, its signing service, and a join token per workload.
"$T" ca init --dir "$logs/ca" >/dev/null
pids=()
stop() {
  trap - EXIT INT TERM
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs kept in $logs"
}
trap stop EXIT INT TERM

"$T" control --ca-dir "$logs/ca" --ready-file "$logs/control.ready" 2>"$logs/control.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$logs/control.ready" ] && break; sleep 0.1; done
for sa in frontend reviews; do
  "$T" control token --ca-dir "$logs/ca" --id "spiffe://cluster.local/ns/shop/sa/$sa" --ttl 1h \
    >"$logs/$sa.token" 2>/dev/null
  sed "s|@STATE@|$logs|g" "$here/$sa-proxy.yaml" >"$logs/$sa-proxy.yaml"
done

"$T" demo-app --name reviews --version v1 --http 127.0.0.1:9080 --tcp 127.0.0.1:9090 \
  >"$logs/reviews.access.log" 2>"$logs/reviews.log" &
pids+=($!)
"$T" proxy --config "$logs/reviews-proxy.yaml" >"$logs/reviews-proxy.access.log" 2>"$logs/reviews-proxy.log" &
pids+=($!)
"$T" proxy --config "$logs/frontend-proxy.yaml" >"$logs/frontend-proxy.access.log" 2>"$logs/frontend-proxy.log" &
pids+=($!)
"$T" demo-app --name frontend --http 127.0.0.1:8080 --backend http://reviews.shop/ --proxy 127.0.0.1:15001 \
  >"$logs/frontend.access.log" 2>"$logs/frontend.log" &
pids+=($!)

for url in http://127.0.0.1:15000/ready http://127.0.0.1:15100/ready; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done
for _ in $(seq 100); do curl -fs http://127.0.0.1:8080/ >/dev/null 2>&1 && break; sleep 0.1; done

cat <<MSG

Trellis is running: frontend ─► proxy A ═(mTLS HTTP/2)═► proxy B ─► reviews

  curl -s http://127.0.0.1:8080/                      # frontend, which calls reviews through the mesh
  curl -s -x 127.0.0.1:15001 http://reviews.shop/     # call reviews yourself through proxy A
  curl -s --http2-prior-knowledge --connect-to reviews.shop:80:127.0.0.1:15001 http://reviews.shop/
  curl -s http://127.0.0.1:15000/metrics              # proxy A's metrics (proxy B: :15100)
  curl -s http://127.0.0.1:15000/config_dump          # the config proxy A applied
  tail -f $logs/frontend-proxy.access.log             # one JSON line per request (with both SPIFFE IDs)
  ./target/release/trellis cert inspect $logs/ca/cert-chain.pem   # the mesh CA, in plain words

One request, as the frontend sees it:
MSG
curl -s http://127.0.0.1:8080/ | python3 -m json.tool || true
echo; echo "Ctrl-C stops everything."
wait
