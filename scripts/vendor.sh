#!/usr/bin/env bash
# The vendored crates (vendor/<crate>) as upstream's published package plus
# patch files, reproducibly.
#
#   bash scripts/vendor.sh check [CRATE...] [--no-test]
#       Rebuild each vendored crate from the published package (fetched with
#       cargo), its removal list and its patch files, and compare with
#       vendor/<crate>; then run the vendored crates' unit tests. Exits
#       non-zero, with the diff, when they differ. Seconds when cargo has
#       the packages; the tests build in $CARGO_TARGET_DIR/vendor-check
#       (the first time: the crate's dependencies, a few minutes).
#   bash scripts/vendor.sh refresh CRATE [PATCH | --new NAME]
#       After editing vendor/<crate>: write the edit into patch file PATCH
#       (its number, e.g. 4, or its file name; the patches after it are
#       rebased onto it), or into a new last patch NNNN-NAME.patch. Without
#       an argument: rewrite the patch files from the series as it is
#       (fails, listing the changes, when vendor/<crate> has edits no patch
#       holds).
#   bash scripts/vendor.sh upgrade CRATE VERSION
#       Move vendor/<crate> to another published version: the patches are
#       rebased onto it (git, three-way) and the patch files rewritten.
#   bash scripts/vendor.sh continue CRATE
#       After a refresh or upgrade stopped on a conflict that you resolved
#       in its work repository (the message says where): finish it.
#
# Layout, per crate:
#   vendor/<crate>/                 the patched source cargo builds ([patch.crates-io])
#   vendor/<crate>/PATCHES.md       what each patch does and why (not part of the package)
#   vendor/<crate>/patches/removed-files
#                                   package paths deleted before patching, one a line
#   vendor/<crate>/patches/NNNN-*.patch
#                                   unified diffs (git apply / patch -p1), applied in order;
#                                   text before the first "diff --git" line is a description
# The upstream name and version are the [package] name and version in
# vendor/<crate>/Cargo.toml. The published package is cargo's own download
# (the .crate in $CARGO_HOME/registry/cache, fetched by `cargo fetch` in a
# throwaway project when missing), so only the package registry is used.
set -euo pipefail
orig_pwd="$PWD"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

CRATES=(bullmq-official redis wasmtime)
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$orig_pwd/$target_dir" ;; esac
work_root="$target_dir/vendor-work"

say() { printf '\033[1m[vendor]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# git without the user's or the system's configuration (diff prefixes,
# abbreviations, algorithms, hooks, signing), with fixed identities and dates.
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY
g() {
  GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 \
    GIT_AUTHOR_NAME=vendor.sh GIT_AUTHOR_EMAIL=vendor.sh@localhost GIT_AUTHOR_DATE=2000-01-01T00:00:00Z \
    GIT_COMMITTER_NAME=vendor.sh GIT_COMMITTER_EMAIL=vendor.sh@localhost GIT_COMMITTER_DATE=2000-01-01T00:00:00Z \
    git -c init.defaultBranch=series -c core.autocrlf=false -c core.fileMode=true -c core.hooksPath=/dev/null \
    -c commit.gpgSign=false -c advice.detachedHead=false "$@"
}
# The patch files' diff: full blob ids (what `git apply --3way` needs), a/ b/
# prefixes, three lines of context, no renames, Myers.
patch_diff() { g diff --no-color --no-ext-diff --no-renames --full-index --diff-algorithm=myers -U3 --src-prefix=a/ --dst-prefix=b/ "$@"; }

# Temporary directories, all under one that goes when the script ends
# (new_tmp runs in $(...), a subshell, so it cannot keep a list).
tmp_root="$(mktemp -d "${TMPDIR:-/tmp}/vendor-sh.XXXXXX")"
trap 'rm -rf "$tmp_root"' EXIT
new_tmp() { mktemp -d "$tmp_root/XXXXXX"; }

known_crate() {
  local c
  for c in "${CRATES[@]}"; do [ "$c" = "$1" ] && return 0; done
  die "unknown crate '$1' (vendored: ${CRATES[*]})"
}

# pkg CRATE FIELD: the [package] name or version in vendor/CRATE/Cargo.toml.
pkg() {
  local v
  v="$(awk -v f="$2" '/^\[/ { p = ($0 == "[package]") } p && $1 == f && $2 == "=" { gsub(/"/, "", $3); print $3; exit }' "vendor/$1/Cargo.toml")"
  [ -n "$v" ] || die "no [package] $2 in vendor/$1/Cargo.toml"
  echo "$v"
}

