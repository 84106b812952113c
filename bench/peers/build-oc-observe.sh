#!/bin/sh
# Builds the `oc observe` peer (bench/.peers/oc/oc) from the upstream observe package.
# Usage: bench/peers/build-oc-observe.sh OC_SOURCE_DIR
#   OC_SOURCE_DIR: a checkout of github.com/openshift/oc (the module is not served by the
#   Go module proxy, so it cannot be fetched with `go get`).
# Only pkg/cli/observe/*.go is used: it is compiled unchanged except for two adaptations
# to the client-go/cli-runtime v0.35 API, against k8s.io/* v0.35.2 (what oc vendors),
# with a small main that registers the observe command on a kubectl factory. The
# behaviour measured (DeltaFIFO, one exec.Command at a time) is upstream's.
set -eu
src="${1:?usage: $0 OC_SOURCE_DIR}"
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/.peers/oc"
mkdir -p "$out/observe" "$out/cmd/oc"
for f in observe.go store.go printer.go metric.go; do
  cp "$src/pkg/cli/observe/$f" "$out/observe/$f"
done
cd "$out"
# Adaptations: Helper.List/Watch lost/gained arguments; DeltaFIFO has no ListKeys any
# more (HasSynced right after the list means it was empty); proc.StartReaper only
# matters when running as PID 1; genericclioptions.IOStreams moved to genericiooptions.
sed -i -e 's/lw.Helper.List(lw.namespace, "", false, &opt)/lw.Helper.List(lw.namespace, "", \&opt)/' \
       -e 's/lw.Helper.Watch(lw.namespace, opt.ResourceVersion, &opt)/lw.Helper.Watch(lw.namespace, "", \&opt)/' \
       observe/store.go
sed -i -e 's/if store.HasSynced() && len(store.ListKeys()) == 0 {/if store.HasSynced() {/' \
       -e '/"github.com\/openshift\/oc\/pkg\/helpers\/proc"/d' -e 's/^\tproc.StartReaper()$//' \
       -e 's/store.Pop(func(obj interface{}) error {/store.Pop(func(obj interface{}, _ bool) error {/' \
       observe/observe.go
cat > cmd/oc/main.go <<'GO'
// oc with only the observe subcommand.
package main

import (
	"os"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	kcmdutil "k8s.io/kubectl/pkg/cmd/util"

	"ocbench/observe"
)

func main() {
	root := &cobra.Command{Use: "oc"}
	flags := genericclioptions.NewConfigFlags(true)
	flags.AddFlags(root.PersistentFlags())
	f := kcmdutil.NewFactory(flags)
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	root.AddCommand(observe.NewCmdObserve("oc", f, streams))
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}
GO
[ -f go.mod ] || printf 'module ocbench\n\ngo 1.25\n' > go.mod
go get k8s.io/kubectl@v0.35.2 k8s.io/cli-runtime@v0.35.2 k8s.io/client-go@v0.35.2 \
  k8s.io/apimachinery@v0.35.2 k8s.io/apiserver@v0.35.2 k8s.io/klog@v1.0.0 \
  github.com/prometheus/client_golang@v1.23.2 github.com/spf13/cobra
go mod tidy
go build -o oc ./cmd/oc
echo "built $out/oc"
