#!/bin/sh
# readme_test - the README's walkthrough ("Walkthrough: two servers on 127.0.0.1"), run as
# written: the lines of its sh block are taken from README.md now, not copied here, and
# run by sh in a directory whose build/ is the build under test (the block's first line,
# `make`, is the suite's own build, so `make` does nothing here). Then its output must
# show what the comments say: the submission's sequence numbers, B's inbox with both
# events and the invite's notice, the guild and invite tables, one delivery log line on
# each side with those numbers, the removal caught up after B's restart, and the rename.
# The block uses the fixed ports 7001, 7002, 7101, 7102 (two runs at once need network
# namespaces of their own) and /tmp/pbA, /tmp/pbB, which this test moves into its own
# temporary directory (the one change to the block), so that runs side by side do not
# share them.
#
#   readme_test.sh SRC BUILD      prints "N passed, N failed"; exit 0 only when nothing failed
set -u
src=$1 build=$2
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/postbox-readme-XXXXXX")
pid=
cleanup() {
  # the walkthrough's daemons, if it stopped before its last line: its own process group
  [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null
  rm -rf "$tmp"   # with the walkthrough's data directories (their logs were shown)
}
trap cleanup EXIT

awk '/^## Walkthrough/ { w = 1 } w && /^```sh$/ { b = 1; next } b && /^```$/ { exit } b { print }' \
  "$src/README.md" >"$tmp/block.sh"
n=$(wc -l <"$tmp/block.sh")
if [ "$n" -ge 20 ]; then pass; else fail "the walkthrough block has only $n lines"; fi
sed "s#/tmp/pb\([AB]\)#$tmp/pb\1#g" "$tmp/block.sh" >"$tmp/walk.sh"
if grep -q "$tmp/pbA" "$tmp/walk.sh" && grep -q "$tmp/pbB" "$tmp/walk.sh" &&
   ! grep -q '/tmp/pb[AB]' "$tmp/walk.sh"; then pass; else fail "the block's /tmp/pbA, /tmp/pbB not moved"; fi
mkdir "$tmp/top"
ln -s "$(cd "$build" && pwd)" "$tmp/top/build"
{
  echo 'make() { :; }   # the suite built build/ already'
  cat "$tmp/walk.sh"
} >"$tmp/run.sh"

start=$(date +%s)
(cd "$tmp/top" && exec setsid sh "$tmp/run.sh") >"$tmp/out" 2>&1 &
pid=$!
# bounded: the block waits at most 10 + 30 + 10 s for events and 30 s per `wait`
# (the first Push to a new peer carries one event: B's inbox is read once the second is in)
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
if kill -0 "$pid" 2>/dev/null; then fail "the walkthrough did not end within 180 s"; else pass; fi
wait "$pid"
echo "the walkthrough took $(($(date +%s) - start)) s"

expect() {
  if grep -q -- "$1" "$tmp/out"; then pass; else fail "the output lacks: $1"; fi
}
expect '^accepted 2 (seq 1-2)$'
expect '^SEQ  FROM  KIND  DETAILS$'
expect '^1  127.0.0.1:7001  userInvited  .*inviteId=welcome.*notice: inviteReceived'
expect '^2  127.0.0.1:7001  userAddedToGuild  userId=5 guildId=77'
expect '^77  *127.0.0.1:7001$'
expect '^welcome  *127.0.0.1:7001  *1$'
# (the first Push to a peer not yet known as a postbox carries one event)
expect 'peer=127.0.0.1:7002 push sent kind=push first_seq=1 last_seq=[12] events=[12] '
expect 'peer=127.0.0.1:7001 push received kind=push first_seq=1 last_seq=[12] events=[12] '
expect '^accepted 1 (seq 3)$'
expect '^3  127.0.0.1:7001  userRemovedFromGuild  userId=5 guildId=77'
expect 'serverRenamed  127.0.0.1:7001 -> localhost:7001'
if grep -q 'postboxctl:' "$tmp/out"; then fail "postboxctl reported an error"; else pass; fi
if [ "$failed" -gt 0 ]; then
  echo "---- the walkthrough's output ----" >&2
  cat "$tmp/out" >&2
  for l in "$tmp/pbA/log" "$tmp/pbB/log"; do echo "---- $l (last lines) ----" >&2; tail -20 "$l" >&2; done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
