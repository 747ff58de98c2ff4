// Command node-registrar registers a CSI driver with the kubelet's plugin watcher:
// it serves the kubelet's plugin registration API on <registry dir>/<name>-reg.sock
// and answers that the driver <name> listens on the CSI socket given. It does the
// job of Kubernetes' node-driver-registrar for scripts/node.sh, whose pinned
// release the Go module proxy does not serve (its v2 tags lack a /v2 module path).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	name, endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		// The kubelet refused the driver: say why and exit, so the failure is seen.
		log.Printf("kubelet refused %s: %s", r.name, s.Error)
		os.Exit(1)
	}
	log.Printf("registered %s (CSI socket %s)", r.name, r.endpoint)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	name := flag.String("name", "", "the CSI driver's name, e.g. csi.spiffe.io")
	endpoint := flag.String("csi-socket", "", "absolute path of the driver's CSI socket on the node")
	registry := flag.String("registry-dir", "", "the kubelet's plugins_registry directory")
	flag.Parse()
	if *name == "" || *endpoint == "" || *registry == "" {
		fmt.Fprintln(os.Stderr, "node-registrar: -name, -csi-socket and -registry-dir are required")
		os.Exit(64)
	}
	sock := filepath.Join(*registry, *name+"-reg.sock")
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		log.Fatalf("cannot remove the old socket %s: %v", sock, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", sock, err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrar{name: *name, endpoint: *endpoint})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Stop()
	}()
	log.Printf("serving the registration of %s on %s", *name, sock)
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
	_ = os.Remove(sock)
}
