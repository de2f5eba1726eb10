#!/bin/sh
# deb_test - `make deb` end to end: builds the Debian packages with scripts/make-deb (what
# `make deb` runs: dpkg-buildpackage -b -us -uc on a copy of the tree) into OUTDIR, then:
#   - postbox_VERSION_ARCH.deb, libpostbox0 and libpostbox-dev are there, VERSION being the
#     project's (debian/changelog follows CMakeLists.txt);
#   - lintian reports no error (its warnings are printed);
#   - unpacked with dpkg-deb -x, the packaged `postboxd --check-config` accepts the packaged
#     /etc/postbox/postbox.conf and `postboxctl version` prints the version;
#   - the packaging: /etc/postbox/postbox.conf is a conffile, the unit is installed and
#     enabled but not started (dh_installsystemd --no-start), the postbox system user
#     (sysusers.d) and /var/lib/postbox mode 0750 owned by it (tmpfiles.d; both run with
#     --root on the unpacked tree, as postinst runs them), the man pages, the libraries
#     with their SONAME link, header and postbox.pc; the licence (debian/copyright), the
#     README and docs/monitoring/* under /usr/share/doc/postbox/.
#
#   deb_test.sh SRC OUTDIR VERSION      prints "N passed, N failed"; exit 0 only when
#                                       nothing failed
set -u
src=$1 out=$2 version=$3
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
check() {
  d=$1; shift
  if "$@" >"$tmp/out" 2>&1; then pass; else fail "$d"; sed 's/^/    /' "$tmp/out" >&2; fi
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/postbox-deb-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

for tool in dpkg-buildpackage dh lintian; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (scripts/bootstrap test installs it)"
done
check "debian/changelog names version $version" \
  test "$(cd "$src" && dpkg-parsechangelog -S Version)" = "$version"
start=$(date +%s)
check "scripts/make-deb" "$src/scripts/make-deb" "$out"
echo "make-deb took $(($(date +%s) - start)) s"
arch=$(dpkg --print-architecture)
deb=$out/postbox_${version}_$arch.deb
for p in "$deb" "$out/libpostbox0_${version}_$arch.deb" "$out/libpostbox-dev_${version}_$arch.deb"; do
  if [ -f "$p" ]; then pass; else fail "not built: $p"; fi
done
if [ ! -f "$deb" ]; then
  echo "$passed passed, $failed failed"
  exit 1
fi

# lintian: errors fail the test, warnings are shown
lintian "$out/postbox_${version}_$arch.changes" >"$tmp/lintian" 2>&1
grep -v 'running with root privileges' "$tmp/lintian" | sed 's/^/    lintian: /'
if grep -q '^E:' "$tmp/lintian"; then fail "lintian reports errors"; else pass; fi

# the daemon package, unpacked
root=$tmp/root
check "dpkg-deb -x" dpkg-deb -x "$deb" "$root"
check "dpkg-deb -e" dpkg-deb -e "$deb" "$tmp/control"
check "packaged postboxd --check-config with the packaged configuration" \
  sh -c "'$root/usr/sbin/postboxd' -c '$root/etc/postbox/postbox.conf' --check-config >'$tmp/conf' &&
         grep -qx 'data_dir = /var/lib/postbox' '$tmp/conf'"
check "packaged postboxctl version" sh -c "'$root/usr/bin/postboxctl' version | grep -qx 'postboxctl $version'"
check "packaged postboxd --version" sh -c "'$root/usr/sbin/postboxd' --version | grep -qx 'postboxd $version'"
check "postboxd does not need libpostbox.so" sh -c "! readelf -d '$root/usr/sbin/postboxd' | grep -q 'NEEDED.*libpostbox'"
check "/etc/postbox/postbox.conf is a conffile" grep -qx /etc/postbox/postbox.conf "$tmp/control/conffiles"
for f in lib/systemd/system/postboxd.service usr/share/man/man8/postboxd.8.gz \
         usr/share/man/man1/postboxctl.1.gz usr/share/man/man5/postbox.conf.5.gz \
         usr/share/doc/postbox/postbox.conf.example usr/share/doc/postbox/copyright \
         usr/share/doc/postbox/monitoring/alerts.yml usr/share/doc/postbox/monitoring/prometheus.yml \
         usr/share/doc/postbox/monitoring/grafana-postbox.json; do
  if [ -f "$root/$f" ]; then pass; else fail "postbox lacks /$f"; fi
done
if [ -f "$root/usr/share/doc/postbox/README.md.gz" ] || [ -f "$root/usr/share/doc/postbox/README.md" ]; then
  pass; else fail "postbox lacks /usr/share/doc/postbox/README.md(.gz)"; fi
check "the copyright file says MIT (Expat) and Apache-2.0 for proto/" \
  sh -c "grep -qx 'License: Expat' '$root/usr/share/doc/postbox/copyright' &&
         grep -qx 'License: Apache-2.0' '$root/usr/share/doc/postbox/copyright'"
post=$tmp/control/postinst
check "the unit is enabled on installation" grep -q "deb-systemd-helper enable 'postboxd.service'" "$post"
check "the unit is not started on installation" sh -c "! grep -q 'deb-systemd-invoke.*start' '$post'"
check "sysusers.d makes the postbox system user" grep -q '^u postbox ' "$root/usr/lib/sysusers.d/postbox.conf"
check "postinst creates the user (systemd-sysusers)" grep -q 'systemd-sysusers.*postbox.conf' "$post"
check "tmpfiles.d makes /var/lib/postbox 0750 postbox:postbox" \
  grep -q '^d /var/lib/postbox 0750 postbox postbox' "$root/usr/lib/tmpfiles.d/postbox.conf"
check "postinst creates the directory (systemd-tmpfiles)" grep -q 'systemd-tmpfiles.*--create postbox.conf' "$post"
u=$(grep -n systemd-sysusers "$post" | head -1 | cut -d: -f1)
t=$(grep -n systemd-tmpfiles "$post" | head -1 | cut -d: -f1)
check "the user is made before the directory" test "${u:-999}" -lt "${t:-0}"
# what postinst runs, here on the unpacked tree (--root): the user, then its directory
if command -v systemd-sysusers >/dev/null 2>&1 && command -v systemd-tmpfiles >/dev/null 2>&1; then
  check "systemd-sysusers --root creates the postbox user" systemd-sysusers --root="$root" postbox.conf
  check "systemd-tmpfiles --root creates /var/lib/postbox" systemd-tmpfiles --root="$root" --create postbox.conf
  uid=$(awk -F: '$1 == "postbox" {print $3 ":" $4}' "$root/etc/passwd" 2>/dev/null)
  check "postbox is a system user without a login shell" \
    grep -q '^postbox:x:[0-9]*:[0-9]*:.*:/var/lib/postbox:/usr/sbin/nologin$' "$root/etc/passwd"
  check "/var/lib/postbox is 0750 and owned by postbox" \
    test "$(stat -c '%a %u:%g' "$root/var/lib/postbox")" = "750 ${uid:-none}"
else
  fail "systemd-sysusers and systemd-tmpfiles not found (Debian package systemd)"
fi
unit=$root/lib/systemd/system/postboxd.service
check "the unit runs as postbox with its state directory" \
  sh -c "grep -qx User=postbox '$unit' && grep -qx StateDirectory=postbox '$unit'"

# the libraries
dpkg-deb -c "$out/libpostbox0_${version}_$arch.deb" >"$tmp/lib0" 2>&1
dpkg-deb -c "$out/libpostbox-dev_${version}_$arch.deb" >"$tmp/libdev" 2>&1
for f in "libpostbox.so.0 -> libpostbox.so.$version" "libpostbox.so.$version\$"; do
  if grep -q "$f" "$tmp/lib0"; then pass; else fail "libpostbox0 lacks $f"; fi
done
for f in usr/include/postbox.h pkgconfig/postbox.pc libpostbox.a 'libpostbox.so -> libpostbox.so.0'; do
  if grep -q "$f" "$tmp/libdev"; then pass; else fail "libpostbox-dev lacks $f"; fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
