//go:build tools

// Package tools pins the CoreDNS command that testenv builds (a tenant's DNS server, run locally
// against a tenant apiserver in tests).
package tools

import (
	_ "github.com/coredns/coredns"
)