crate_file() { # NAME VERSION: cargo's downloaded package, if there
  local f
  for f in "$cargo_home"/registry/cache/*/"$1-$2.crate"; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  return 1
}
src_dir() { # NAME VERSION: cargo's unpacked package, if there
  local d
  for d in "$cargo_home"/registry/src/*/"$1-$2"; do
    if [ -f "$d/Cargo.toml" ]; then echo "$d"; return 0; fi
  done
  return 1
}

# ensure_fetched NAME=VERSION...: cargo downloads the packages missing from
# its cache, through a throwaway project that depends on exactly them (no
# [patch]), for the host target only.
ensure_fetched() {
  local missing=() nv i=0 p host
  for nv in "$@"; do
    crate_file "${nv%%=*}" "${nv#*=}" >/dev/null || src_dir "${nv%%=*}" "${nv#*=}" >/dev/null || missing+=("$nv")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "fetching ${missing[*]/=/ } with cargo"
  p="$(new_tmp)"
  mkdir "$p/src"
  : >"$p/src/lib.rs"
  {
    printf '[package]\nname = "vendor-sh-pristine"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[workspace]\n\n[dependencies]\n'
    for nv in "${missing[@]}"; do
      printf 'p%d = { package = "%s", version = "=%s" }\n' "$i" "${nv%%=*}" "${nv#*=}"
      i=$((i + 1))
    done
  } >"$p/Cargo.toml"
  host="$(rustc -vV | sed -n 's/^host: //p')"
  (cd "$p" && cargo fetch --quiet --target "$host") || die "cargo could not fetch ${missing[*]}"
  for nv in "${missing[@]}"; do
    crate_file "${nv%%=*}" "${nv#*=}" >/dev/null || src_dir "${nv%%=*}" "${nv#*=}" >/dev/null ||
      die "cargo fetched, yet ${nv%%=*} ${nv#*=} is not in $cargo_home/registry"
  done
}

# unpack NAME VERSION DEST: the published package's files into DEST (new).
unpack() {
  local f d t
  if f="$(crate_file "$1" "$2")"; then
    t="$(new_tmp)"
    tar -xzf "$f" -C "$t"
    [ -d "$t/$1-$2" ] || die "$f does not hold $1-$2/"
    mv "$t/$1-$2" "$3"
  elif d="$(src_dir "$1" "$2")"; then
    cp -a "$d" "$3"
    rm -f "$3/.cargo-ok" # cargo's unpack marker, not in the package
  else
    die "$1 $2 is not in cargo's cache"
  fi
}

# apply_removals CRATE TREE: delete what patches/removed-files lists.
apply_removals() {
  local list="vendor/$1/patches/removed-files" path
  [ -f "$list" ] || return 0
  while IFS= read -r path || [ -n "$path" ]; do
    path="${path%%#*}"
    path="$(printf '%s' "$path" | sed 's/[[:space:]]*$//; s/^[[:space:]]*//')"
    [ -n "$path" ] || continue
    case "/$path/" in
      */../* | //*) die "$list: '$path' is not a path inside the package" ;;
    esac
    [ -e "$2/$path" ] || die "$list: '$path' is not in the package (a new upstream version?)"
    rm -rf -- "${2:?}/$path"
  done <"$list"
}

patch_files() { # CRATE: the patch files, in order
  local f
  for f in "vendor/$1"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -f "$f" ] && echo "$f"
  done
  return 0
}

# build_series CRATE VERSION W: a git repository in W/tree with one commit
# per step: the package (tag `upstream`), the removals (tag `base`), then
# one commit per patch file, its subject the file's name.
build_series() {
  local crate=$1 version=$2 W=$3 name p
  name="$(pkg "$crate" name)"
  ensure_fetched "$name=$version"
  rm -rf "$W"
  mkdir -p "$W"
  unpack "$name" "$version" "$W/tree"
  (
    cd "$W/tree"
    g init -q
    g add -A -f
    g commit -q -m "upstream: $name $version"
    g tag upstream
  )
  apply_removals "$crate" "$W/tree"
  (
    cd "$W/tree"
    g add -A -f
    g commit -q --allow-empty -m "removed-files"
    g tag base
  )
  while IFS= read -r p; do
    [ -n "$p" ] || continue
    (
      cd "$W/tree"
      g apply --index --whitespace=nowarn "$root/$p" ||
        die "$p does not apply to $name $version (after the patches before it)"
      g commit -q --allow-empty -m "$(basename "$p")"
    )
  done < <(patch_files "$crate")
}

# vendor_copy CRATE DEST: vendor/CRATE without what is bullpen's own
# (PATCHES.md, patches/) or a build's (target/).
vendor_copy() {
  local e
  mkdir -p "$2"
  for e in "vendor/$1"/* "vendor/$1"/.[!.]* "vendor/$1"/..?*; do
    [ -e "$e" ] || continue
    case "${e##*/}" in PATCHES.md | patches | target) continue ;; esac
    cp -a "$e" "$2/"
  done
}

