// Command kubevirt-install-strategy prints, as one JSON List, the objects virt-operator would
// install for the KubeVirt release this module pins: CRDs (with the KubeVirt CR's own), ServiceAccounts, RBAC, webhook
// configurations, ValidatingAdmissionPolicies, APIServices, Services, ConfigMaps, cluster
// instancetypes and preferences. testenv runs it once after building, so the CRDs and RBAC it
// installs always match the virt-api and virt-controller binaries built from the same module.
// Deployments, DaemonSets, Secrets and OpenShift/Prometheus objects are left out: testenv runs
// the binaries itself and makes its own certificates.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "kubevirt.io/api/core/v1"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/install"
	operatorutil "kubevirt.io/kubevirt/pkg/virt-operator/util"
)

func main() {
	namespace := flag.String("namespace", "kubevirt", "namespace KubeVirt is installed in")
	flag.Parse()

	kv := &v1.KubeVirt{ObjectMeta: metav1.ObjectMeta{Name: "kubevirt", Namespace: *namespace}}
	config := operatorutil.GetTargetConfigFromKV(kv)
	strategy, err := install.GenerateCurrentInstallStrategy(config, "", *namespace)
	if err != nil {
		fmt.Fprintf(os.Stderr, "generating the install strategy: %v\n", err)
		os.Exit(1)
	}

	items := []interface{}{}
	add := func(kind, apiVersion string, obj interface{}) {
		raw, err := json.Marshal(obj)
		if err != nil {
			fmt.Fprintf(os.Stderr, "encoding a %s: %v\n", kind, err)
			os.Exit(1)
		}
		var m map[string]interface{}
		if err := json.Unmarshal(raw, &m); err != nil {
			fmt.Fprintf(os.Stderr, "decoding a %s: %v\n", kind, err)
			os.Exit(1)
		}
		// the generators do not always fill in TypeMeta
		m["kind"] = kind
		m["apiVersion"] = apiVersion
		delete(m, "status")
		items = append(items, m)
	}
	for _, o := range strategy.CRDs() {
		add("CustomResourceDefinition", "apiextensions.k8s.io/v1", o)
	}
	// virt-operator installs the KubeVirt CR's own CRD itself (it is not in the strategy);
	// virt-api and virt-controller watch KubeVirt CRs, so it must exist.
	kvCRD, err := components.NewKubeVirtCrd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "generating the KubeVirt CRD: %v\n", err)
		os.Exit(1)
	}
	add("CustomResourceDefinition", "apiextensions.k8s.io/v1", kvCRD)
	for _, o := range strategy.ServiceAccounts() {
		add("ServiceAccount", "v1", o)
	}
	for _, o := range strategy.ClusterRoles() {
		add("ClusterRole", "rbac.authorization.k8s.io/v1", o)
	}
	for _, o := range strategy.ClusterRoleBindings() {
		add("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", o)
	}
	for _, o := range strategy.Roles() {
		add("Role", "rbac.authorization.k8s.io/v1", o)
	}
	for _, o := range strategy.RoleBindings() {
		add("RoleBinding", "rbac.authorization.k8s.io/v1", o)
	}
	for _, o := range strategy.Services() {
		add("Service", "v1", o)
	}
	for _, o := range strategy.ConfigMaps() {
		add("ConfigMap", "v1", o)
	}
	for _, o := range strategy.ValidatingWebhookConfigurations() {
		add("ValidatingWebhookConfiguration", "admissionregistration.k8s.io/v1", o)
	}
	for _, o := range strategy.MutatingWebhookConfigurations() {
		add("MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1", o)
	}
	for _, o := range strategy.ValidatingAdmissionPolicies() {
		add("ValidatingAdmissionPolicy", "admissionregistration.k8s.io/v1", o)
	}
	for _, o := range strategy.ValidatingAdmissionPolicyBindings() {
		add("ValidatingAdmissionPolicyBinding", "admissionregistration.k8s.io/v1", o)
	}
	for _, o := range strategy.APIServices() {
		add("APIService", "apiregistration.k8s.io/v1", o)
	}
	for _, o := range strategy.Instancetypes() {
		add("VirtualMachineClusterInstancetype", "instancetype.kubevirt.io/v1beta1", o)
	}
	for _, o := range strategy.Preferences() {
		add("VirtualMachineClusterPreference", "instancetype.kubevirt.io/v1beta1", o)
	}

	out := map[string]interface{}{"apiVersion": "v1", "kind": "List", "items": items}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "writing: %v\n", err)
		os.Exit(1)
	}
}
