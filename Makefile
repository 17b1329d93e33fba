# provgate build. `make` builds the core library, the unit tests and the
# nginx dynamic module; `make check` runs every test; see README.md.
SHELL := /bin/bash
CC ?= cc
NGINX_SRC ?= /usr/share/nginx/src
BUILD := build

PKGS := lasso liboauth2 cjose hiredis jansson libcurl openssl libxml-2.0 xmlsec1-openssl libevent ldap lber libpq
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lz -lm

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-unused-parameter \
        -Wstrict-prototypes -Wmissing-prototypes -Wno-missing-field-initializers
BASE_CFLAGS := -std=gnu11 -D_GNU_SOURCE -fPIC -g -Iinclude $(WARN)
# every object records the headers it includes (private src/ headers too)
DEPFLAGS = -MMD -MP
OPT ?= -O2
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

SRCS := $(shell find src -name '*.c' | sort)
OBJS := $(SRCS:%.c=$(BUILD)/obj/%.o)
ASAN_OBJS := $(SRCS:%.c=$(BUILD)/asan/%.o)
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/unit/%)
ASAN_UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/unit-asan/%)
UNIT_HELPERS := $(sort $(wildcard tests/unit/helpers/*.c))
MODULE_SRCS := $(sort $(wildcard ngx_module/*.c ngx_module/*.h)) config
MODULE_SO := $(BUILD)/ngx_http_provgate_module.so
ASAN_MODULE_SO := $(BUILD)/asan-module/ngx_http_provgate_module.so

PHONY_TOOLS := tools
.PHONY: all lib module unit asan deps $(PHONY_TOOLS) demo demo-stop demo-status check check-unit \
        check-integration check-asan check-fuzz bench bench-outbox bench-recon bench-leave clean fuzz

all: lib unit module tools

TOOLS := $(BUILD)/provgatectl $(BUILD)/bench_policy $(BUILD)/bench_recon $(BUILD)/provgated
tools: $(TOOLS)

# provgatectl: the command-line tool (policy tools offline; admin commands over libcurl, in PKG_LIBS)
$(BUILD)/provgatectl: tools/provgatectl/provgatectl.c $(BUILD)/libprovgate.a $(wildcard include/provgate/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) $(OPT) $(PKG_CFLAGS) $< $(BUILD)/libprovgate.a $(PKG_LIBS) -o $@

# provgated: the sidecar daemon (libevent host, health and metrics today)
$(BUILD)/provgated: sidecar/provgated.c $(BUILD)/libprovgate.a $(wildcard include/provgate/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) $(OPT) $(PKG_CFLAGS) $< $(BUILD)/libprovgate.a $(PKG_LIBS) -o $@

$(BUILD)/asan-bin/provgated: sidecar/provgated.c $(BUILD)/libprovgate-asan.a $(wildcard include/provgate/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) -O1 $(SAN) $(PKG_CFLAGS) $< $(BUILD)/libprovgate-asan.a $(PKG_LIBS) -o $@

# reconciliation compare benchmark (no-op reconciliation, accounts/s)
$(BUILD)/bench_recon: tools/bench_recon.c $(BUILD)/libprovgate.a $(wildcard include/provgate/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) $(OPT) $(PKG_CFLAGS) $< $(BUILD)/libprovgate.a $(PKG_LIBS) -o $@

# policy evaluation benchmark (counts allocations with its own malloc wrapper)
$(BUILD)/bench_policy: tools/provgatectl/bench_policy.c $(BUILD)/libprovgate.a $(wildcard include/provgate/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) $(OPT) $(PKG_CFLAGS) $< $(BUILD)/libprovgate.a $(PKG_LIBS) -o $@

lib: $(BUILD)/libprovgate.a
unit: $(UNIT_BINS)
module: $(MODULE_SO)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(BASE_CFLAGS) $(DEPFLAGS) $(OPT) $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/asan/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC-ASAN $<"
	@$(CC) $(BASE_CFLAGS) $(DEPFLAGS) -O1 $(SAN) $(PKG_CFLAGS) -c $< -o $@

-include $(OBJS:.o=.d) $(ASAN_OBJS:.o=.d)

$(BUILD)/libprovgate.a: $(OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libprovgate-asan.a: $(ASAN_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/unit/%: tests/unit/%.c $(UNIT_HELPERS) $(BUILD)/libprovgate.a $(wildcard include/provgate/*.h tests/unit/helpers/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) $(OPT) $(PKG_CFLAGS) -Itests/unit $< $(UNIT_HELPERS) \
	    $(BUILD)/libprovgate.a $(PKG_LIBS) -lcmocka -o $@

$(BUILD)/unit-asan/%: tests/unit/%.c $(UNIT_HELPERS) $(BUILD)/libprovgate-asan.a $(wildcard include/provgate/*.h tests/unit/helpers/*.h)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) -O1 $(SAN) $(PKG_CFLAGS) -Itests/unit $< $(UNIT_HELPERS) \
	    $(BUILD)/libprovgate-asan.a $(PKG_LIBS) -lcmocka -o $@

# The module: a copy of Debian's configured nginx source tree, configured
# with this directory as a dynamic addon (see `config`).
$(MODULE_SO): $(BUILD)/libprovgate.a $(MODULE_SRCS)
	PROVGATE_LIB=$(abspath $(BUILD)/libprovgate.a) \
	    tools/build-module.sh $(abspath $(BUILD)/nginx) $(abspath $@) ""

$(ASAN_MODULE_SO): $(BUILD)/libprovgate-asan.a $(MODULE_SRCS)
	PROVGATE_LIB=$(abspath $(BUILD)/libprovgate-asan.a) \
	    tools/build-module.sh $(abspath $(BUILD)/nginx-asan) $(abspath $@) "$(SAN)"

asan: $(ASAN_UNIT_BINS) $(ASAN_MODULE_SO) $(BUILD)/asan-bin/provgated

deps:
	tools/deps.sh

check-unit: $(UNIT_BINS)
	tests/run-unit.sh $(BUILD)/unit

check-integration: $(MODULE_SO) $(TOOLS)
	tests/run-integration.sh $(MODULE_SO)

check-asan: $(ASAN_UNIT_BINS) $(ASAN_MODULE_SO) $(BUILD)/asan-bin/provgated
	tests/run-unit.sh $(BUILD)/unit-asan
	PROVGATE_ASAN=1 tests/run-integration.sh $(ASAN_MODULE_SO)

check: deps
	$(MAKE) all asan
	tests/run-all.sh

demo: deps all
	tools/demo.sh start

demo-status:
	tools/demo.sh status

demo-stop:
	tools/demo.sh stop

bench: deps all tools
	tools/bench.sh

# only the outbox part of `make bench` (tools/bench_outbox.mjs)
bench-outbox: deps all tools
	PROVGATE_MODULE=$(abspath $(MODULE_SO)) node tools/bench_outbox.mjs

# only the end-to-end reconciliation part (tools/bench_recon_e2e.mjs;
# BENCH_RECON_N=10000 for a quick run, BENCH_RECON_TARGETS=ldap,scim)
bench-recon: deps $(BUILD)/provgated
	node tools/bench_recon_e2e.mjs

# only the leave -> disabled everywhere part (tools/bench_leave.mjs)
bench-leave: deps $(BUILD)/provgated
	node tools/bench_leave.mjs

clean:
	rm -rf $(BUILD)

# Fuzz targets (tests/fuzz/fuzz_*.c, each defining LLVMFuzzerTestOneInput).
# `check` replays every seed corpus (tests/fuzz/corpus/<name>/) through an
# ASan/UBSan build with a plain driver; `make fuzz` builds libFuzzer binaries.
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_REPLAY := $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz-replay/%)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)

$(BUILD)/fuzz-replay/%: tests/fuzz/%.c tests/fuzz/replay_main.c $(BUILD)/libprovgate-asan.a
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(BASE_CFLAGS) -O1 $(SAN) $(PKG_CFLAGS) $< tests/fuzz/replay_main.c \
	    $(BUILD)/libprovgate-asan.a $(PKG_LIBS) -o $@

$(BUILD)/fuzz/%: tests/fuzz/%.c $(SRCS)
	@mkdir -p $(dir $@)
	clang-14 -std=gnu11 -D_GNU_SOURCE -g -O1 -Iinclude $(PKG_CFLAGS) \
	    -fsanitize=fuzzer,address,undefined $< $(SRCS) $(PKG_LIBS) -o $@

fuzz: $(FUZZ_BINS)

# (prerequisites are expanded when a rule is read: FUZZ_REPLAY exists only now)
asan: $(FUZZ_REPLAY)

check-fuzz: $(FUZZ_REPLAY)
	tests/run-fuzz-replay.sh $(BUILD)/fuzz-replay