# tree_diff A B: diff -r, .git aside; status 1 when they differ.
tree_diff() { diff -ru -x .git "$1" "$2"; }

# sync_tree CRATE W: make W/tree's files vendor/CRATE's (and stage them).
sync_tree() {
  local e
  for e in "$2/tree"/* "$2/tree"/.[!.]* "$2/tree"/..?*; do
    [ -e "$e" ] || continue
    [ "${e##*/}" = .git ] && continue
    rm -rf -- "$e"
  done
  vendor_copy "$1" "$2/tree"
  (cd "$2/tree" && g add -A -f)
}

default_header() { # SUBJECT CRATE
  printf '%s (%s, see vendor/%s/PATCHES.md).\n' "${1%.patch}" "$2" "$2"
  printf 'Written by scripts/vendor.sh refresh: edit vendor/%s, then run it.\n\n' "$2"
}

# write_patches CRATE W: one patch file per commit after `base`, named by
# its subject; the description above the diff is kept.
write_patches() {
  local crate=$1 W=$2 dir="vendor/$1/patches" c subject file kept=() f header
  mkdir -p "$dir"
  for c in $(cd "$W/tree" && g rev-list --reverse base..HEAD); do
    subject="$(cd "$W/tree" && g log -1 --format=%s "$c")"
    case "$subject" in [0-9][0-9][0-9][0-9]-*.patch) ;; *) die "commit $c in $W/tree: subject '$subject' is not a patch file name" ;; esac
    file="$dir/$subject"
    if [ -f "$file" ]; then
      header="$(sed '/^diff --git /,$d' "$file")"
    else
      header="$(default_header "$subject" "$crate")"
    fi
    (cd "$W/tree" && patch_diff "$c^" "$c") >"$file.new"
    if [ ! -s "$file.new" ]; then
      rm -f "$file.new" "$file"
      say "warning: $subject is empty now: removed (renumber the rest if you like, and update PATCHES.md)"
      continue
    fi
    { printf '%s\n\n' "$header" | cat -s; cat "$file.new"; } >"$file.tmp"
    # A header ends with one blank line (cat -s squeezes repeated ones).
    mv "$file.tmp" "$file"
    rm -f "$file.new"
    kept+=("$file")
  done
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    case " ${kept[*]} " in *" $f "*) ;; *)
      rm -f "$f"
      say "removed $f (no longer in the series)"
      ;;
    esac
  done < <(patch_files "$crate")
}

# finish CRATE W: the series in W done: write its patch files, and (for an
# upgrade) its tree into vendor/CRATE; then the tree must be vendor/CRATE's.
finish() {
  local crate=$1 W=$2 op e v
  op="$(cat "$W/op" 2>/dev/null || echo refresh)"
  if [ -d "$W/tree/.git/rebase-merge" ] || [ -d "$W/tree/.git/rebase-apply" ]; then
    die "a rebase is still going on in $W/tree: finish it (git status; git add; git rebase --continue) first"
  fi
  (cd "$W/tree" && g diff --quiet HEAD && g diff --cached --quiet HEAD) ||
    die "$W/tree has changes not committed: commit them (git commit --amend into the patch they belong to) first"
  write_patches "$crate" "$W"
  if [ "$op" = upgrade ]; then
    for e in "vendor/$crate"/* "vendor/$crate"/.[!.]* "vendor/$crate"/..?*; do
      [ -e "$e" ] || continue
      case "${e##*/}" in PATCHES.md | patches | target) continue ;; esac
      rm -rf -- "$e"
    done
    for e in "$W/tree"/* "$W/tree"/.[!.]* "$W/tree"/..?*; do
      [ -e "$e" ] || continue
      [ "${e##*/}" = .git ] && continue
      cp -a "$e" "vendor/$crate/"
    done
    v="$(pkg "$crate" version)"
    say "vendor/$crate is now $(pkg "$crate" name) $v with its patches: update the version in PATCHES.md and the workspace, then check, build and test"
  fi
  verify "$crate" >/dev/null ||
    die "the patch files are written, but they do not rebuild vendor/$crate exactly (a conflict resolved otherwise than vendor/$crate has it?): bash scripts/vendor.sh check $crate --no-test shows the difference; fold it into its patch with refresh $crate <patch>"
  rm -rf "$W"
  say "vendor/$crate/patches written; review with git diff, then commit them with the source"
}

