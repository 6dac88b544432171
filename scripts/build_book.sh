#!/usr/bin/env bash
# Build the book into _build/html, executing every chapter (cached in _build/.jupyter_cache).
# Warnings and cell errors fail the build.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

jupyter-book build . --warningiserror --nitpick --keep-going "$@"
echo "The book is in $ROOT/_build/html/index.html"
