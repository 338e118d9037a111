// Command kwok-stages prints the Stage definitions kwok ships for fast nodes and pods (node
// initialize, node heartbeat with lease, pod ready, pod complete, pod delete) as one YAML stream,
// taken from the kwok module this module pins. testenv runs it once after building kwok and
// passes the result to kwok's --config (standalone kwok needs Stages to do anything).
//
// With the argument `metrics` it prints instead kwok's simulated kubelet resource metrics: the
// Metric serving `/metrics/nodes/{nodeName}/metrics/resource` (what the kubelet's
// `/metrics/resource` answers, which metrics-server scrapes) and the ClusterResourceUsage that
// gives every container 1m CPU and 1Mi memory unless the pod's annotations
// `kwok.x-k8s.io/usage-cpu` / `kwok.x-k8s.io/usage-memory` say otherwise.
package main

import (
	"fmt"
	"os"
	"strings"

	metricsresource "sigs.k8s.io/kwok/kustomize/metrics/resource"
	metricsusage "sigs.k8s.io/kwok/kustomize/metrics/usage"
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
	if len(os.Args) > 1 && os.Args[1] == "metrics" {
		docs = []string{
			metricsresource.DefaultMetricsResource,
			metricsusage.DefaultUsageFromAnnotation,
		}
	}
	for i, d := range docs {
		if i > 0 {
			fmt.Println("---")
		}
		fmt.Println(strings.TrimRight(d, "\n"))
	}
}
