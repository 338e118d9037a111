// Command kwok-stages prints the Stage definitions kwok ships for fast nodes and pods (node
// initialize, node heartbeat with lease, pod ready, pod complete, pod delete) as one YAML stream,
// taken from the kwok module this module pins. testenv runs it once after building kwok and
// passes the result to kwok's --config (standalone kwok needs Stages to do anything).
package main

import (
	"fmt"
	"strings"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	docs := []string{
		nodefast.DefaultNodeInit,
		nodeheartbeat.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady,
		podfast.DefaultPodComplete,
		podfast.DefaultPodDelete,
	}
	for i, d := range docs {
		if i > 0 {
			fmt.Println("---")
		}
		fmt.Println(strings.TrimRight(d, "\n"))
	}
}
