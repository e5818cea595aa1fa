#!/usr/bin/env bash
# `make mutants`: each deliberate bug of the publish-safety issue, applied alone to a copy of the
# working tree, must make at least one of its named tests fail. Prints caught/missed per mutant;
# exits 1 when any is missed. Not part of `make test` (about 3 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
declare -A TESTS=(
  [flip_ignores_expected]="tests/integration/publish/test_protocol_primitives.py::test_the_flip_refuses_a_record_it_did_not_expect"
  [verify_skips_a_bucket]="tests/integration/publish/test_protocol_primitives.py::test_verify_checks_every_bucket"
  [gc_ignores_grace]="tests/integration/publish/test_protocol_primitives.py::test_gc_keeps_a_replaced_version_for_the_grace_period"
  [renewal_does_nothing]="tests/integration/publish/test_protocol_primitives.py::test_the_lock_is_renewed_while_a_publish_outlives_its_ttl"
  [reference_is_first_version]="tests/integration/publish/test_publication_safety.py::test_16_a_commit_that_was_never_served_is_not_the_reference_and_reconcile_finishes_it"
  [null_key_check_removed]="tests/integration/test_bad_input.py -k null"
  [failed_attempts_committed]="tests/integration/storage/test_s3_faults.py::test_a_task_killed_after_writing_its_file_commits_its_rows_once"
  [commit_ignores_expected]="tests/integration/storage/test_s3_faults.py::test_two_committers_racing_one_table_version_on_s3"
  [resume_ignores_content]="tests/integration/publish/test_protocol_primitives.py::test_resume_reuses_only_a_version_of_the_same_content tests/integration/publish/test_publication_safety.py::test_5_a_loaded_version_is_reused_only_for_the_same_content"
)
missed=0
for patch in mutants/*.patch; do
  name=$(basename "$patch" .patch)
  work=$(mktemp -d)
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
  if ! patch -s -d "$work" -p1 < "$patch"; then
    echo "mutant $name: patch does not apply (update mutants/$name.patch)"; missed=1; rm -rf "$work"; continue
  fi
  # shellcheck disable=SC2086
  (cd "$work" && PYTHONPATH="$work" PYSPARK_PYTHON="$PY" "$PY" -m pytest -q -x -p no:cacheprovider ${TESTS[$name]} \
     >"$work/.out" 2>&1)
  rc=$?
  if [ $rc -eq 1 ]; then echo "mutant $name: caught"; else echo "mutant $name: MISSED (pytest exit $rc)"; tail -3 "$work/.out"; missed=1; fi
  rm -rf "$work"
done
exit $missed
