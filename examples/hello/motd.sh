# Runs at build time, in hoist's sandbox.
cat greeting.txt
echo "built by hoist on $(uname -m) as $(id -un)"
