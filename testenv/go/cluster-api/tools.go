//go:build tools

// Package tools pins Cluster API's core manager that testenv builds (the Cluster controller
// the kvtenant Cluster API provider is tested with).
package tools

import (
	_ "sigs.k8s.io/cluster-api/core"
)
