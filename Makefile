# postbox - the two commands a new user needs, and a few more.
#
#   make run    install what is missing, build, run postboxd on loopback (SQLite store)
#   make test   install what is missing, build with -Werror, run every test (CTest)
#
# Everything else is CMake underneath: the build directory is build/.
#
#   make install [PREFIX=/usr/local] [DESTDIR=]   programs, libraries, header, postbox.pc,
#                                                 man pages, systemd unit, postbox.conf
#   make uninstall [DESTDIR=]                     removes what make install put
#   make deb                                      Debian packages into build-deb/

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
DATA ?= $(CURDIR)/data
RUN_ARGS ?=
PREFIX ?= /usr/local
DESTDIR ?=

MAKEFLAGS += --no-print-directory

.PHONY: all build run test clean bench fuzz memcheck crash-full install uninstall deb

all: build

build:
	@scripts/bootstrap build
	@cmake -S . -B $(BUILD) -DPB_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Loopback defaults: federation on 127.0.0.1:2289 (plain HTTP; peers reached over http, on
# private addresses too),
# admin API on 127.0.0.1:2290, data in ./data.
run:
	@scripts/bootstrap build
	@cmake -S . -B $(BUILD) -DPB_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target postboxd postboxctl
	$(BUILD)/postboxd --data-dir $(DATA) --listen 127.0.0.1:2289 --admin-listen 127.0.0.1:2290 \
		--peer-scheme http --allow-private-peers yes $(RUN_ARGS)

test:
	@scripts/test-all

# Installing (CMake install rules; the configuration file is installed only when absent).
install:
	@scripts/bootstrap build
	@cmake -S . -B $(BUILD) -DPB_WERROR=ON -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target postboxd postboxctl postbox postbox_shared generated
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD)
uninstall:
	DESTDIR="$(DESTDIR)" cmake -DMANIFEST=$(BUILD)/install_manifest.txt -P cmake/uninstall.cmake
# build-deb/postbox_VERSION_ARCH.deb (and libpostbox0, libpostbox-dev), via dpkg-buildpackage
deb:
	@scripts/bootstrap deb
	@scripts/make-deb build-deb

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
	rm -rf $(BUILD) build-asan build-fuzz build-bench build-memcheck build-deb
