//go:build tools

// Package tools pins the helm command that testenv builds (the chart in deploy/ is linted,
// rendered and installed with the real helm in tests/helm.rs).
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
