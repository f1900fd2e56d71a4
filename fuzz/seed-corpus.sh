#!/bin/sh
# Seeds fuzz/corpus/{parse,ignore} (gitignored) from BuildKit's parser conformance Dockerfiles,
# which must not be committed to this repository. Their folder is HOIST_CONFORMANCE_DIR, or
# ../shared/conformance/buildkit-parser beside the repository root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
conformance=${HOIST_CONFORMANCE_DIR:-$here/../../shared/conformance/buildkit-parser}
if [ ! -d "$conformance/testfiles" ]; then
    echo "seed-corpus.sh: no conformance files at $conformance/testfiles" >&2
    exit 1
fi
mkdir -p "$here/corpus/parse" "$here/corpus/ignore"
n=0
for f in "$conformance"/testfiles/*/Dockerfile "$conformance"/testfiles-negative/*/Dockerfile; do
    [ -f "$f" ] || continue
    case_name=$(basename "$(dirname "$f")")
    cp "$f" "$here/corpus/parse/$case_name"
    n=$((n + 1))
done
# A few Dockerfiles for what the conformance cases lack: heredocs and expansion operators.
printf 'FROM busybox\nRUN <<EOF\necho ${a:-x} ${a#y} ${a//p/r}\nEOF\nCOPY <<-"A" 3<<B /dst\n\tbody\n\tA\nb\nB\n' \
    > "$here/corpus/parse/heredocs"
printf '# escape=`\nFROM x\nRUN echo `\n  "${HOME%%%%/*}" '"'"'$a'"'"'\nONBUILD ADD ["a", "b"] /c\n' \
    > "$here/corpus/parse/backtick"
# Ignore files: the file, a NUL, then paths to check.
printf 'docs\n!docs/README.md\n**/*.log\n\0docs\ndocs/README.md\ndocs/x\na/b.log\n' \
    > "$here/corpus/ignore/exception"
printf '# comment\n/node_modules\n*/temp*\n**\n!src/**/*.rs\n[a-c]?/x\n\0src\nsrc/a/main.rs\nb1/x\n' \
    > "$here/corpus/ignore/mixed"
echo "seeded $n conformance Dockerfiles and 4 extra inputs into $here/corpus"
