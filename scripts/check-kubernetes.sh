#!/usr/bin/env bash
# Checks deploy/kubernetes as CI does: every manifest valid against the Kubernetes
# schemas (kubernetes-validate, strict) and checkov's Kubernetes checks with no failure
# (each skipped check carries its reason in a checkov.io/skip annotation). checkov runs
# with --skip-download: it never contacts its vendor.
#
#   scripts/check-kubernetes.sh [-k KUBERNETES_VERSION]     (default 1.34.0)
set -euo pipefail
cd "$(dirname "$0")/../deploy/kubernetes"

version=1.34.0
while getopts "k:" opt; do
  case $opt in
    k) version=$OPTARG ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done
for tool in kubernetes-validate checkov; do
  command -v "$tool" >/dev/null || { echo "check-kubernetes.sh: $tool is missing (pip install kubernetes-validate checkov)" >&2; exit 1; }
done
# The resources the kustomization ties together (its own file has no schema).
resources=$(sed -n 's/^  - \(.*\.yaml\)$/\1/p' kustomization.yaml)
# shellcheck disable=SC2086
kubernetes-validate --strict -k "$version" $resources
checkov -d . --framework kubernetes --compact --quiet --skip-download