# verify CRATE: rebuild vendor/CRATE from the package and its patches; the
# diff on stdout, status 1 when they differ.
verify() {
  local crate=$1 t version
  version="$(pkg "$crate" version)"
  t="$(new_tmp)"
  build_series "$crate" "$version" "$t/s"
  vendor_copy "$crate" "$t/vendor"
  tree_diff "$t/s/tree" "$t/vendor"
}

unit_tests() { # CRATE: the vendored crate's own unit tests, where we keep some
  local crate=$1 d
  case "$crate" in
    bullmq-official)
      # A copy that is its own workspace (vendor/ sits inside bullpen's), with
      # bullpen's Cargo.lock (the versions bullpen builds with, no resolution
      # on the network) and the vendored redis; mtimes kept, so an unchanged
      # crate is not compiled again.
      d="$target_dir/vendor-check/$crate"
      mkdir -p "$d"
      rm -rf "$d/src"
      cp -a "vendor/$crate/src" "$d/"
      { cat "vendor/$crate/Cargo.toml"; printf '\n# scripts/vendor.sh: a workspace of its own\n[workspace]\n'; } >"$d/Cargo.toml.new"
      if cmp -s "$d/Cargo.toml.new" "$d/Cargo.toml"; then rm "$d/Cargo.toml.new"; else mv "$d/Cargo.toml.new" "$d/Cargo.toml"; fi
      if [ ! -f "$d/Cargo.lock" ] || [ Cargo.lock -nt "$d/Cargo.lock" ]; then cp Cargo.lock "$d/Cargo.lock"; fi
      # The patches' tests only: modules named bullpen_tests (upstream's unit
      # tests in src/scripts.rs want a Redis on 127.0.0.1:6379 and flush its
      # script cache; runtime's tests cover the rest against real servers).
      say "unit tests of vendor/$crate's patches (cargo test --lib bullpen_tests)"
      (cd "$d" && cargo test --quiet --lib --target-dir "$target_dir/vendor-check/target" \
        --config "patch.crates-io.redis.path=\"$root/vendor/redis\"" bullpen_tests) ||
        die "vendor/$crate's unit tests failed"
      ;;
    *) ;; # redis: its parser is tested by runtime/src/redis_codec_tests.rs (cargo test --workspace)
  esac
}

