//go:build tools

// Package tools pins the previous minor's kube-apiserver and kube-controller-manager, which
// testenv builds for upgrade tests (a Managed control plane created at this version, then
// upgraded to the current one).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
