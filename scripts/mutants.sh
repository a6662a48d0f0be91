#!/usr/bin/env bash
# Mutation testing of the security-critical code, outside .ci/run (hours on 2 cores):
#   scripts/mutants.sh [GROUP…]   groups: crl tls one_time routes files watch history state registry
#   flash ca types config verified board sandbox health lab serve_mod build_core build_media codesign
# MUTANTS_FLAGS adds cargo-mutants flags, e.g. MUTANTS_FLAGS=--in-place in a worktree of its own
# (keeps one warm target dir for every group instead of a cold copy per group).
# Each group mutates its files with cargo-mutants (`cargo install cargo-mutants`) and runs only
# the tests that exercise them, so that a mutant costs a relink and seconds of tests, not the
# whole suite. Results: mutants.out-GROUP/ (caught.txt, missed.txt, timeout.txt, unviable.txt);
# MUTANTS.md records the last run and why each survivor is accepted.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debug info off: linking the test binaries is most of a mutant's cost.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0
group() { # NAME "FILES" TEST-FILTERS…
  local name=$1 files=$2; shift 2
  local f=()
  for x in $files; do f+=(-f "$x"); done
  # shellcheck disable=SC2086 # MUTANTS_FLAGS is a list of flags
  # A mutant that loops forever is caught by the timeout: 2× the clean run is plenty.
  cargo mutants --no-shuffle --timeout-multiplier 2 -o "mutants.out-$name" ${MUTANTS_FLAGS:-} \
    "${f[@]}" \
    -- --lib --test integration -- "$@" || true
  echo "== $name: $(wc -l < "mutants.out-$name/mutants.out/caught.txt") caught," \
       "$(wc -l < "mutants.out-$name/mutants.out/missed.txt") missed," \
       "$(wc -l < "mutants.out-$name/mutants.out/timeout.txt") timeout," \
       "$(wc -l < "mutants.out-$name/mutants.out/unviable.txt") unviable"
}
all=("$@")
run() { local g=$1; shift; if [ ${#all[@]} -eq 0 ] || [[ " ${all[*]} " == *" $g "* ]]; then group "$g" "$@"; fi; }
run crl src/server/crl.rs crl revoke mutations::bug_a_crl hostile::the_crl_never_goes_backwards
run tls src/server/tls.rs server::ecdsa server::sessions server::each_board ops::server_cert \
  boots_over_mutual_tls
run one_time src/server/one_time.rs one_time one_time_urls_do_not_pile_up secrets_never_need_the_command_line
run routes src/server/routes.rs server:: mutations:: trust:: ops::history ops::renew ops::a_revoked \
  a_local_process_cannot_impersonate no_request_path_reaches_a_panic durations_are_bounded secrets_never_need_the_command_line
run files src/server/files.rs server::files server::sigterm no_race_or_link_serves_key_material a_files_dir_that_holds_keys no_request_path_reaches_a_panic durations_are_bounded trust::boot_files \
  hostile::a_files_symlink files_root:: stalls::
run watch "src/store/watch.rs src/store/cached.rs" watch:: registry:: render:: crl server::boot_scripts server::a_state_dir
run history src/store/history.rs history:: ops::history server::a_state_dir console::
run console "src/server/console.rs src/ipxe_error/mod.rs" console::console_lines console::the_error_table \
  ipxe_error:: guard::tests::a_board_has
run state src/store/state.rs state:: mutations::bug_atomic mutations::bug_secrets mutations::bug_enroll \
  mutations::bug_unreadable board_names_never_collide crash_leftovers_are_never_inherited ops::server_cert_rotation server::template_errors \
  no_race_or_link_serves_key_material a_files_dir_that_holds_keys a_local_process_cannot_impersonate the_crl_never_goes_backwards ops::history server::one_time foundation::bad_input \
  build::prebuilt build::a_replaced build::builds_in_one_tree
run registry src/store/registry.rs registry mutations::bug_an_index mutations::bug_a_stale \
  mutations::bug_a_second mutations::bug_unreadable mutations::bug_enroll foundation::register \
  foundation::twenty foundation::list_expiring server::each_board server::revoke board_names_never_collide crash_leftovers_are_never_inherited \
  mutations::bug_a_failed ops::renew operator::
run flash src/flash.rs flash::
run ca src/ca.rs ca:: foundation::init foundation::enrolled foundation::csr foundation::non_rsa \
  foundation::revoked foundation::adopted foundation::register foundation::bad_input \
  trust::signing proptests::mutated ops::renew server::server_cert_adds mutations::bug_a_crl \
  the_crl_never_goes_backwards
run types src/types.rs types:: proptests:: server::proxy server::each_board \
  mutations::bug_a_wrong_mac foundation::bad_input
run config src/store/config.rs config:: server::a_config_toml server::each_board foundation::
run verified src/server/verified.rs verified:: server::each_board server::revoke server::ecdsa ops::renew \
  a_revoked mutations::bug_a_crl
run board src/board.rs board:: foundation::list_expiring foundation::enrolled ops::renew \
  ops::history operator:: mutations::bug_a_stale
run sandbox src/server/sandbox.rs sandbox:: confinement:: files_root:: server::files
run health src/health.rs health:: foundation::list_expiring ops::config_points ops::server_cert \
  server::each_board operator::
run lab "src/lab/mod.rs src/lab/boards.rs src/lab/crl.rs src/lab/health.rs src/lab/init.rs \
  src/lab/server.rs" lab:: foundation:: ops::renew ops::a_revoked ops::config_points operator:: \
  mutations:: confinement::an_older secure_boot::check_and_doctor
run serve_mod "src/server/mod.rs src/server/nginx.rs" server::sigterm server::proxy \
  server::metrics server::workers server::a_state_dir confinement:: ops::history_and_metrics \
  stalls:: hostile::
# The build in two halves (a mutant costs the build:: tests, about 30 s): what goes into an
# image (make, the staged key and CA, the farm route), then the media around it.
run build_core "src/ipxe_build/mod.rs src/ipxe_build/make.rs" build:: arm64::an_unknown \
  secure_boot::build_signs arm64::source_built
run build_media "src/ipxe_build/image.rs src/ipxe_build/prebuilt.rs src/ipxe_build/doctor.rs" \
  build:: arm64::an_unknown secure_boot::build_signs
run codesign src/codesign.rs codesign:: trust::boot_files_are_signed trust::signing_refuses \
  operator::a_symlinked_boot_file files_root::key_material secure_boot::build_signs \
  secure_boot::a_secure_boot_key_that_cannot secure_boot::check_and_doctor
