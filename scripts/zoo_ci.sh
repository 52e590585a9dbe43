#!/usr/bin/env bash
# Run the MONAI model zoo's own CI on this project's bundle, as a zoo maintainer would at a pull request.
#
#   scripts/zoo_ci.sh ZOO [MODEL] [WORK]
#
# ZOO    a Project-MONAI/model-zoo checkout (a folder with ci/) or its git directory (ci/ is taken from HEAD)
# MODEL  a `monai-pipeline train` model.pt exported into the bundle copy (default: the suite's golden model)
# WORK   where the zoo layout is built (default: a new temporary folder), kept afterwards
# SCHEMA (environment) the metadata schema file, when prepare_schema.py cannot download it (no internet)
#
# Steps, each printed as "== step": the bundle requirements the zoo installs (get_bundle_requirements.py; the
# monai-pipeline pin resolved against a wheel built from this checkout, the others against the package index),
# the zoo's pre-commit hooks on the bundle files, verify_bundle.py -m min without weights (its download step
# fails: large_files.yml has no url, this project hosts no weights), then with a model exported into the copy
# -m min and -m full, then the zoo's unit-test runner with bundles/zoo_ci/test_lung_nodule_ct_segmentation.py.
# Exit status 0 only when every step but the expected download failure passes.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ZOO=${1:?usage: scripts/zoo_ci.sh ZOO [MODEL] [WORK]}
MODEL=${2:-$REPO/tests/integration/golden/model.pt}
WORK=${3:-$(mktemp -d)}
BUNDLE=lung_nodule_ct_segmentation
SCHEMA=${SCHEMA:+$(realpath "$SCHEMA")}
PY=${PYTHON:-python}
step() { echo "== $*"; }

step "zoo layout in $WORK"
mkdir -p "$WORK/models"
if [ -d "$ZOO/ci" ]; then
    cp -r "$ZOO/ci" "$WORK/"
else
    git --git-dir="$ZOO" archive HEAD ci | tar -x -C "$WORK"
fi
rm -rf "${WORK:?}/models/$BUNDLE"
cp -r "$REPO/bundles/$BUNDLE" "$WORK/models/"
(cd "$WORK/models/$BUNDLE" && rm -rf eval output logs models/*.pt models/*.ts models/pipeline.yaml \
    models/model_card.json models/operating_point.json)
echo '{}' > "$WORK/models/model_info.json"   # the zoo's released-versions list: this bundle has none yet
cp "$REPO/bundles/zoo_ci/test_$BUNDLE.py" "$WORK/ci/unit_tests/"
cd "$WORK"

step "requirements (ci/get_bundle_requirements.py)"
REQ=$($PY ci/get_bundle_requirements.py -b $BUNDLE -p models)
cat "$REQ"
$PY -m build --wheel --no-isolation --outdir "$WORK/dist" "$REPO" > "$WORK/build.log" 2>&1
$PY -m pip install --dry-run --ignore-installed --no-deps --find-links "$WORK/dist" -r "$REQ" \
    | grep -E "Would install|ERROR"

step "pre-commit hooks of the zoo (.pre-commit-config.yaml) on models/$BUNDLE"
# as pre-commit runs them: on the files a pull request adds (staged in a throw-away git repository), each hook on
# the file types its manifest names (check-executables-have-shebangs on executable files only)
git init -q . && git add "models/$BUNDLE" "ci/unit_tests/test_$BUNDLE.py"
FILES=$(git diff --cached --name-only -- "models/$BUNDLE" | sort)
EXEC=$(for f in $FILES; do [ -x "$f" ] && echo "$f"; done || true)
JSON=$(echo "$FILES" | grep '\.json$')
YAML=$(echo "$FILES" | grep -E '\.ya?ml$')
for hook in end-of-file-fixer trailing-whitespace-fixer check-case-conflict detect-private-key mixed-line-ending; do
    $hook $FILES
    echo "$hook: passed"
done
check-yaml $YAML
echo "check-yaml: passed"
[ -z "$EXEC" ] || check-executables-have-shebangs $EXEC
echo "check-executables-have-shebangs: passed (${EXEC:-no executable files})"
check-added-large-files --maxkb=1024 $FILES
echo "check-added-large-files: passed"
pretty-format-json --no-sort-keys --indent=4 $JSON
echo "pretty-format-json: passed"
check-docstring-first "ci/unit_tests/test_$BUNDLE.py"
echo "check-docstring-first: passed"

step "schema (ci/prepare_schema.py)"
if [ -n "${SCHEMA:-}" ]; then
    mkdir -p "models/$BUNDLE/eval"
    cp "$SCHEMA" "models/$BUNDLE/eval/schema.json"
    echo "copied $SCHEMA"
else
    $PY -c "import sys; sys.path.insert(0, 'ci'); from utils import prepare_schema; prepare_schema(['$BUNDLE'])"
fi

step "verify_bundle.py -m min, no weights (expected to fail at the download: large_files.yml has no url)"
if $PY ci/verify_bundle.py -b $BUNDLE -p models -m min > verify_min_noweights.log 2>&1; then
    echo "unexpected: passed without weights"; exit 1
fi
grep -m1 "ValueError: Download large files" verify_min_noweights.log

step "a model exported into the copy: $MODEL"
$PY -m monai_pipeline export-bundle --model "$MODEL" --bundle "models/$BUNDLE"
rm -f "models/$BUNDLE/models/model_card.json"   # only what large_files.yml lists

step "verify_bundle.py -m min"
$PY ci/verify_bundle.py -b $BUNDLE -p models -m min
step "verify_bundle.py -m full"
$PY ci/verify_bundle.py -b $BUNDLE -p models -m full
for n in 1 2 3; do
    $PY -c "from monai.bundle import verify_net_in_out as v; v(net_id='network_def', \
meta_file='models/$BUNDLE/configs/metadata.json', config_file='models/$BUNDLE/configs/inference.json', \
bundle_root='models/$BUNDLE', n=$n, device='cpu')" > /dev/null
    echo "verify_net_in_out n=$n: passed"
done

step "unit tests (ci/unit_tests/runner.py -b $BUNDLE), weights removed as in the zoo"
rm -f "models/$BUNDLE/models/model.pt" "models/$BUNDLE/models/pipeline.yaml"
$PY ci/unit_tests/runner.py -b $BUNDLE
step "all zoo checks passed"
