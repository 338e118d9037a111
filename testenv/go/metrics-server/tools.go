//go:build tools

// Package tools pins the metrics-server command testenv builds (the host's metrics.k8s.io in
// tests, scraping kwok's simulated kubelet resource metrics). A module of its own: it needs the
// k8s.io modules it was released with (v0.33); with kwok's (v0.36) it builds but exits at start
// ("cannot find model definition for io.k8s.apimachinery.pkg.version.Info").
package tools

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
