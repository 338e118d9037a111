//go:build tools

// Package tools pins the kine command that testenv builds (the etcd shim of a Managed virtual
// cluster with datastore Kine, run by the control-plane runner).
package tools

import (
	_ "github.com/k3s-io/kine"
)
