//go:build tools

// Package tools pins the KubeVirt commands that testenv builds: the real virt-api and
// virt-controller (run against testenv control planes without virt-operator) and virtctl.
package tools

import (
	_ "kubevirt.io/kubevirt/cmd/virt-api"
	_ "kubevirt.io/kubevirt/cmd/virt-controller"
	_ "kubevirt.io/kubevirt/cmd/virtctl"
)