cmd_check() {
  local crates=() test=1 a crate t failed=0
  for a in "$@"; do
    case "$a" in
      --no-test) test=0 ;;
      -*) die "check: unknown option $a" ;;
      *) known_crate "$a"; crates+=("$a") ;;
    esac
  done
  [ ${#crates[@]} -gt 0 ] || crates=("${CRATES[@]}")
  # One cargo fetch for every package missing from the cache.
  a=()
  for crate in "${crates[@]}"; do a+=("$(pkg "$crate" name)=$(pkg "$crate" version)"); done
  ensure_fetched "${a[@]}"
  for crate in "${crates[@]}"; do
    t="$(new_tmp)"
    if verify "$crate" >"$t/diff"; then
      say "vendor/$crate = $(pkg "$crate" name) $(pkg "$crate" version) + removed-files + $(patch_files "$crate" | wc -l) patches"
    else
      cat "$t/diff"
      say "vendor/$crate differs from $(pkg "$crate" name) $(pkg "$crate" version) + its removals and patches (diff above: the rebuilt package first, vendor/$crate second)."
      say "If vendor/$crate is right, fold the change into a patch: bash scripts/vendor.sh refresh $crate <patch number> (or --new <name>)"
      failed=1
    fi
  done
  [ "$failed" = 0 ] || exit 1
  if [ "$test" = 1 ]; then
    for crate in "${crates[@]}"; do unit_tests "$crate"; done
  fi
}

cmd_refresh() {
  [ $# -ge 1 ] || die "usage: vendor.sh refresh CRATE [PATCH | --new NAME]"
  local crate=$1 target="${2:-}" W version subject n f
  known_crate "$crate"
  version="$(pkg "$crate" version)"
  W="$work_root/$crate"
  build_series "$crate" "$version" "$W"
  echo refresh >"$W/op"
  sync_tree "$crate" "$W"
  if (cd "$W/tree" && g diff --cached --quiet HEAD); then
    [ -z "$target" ] || say "vendor/$crate has no change its patches do not hold: nothing to fold into $target"
    finish "$crate" "$W"
    return
  fi
  case "$target" in
    "")
      (cd "$W/tree" && g diff --cached --stat HEAD) >&2
      die "vendor/$crate has changes no patch holds (above). Say where they go: bash scripts/vendor.sh refresh $crate <patch number>, or --new <name> for a new last patch"
      ;;
    --new)
      [ -n "${3:-}" ] || die "usage: vendor.sh refresh CRATE --new NAME"
      case "$3" in *[!a-z0-9-]*) die "--new NAME: lower case letters, digits and dashes" ;; esac
      n="$(patch_files "$crate" | wc -l)"
      f="$(patch_files "$crate" | tail -n 1)"
      if [ -n "$f" ]; then n=$((10#$(basename "$f" | cut -c1-4))); fi
      subject="$(printf '%04d-%s.patch' $((n + 1)) "$3")"
      (cd "$W/tree" && g commit -q -m "$subject")
      ;;
    *)
      subject=""
      while IFS= read -r f; do
        [ -n "$f" ] || continue
        f="$(basename "$f")"
        case "$target" in
          "$f" | "${f%.patch}") subject="$f" ;;
          *[!0-9]*) ;;
          *) [ "$((10#$target))" = "$((10#${f:0:4}))" ] && subject="$f" ;;
        esac
      done < <(patch_files "$crate")
      [ -n "$subject" ] || die "no patch '$target' in vendor/$crate/patches"
      (
        cd "$W/tree"
        g commit -q -m "fixup! $subject"
        if ! GIT_SEQUENCE_EDITOR=true g rebase -q -i --autosquash base >/dev/null 2>"$W/rebase.log"; then
          cat "$W/rebase.log" >&2
          say "the change does not fold into $subject cleanly (above): it touches lines a later patch adds or changes."
          say "Resolve it in $W/tree (git status; edit; git add; git rebase --continue), then: bash scripts/vendor.sh continue $crate"
          say "(or give up: rm -rf $W, and fold the change into a later patch instead)"
          exit 1
        fi
      )
      ;;
  esac
  finish "$crate" "$W"
}

cmd_upgrade() {
  [ $# -eq 2 ] || die "usage: vendor.sh upgrade CRATE VERSION"
  local crate=$1 new=$2 W name old t
  known_crate "$crate"
  name="$(pkg "$crate" name)"
  old="$(pkg "$crate" version)"
  [ "$old" != "$new" ] || die "vendor/$crate is $name $new already"
  t="$(new_tmp)"
  verify "$crate" >"$t/diff" || die "vendor/$crate differs from its patches: refresh them first (bash scripts/vendor.sh check $crate --no-test shows how)"
  W="$work_root/$crate"
  build_series "$crate" "$old" "$W"
  echo upgrade >"$W/op"
  ensure_fetched "$name=$new"
  unpack "$name" "$new" "$t/new"
  apply_removals "$crate" "$t/new"
  (
    cd "$W/tree"
    g checkout -q --orphan new-base
    g rm -rfq --cached .
    find . -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
    cp -a "$t/new/." .
    g add -A -f
    g commit -q -m "upstream: $name $new, removed-files"
    g checkout -q -f series
    if ! g rebase -q --onto new-base base series >/dev/null 2>"$W/rebase.log"; then
      cat "$W/rebase.log" >&2
      say "a patch does not apply to $name $new (above)."
      say "Resolve it in $W/tree (git status; edit; git add; git rebase --continue), then: bash scripts/vendor.sh continue $crate"
      exit 1
    fi
  )
  (cd "$W/tree" && g tag -f base new-base >/dev/null)
  finish "$crate" "$W"
}

cmd_continue() {
  [ $# -eq 1 ] || die "usage: vendor.sh continue CRATE"
  local crate=$1 W
  known_crate "$crate"
  W="$work_root/$crate"
  [ -f "$W/op" ] || die "no refresh or upgrade of $crate to continue ($W)"
  if [ "$(cat "$W/op")" = upgrade ]; then (cd "$W/tree" && g tag -f base new-base >/dev/null); fi
  finish "$crate" "$W"
}

case "${1:-}" in
  check) shift; cmd_check "$@" ;;
  refresh) shift; cmd_refresh "$@" ;;
  upgrade) shift; cmd_upgrade "$@" ;;
  continue) shift; cmd_continue "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
