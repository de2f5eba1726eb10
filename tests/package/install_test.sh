#!/bin/sh
# install_test - `make install` as a packager or an operator uses it, into a temporary
# DESTDIR, then `make uninstall`:
#   - every file is where it belongs (programs, static and shared library with its SONAME
#     links, header, postbox.pc, man pages, systemd unit, example configuration) and is
#     listed in the manifest that uninstall reads;
#   - the shared library exports exactly the functions include/postbox.h marks PB_API;
#   - a small program (app.c) compiles and runs against the installed library found through
#     `pkg-config --cflags --libs postbox`, once with the shared library and once with the
#     static one (libpostbox.a, its pkg-config dependencies linked as usual);
#   - the installed postboxd accepts the installed example configuration, which lists every
#     setting, commented out with its default (uncommented it gives the same configuration);
#   - `systemd-analyze verify` accepts the installed unit (paths pointed into the DESTDIR);
#   - uninstall removes everything install put, and a second install keeps a configuration
#     file that is already there (uninstall then leaves it too).
#
#   install_test.sh BUILD SRC VERSION PREFIX LIBDIR SBINDIR BINDIR INCLUDEDIR MANDIR
#                   SYSCONFDIR DATADIR UNITDIR
# (the CMake install directories, absolute; CMakeLists.txt passes them). Prints
# "N passed, N failed"; exit 0 only when nothing failed.
set -u
build=$1 src=$2 version=$3 prefix=$4 libdir=$5 sbindir=$6 bindir=$7 includedir=$8 mandir=$9
shift 9
sysconfdir=$1 datadir=$2 unitdir=$3
CC=${CC:-cc}
passed=0 failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/postbox-install-XXXXXX")
root=$tmp/root
manifest=$build/install_manifest.txt

