#!/bin/sh
# man_test - the manual pages: postboxd(8), postboxctl(1) and the generated postbox.conf(5)
# are `mandoc -T lint` clean (every level, style included; only "referenced manual not
# found" is ignored, as it depends on what this machine has installed, and the style note
# on the footer, which names postbox on purpose), postboxctl(1) documents every command,
# its environment, files and exit status, and postbox.conf(5) and the example postbox.conf
# document every setting that postboxd knows, with its default.
#
#   man_test.sh SRC BUILD      prints "N passed, N failed"; exit 0 only when nothing failed
set -u
src=$1 build=$2
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/postbox-man-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if ! command -v mandoc >/dev/null 2>&1; then
  fail "mandoc not found (Debian package mandoc; scripts/bootstrap test)"
fi
for page in "$src/man/postboxd.8" "$src/man/postboxctl.1" "$build/generated/postbox.conf.5"; do
  if [ ! -s "$page" ]; then fail "missing $page"; continue; fi
  mandoc -T lint -W all "$page" >"$tmp/lint" 2>&1
  # The footer names postbox on purpose (.Os postbox, not the reader's system): the one
  # style message about it is expected.
  grep -v -e 'referenced manual not found' -e 'outdated mandoc.db' \
    -e 'STYLE: operating system explicitly specified: Os postbox' "$tmp/lint" >"$tmp/lint2"
  if [ -s "$tmp/lint2" ]; then fail "mandoc -T lint $page"; cat "$tmp/lint2" >&2; else pass; fi
  if grep -qx '\.Os postbox' "$page"; then pass; else fail "$page: the footer does not name postbox (.Os postbox)"; fi
done

# postboxctl(1) documents every command of postboxctl --help (and backup, added with the
# admin API's backup), its environment, files and exit status
cmds=$("$build/postboxctl" --help | sed -n '/^commands:/,$p' | sed -n 's/^  \([a-z][a-z-]*\).*/\1/p')
for c in $cmds backup; do
  if grep -q "^\.It Cm $c\( \|\$\)" "$src/man/postboxctl.1"; then pass; else
    fail "postboxctl.1 does not document the command $c"; fi
done
for sec in ENVIRONMENT FILES 'EXIT STATUS'; do
  if grep -qx "\.Sh $sec" "$src/man/postboxctl.1"; then pass; else fail "postboxctl.1 lacks $sec"; fi
done
for v in POSTBOX_ADMIN POSTBOX_ADMIN_TOKEN_FILE POSTBOX_CONFIG; do
  if grep -qx "\.It Ev $v" "$src/man/postboxctl.1"; then pass; else fail "postboxctl.1 lacks $v"; fi
done
if grep -q -- '--allow-private-peers yes' "$src/man/postboxd.8"; then pass; else
  fail "postboxd.8 EXAMPLES lack --allow-private-peers yes"; fi

"$build/postboxd" --check-config >"$tmp/defaults" 2>&1 || fail "postboxd --check-config"
n=0
while IFS= read -r line; do
  name=${line%% = *} value=${line#* = }
  n=$((n + 1))
  if grep -qx ".It Cm $name" "$build/generated/postbox.conf.5"; then pass; else
    fail "postbox.conf.5 does not document $name"; fi
  if grep -qx "#$name =\( $value\)\{0,1\}" "$build/generated/postbox.conf"; then pass; else
    fail "postbox.conf does not show $name with its default"; fi
done <"$tmp/defaults"
if [ "$n" -ge 30 ]; then pass; else fail "only $n settings in postboxd --check-config"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
