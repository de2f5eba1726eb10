# postbox - the two commands a new user needs, and a few more.
#
#   make run    install what is missing, build, run postboxd on loopback (SQLite store)
#   make test   install what is missing, build with -Werror, run every test (CTest)
#
# Everything else is CMake underneath: the build directory is build/.

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
DATA ?= $(CURDIR)/data
RUN_ARGS ?=

MAKEFLAGS += --no-print-directory

.PHONY: all build run test clean bench fuzz memcheck crash-full

all: build

build:
	@scripts/bootstrap build
	@cmake -S . -B $(BUILD) -DPB_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Loopback defaults: federation on 127.0.0.1:2289 (plain HTTP; peers reached over http),
# admin API on 127.0.0.1:2290, data in ./data.
run:
	@scripts/bootstrap build
	@cmake -S . -B $(BUILD) -DPB_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target postboxd postboxctl
	$(BUILD)/postboxd --data-dir $(DATA) --listen 127.0.0.1:2289 --admin-listen 127.0.0.1:2290 \
		--peer-scheme http $(RUN_ARGS)

test:
	@scripts/test-all

# Longer runs, outside `make test`:
bench:       ## benchmarks against the loopback ceilings; writes bench/results/latest.md
	@scripts/bench
fuzz:        ## every fuzzer for a longer time (FUZZ_SECONDS, default 600 each)
	@scripts/fuzz-long
memcheck:    ## the integration tests under valgrind memcheck
	@scripts/memcheck
crash-full:  ## the full crash suite: 100,000 events, 50+ kills, network faults
	@scripts/crash-full

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-bench build-memcheck