# cmake --install writes BUILD/install_manifest.txt: keep the one of a real `make install`.
if [ -f "$manifest" ]; then cp -p "$manifest" "$tmp/manifest.saved"; fi
cleanup() {
  if [ -f "$tmp/manifest.saved" ]; then cp -p "$tmp/manifest.saved" "$manifest"; else rm -f "$manifest"; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
# check DESCRIPTION COMMAND...: runs COMMAND, its output kept in $tmp/out (shown on failure)
check() {
  d=$1; shift
  if "$@" >"$tmp/out" 2>&1; then pass; else fail "$d"; sed 's/^/    /' "$tmp/out" >&2; fi
}

check "cmake --install into DESTDIR" env DESTDIR="$root" cmake --install "$build"
cp "$manifest" "$tmp/manifest.txt"

# ---- the files and the manifest
so=libpostbox.so.$version
for f in "$sbindir/postboxd" "$bindir/postboxctl" "$libdir/libpostbox.a" "$libdir/$so" \
         "$libdir/libpostbox.so.0" "$libdir/libpostbox.so" "$includedir/postbox.h" \
         "$libdir/pkgconfig/postbox.pc" "$mandir/man8/postboxd.8" "$mandir/man1/postboxctl.1" \
         "$mandir/man5/postbox.conf.5" "$unitdir/postboxd.service" \
         "$datadir/doc/postbox/postbox.conf.example" "$sysconfdir/postbox/postbox.conf"; do
  if [ -e "$root$f" ]; then pass; else fail "not installed: $f"; fi
  if grep -qx "$f" "$tmp/manifest.txt"; then pass; else fail "not in the manifest: $f"; fi
done
check "postboxd and postboxctl are executable" test -x "$root$sbindir/postboxd" -a -x "$root$bindir/postboxctl"
check "libpostbox.so -> libpostbox.so.0" test "$(readlink "$root$libdir/libpostbox.so")" = libpostbox.so.0
check "libpostbox.so.0 -> $so" test "$(readlink "$root$libdir/libpostbox.so.0")" = "$so"
check "SONAME libpostbox.so.0" sh -c "readelf -d '$root$libdir/$so' | grep -q 'SONAME.*\[libpostbox.so.0\]'"

# ---- exported symbols: exactly the PB_API functions of the header
sed -n 's/^PB_API [^(]*[ *]\(pb_[a-z0-9_]*\)(.*/\1/p' "$root$includedir/postbox.h" | sort >"$tmp/api"
nm -D --defined-only "$root$libdir/$so" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort >"$tmp/exported"
check "header declares the API" test "$(wc -l <"$tmp/api")" -ge 30
check "exported symbols = PB_API functions of postbox.h" diff "$tmp/api" "$tmp/exported"

# ---- a program built through pkg-config, shared and static
export PKG_CONFIG_PATH="$root$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root"
check "pkg-config --modversion postbox = $version" test "$(pkg-config --modversion postbox)" = "$version"
cflags=$(pkg-config --cflags postbox) libs=$(pkg-config --libs postbox)
check "Libs names the installed library" sh -c "echo '$libs' | grep -q -- '-L$root$libdir .*-lpostbox'"
check "shared: compile and link app.c" $CC -o "$tmp/app_shared" "$src/tests/package/app.c" $cflags $libs
check "shared: app needs libpostbox.so.0" sh -c "readelf -d '$tmp/app_shared' | grep -q 'NEEDED.*\[libpostbox.so.0\]'"
mkdir -p "$tmp/d1" "$tmp/d2"
check "shared: app runs against the installed library" \
  sh -c "LD_LIBRARY_PATH='$root$libdir' ldd '$tmp/app_shared' | grep -q 'libpostbox.so.0 => $root$libdir/' &&
         LD_LIBRARY_PATH='$root$libdir' '$tmp/app_shared' '$tmp/d1' | grep -q '^ok $version .*public_key'"
# Static: libpostbox.a, and the pkg-config modules it needs (Requires.private) linked as
# shared libraries. (`pkg-config --static` would also ask for the static dependencies of
# libcurl and libpq, which Debian does not ship.)
slibs=$(pkg-config --static --pure --libs postbox | sed 's/-lpostbox\b/-l:libpostbox.a/')
slibs="$slibs $(pkg-config --static --libs-only-other postbox)"
for m in libprotobuf-c libsodium sqlite3 libcurl libmicrohttpd jansson libpq gnutls; do
  if pkg-config --print-requires-private postbox | grep -qx "$m"; then pass; else fail "Requires.private lacks $m"; fi
done
check "static: compile and link app.c" $CC -o "$tmp/app_static" "$src/tests/package/app.c" $cflags $slibs
check "static: app does not need libpostbox.so" sh -c "! readelf -d '$tmp/app_static' | grep -q 'NEEDED.*libpostbox'"
check "static: app runs" sh -c "'$tmp/app_static' '$tmp/d2' | grep -q '^ok $version .*public_key'"
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR

# ---- the installed programs and the example configuration
conf=$root$sysconfdir/postbox/postbox.conf
check "postboxd --version" sh -c "'$root$sbindir/postboxd' --version | grep -qx 'postboxd $version'"
check "postboxctl version" sh -c "'$root$bindir/postboxctl' version | grep -qx 'postboxctl $version'"
check "the example configuration is refused until server_id is set (exit 2, naming it)" sh -c \
  "'$root$sbindir/postboxd' -c '$conf' --print-config 2>&1 >/dev/null | grep -q 'postbox.conf:[0-9]* says \"server_id = required\"'; \
   '$root$sbindir/postboxd' -c '$conf' --print-config >/dev/null 2>&1; [ \$? -eq 2 ]"
check "with server_id set, the example configuration is accepted" \
  "$root$sbindir/postboxd" -c "$conf" --server-id chat.example.org:443 --print-config
check "the installed example is the configuration file" cmp "$conf" "$root$datadir/doc/postbox/postbox.conf.example"
"$root$sbindir/postboxd" --print-config >"$tmp/defaults" 2>&1
for name in $(sed -n 's/^\([a-z_]*\) = .*/\1/p' "$tmp/defaults"); do
  if grep -q "^#\{0,1\}$name =" "$conf"; then pass; else fail "the example configuration lacks $name"; fi
done
check "every line of the example but server_id = required is a comment or blank" sh -c \
  "! grep -v -e '^#' -e '^server_id = required\$' '$conf' | grep -q ."
sed -e 's/^#\([a-z_]* = .\)/\1/' -e '/^server_id = required$/d' "$conf" >"$tmp/uncommented.conf"
check "uncommented, the example gives the defaults" sh -c \
  "'$root$sbindir/postboxd' -c '$tmp/uncommented.conf' --print-config | diff '$tmp/defaults' -"

# ---- the systemd unit
unit=$root$unitdir/postboxd.service
check "ExecStart runs the installed postboxd with the installed configuration" \
  grep -qx "ExecStart=$sbindir/postboxd -c $sysconfdir/postbox/postbox.conf" "$unit"
for line in Type=notify WatchdogSec=30 RestartPreventExitStatus=2 StateDirectory=postbox User=postbox ProtectSystem=strict \
            ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes CapabilityBoundingSet= \
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" SystemCallFilter=@system-service \
            'ExecReload=/bin/kill -HUP $MAINPID'; do
  if grep -qxF "$line" "$unit"; then pass; else fail "the unit lacks $line"; fi
done
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir -p "$tmp/unit"
  sed "s|=$sbindir/|=$root$sbindir/|; s| $sysconfdir/| $root$sysconfdir/|" "$unit" >"$tmp/unit/postboxd.service"
  # verify checks the programs and man pages the unit names: the DESTDIR's
  MANPATH="$root$mandir" systemd-analyze verify "$tmp/unit/postboxd.service" >"$tmp/verify" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && [ ! -s "$tmp/verify" ]; then pass; else
    fail "systemd-analyze verify (exit $rc)"; sed 's/^/    /' "$tmp/verify" >&2
  fi
else
  fail "systemd-analyze not found (Debian package systemd; scripts/bootstrap test)"
fi

# ---- uninstall, and a reinstall over an operator's configuration
check "uninstall" env DESTDIR="$root" cmake -DMANIFEST="$tmp/manifest.txt" -P "$src/cmake/uninstall.cmake"
find "$root" ! -type d >"$tmp/left"
check "uninstall left no file" test ! -s "$tmp/left"
check "uninstall removed postbox's directories" \
  test ! -e "$root$sysconfdir/postbox" -a ! -e "$root$datadir/doc/postbox"
check "install again" env DESTDIR="$root" cmake --install "$build"
echo "listen = 127.0.0.1:2389" >>"$conf"
check "install over an existing configuration" env DESTDIR="$root" cmake --install "$build"
check "the existing configuration is kept" grep -qx "listen = 127.0.0.1:2389" "$conf"
cp "$manifest" "$tmp/manifest2.txt"
check "uninstall again" env DESTDIR="$root" cmake -DMANIFEST="$tmp/manifest2.txt" -P "$src/cmake/uninstall.cmake"
find "$root" ! -type d >"$tmp/left"
check "only the operator's configuration is left" test "$(cat "$tmp/left")" = "$conf"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
