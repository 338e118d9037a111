//go:build tools

// Package tools pins what testenv builds from Cluster API: its core manager (the Cluster
// controller the kvtenant Cluster API provider is tested with) and clusterctl (which reads the
// provider repository `kvtenant release-artifacts` writes).
package tools

import (
	_ "sigs.k8s.io/cluster-api/cmd/clusterctl"
	_ "sigs.k8s.io/cluster-api/core"
)
