# syntax=docker/dockerfile:1.7
# Weft: one image for the agent, the controller, waypoints and weftctl, chosen by the first
# argument (`agent`, `controller`, `waypoint`, `weftctl`). Node 24 runs the TypeScript sources
# directly (type stripping), so the image carries sources, not a bundle.
#
#   docker build -t weft .
#   docker run --rm weft weftctl install --image weft:dev | kubectl apply -f -
#
# Same Node major as package.json "engines" and the Makefile's NODE_MAJOR_MIN; Debian bookworm as
# the build machines (libbpf 1.1, clang 14).
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: BPF objects (clang), the libbpf addon (node-gyp), typecheck -----------------------
FROM ${NODE_IMAGE} AS build
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config make g++ python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not re-run npm ci.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
# deploy/ holds the CRDs `weftctl install` renders; created when the checkout has none, so the
# COPY below works either way (weftctl then renders its built-in CRDs and says so).
RUN make build \
 && npm prune --omit=dev --no-audit --no-fund \
 && mkdir -p deploy/crds

# ---- runtime ---------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
# libbpf1/libelf1/zlib1g: what the addon links; iproute2: `ip`/`tc` for the agent's host
# networking (lib/sys/exec.ts); mount (util-linux) and stat (coreutils), which the agent pod's
# mount-bpffs init container runs, are in the base image.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      libbpf1 libelf1 zlib1g iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weft
ENV NODE_ENV=production
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/build/bpf ./build/bpf
COPY --from=build /src/build/cni ./build/cni
COPY --from=build /src/agent/cni ./agent/cni
COPY --from=build /src/agent/native/build/Release/weft_bpf.node ./agent/native/build/Release/weft_bpf.node
COPY --from=build /src/agent/libbpf ./agent/libbpf
COPY --from=build /src/agent/src ./agent/src
COPY --from=build /src/controller/src ./controller/src
COPY --from=build /src/waypoint/src ./waypoint/src
COPY --from=build /src/eastwest/src ./eastwest/src
COPY --from=build /src/lib ./lib
COPY --from=build /src/cli ./cli
COPY --from=build /src/proto ./proto
COPY --from=build /src/deploy ./deploy
COPY --chmod=0755 <<'EOF_WEFT' /usr/local/bin/weft
#!/bin/sh
# Chooses the Weft program by the first argument; the rest are its arguments.
set -e
cd /opt/weft
part="${1:-}"
[ "$#" -gt 0 ] && shift
case "$part" in
  agent)      exec node agent/src/main.ts "$@" ;;
  controller) exec node --heap-growing-percent=20 controller/src/main.ts "$@" ;;
  waypoint)   exec node waypoint/src/main.ts "$@" ;;
  eastwest)   exec node eastwest/src/main.ts "$@" ;;
  weftctl)    exec node cli/weftctl.ts "$@" ;;
  *) echo "usage: weft agent|controller|waypoint|weftctl|eastwest [arguments]" >&2; exit 2 ;;
esac
EOF_WEFT
# Node's compile cache, filled for every part with the flags it runs with
# (cli/install/compile-cache.ts): the parts start without stripping types and without Node's
# TypeScript parser in memory (about 20 MB per process). Read-only at run time, which Node accepts.
ENV NODE_COMPILE_CACHE=/opt/weft/build/compile-cache
RUN node cli/install/compile-cache.ts build/compile-cache agent controller waypoint eastwest weftctl
# The controller and waypoints run as this user; the agent's pod sets runAsUser 0 (host paths).
USER node
ENTRYPOINT ["/usr/local/bin/weft"]
CMD ["weftctl", "--help"]
