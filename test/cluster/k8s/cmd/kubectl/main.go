// Command kubectl is Kubernetes' kubectl v1.33.4, built from Go modules for
// the single-node test cluster in test/cluster. Only that tooling runs it.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
