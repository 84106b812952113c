// Command etcd is the upstream etcd server CLI, built at the version that
// k8s.io/kubernetes pins (chosen by MVS through go.mod), for the test cluster.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
