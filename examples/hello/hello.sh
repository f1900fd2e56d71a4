#!/bin/sh
# The app: prints the file the build stage rendered, and who runs it.
cat "/srv/$1"
echo "running as $(id -un) in $(pwd)"
