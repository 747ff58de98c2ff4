// Command vsecm-client runs VMware Secrets Manager's own client code (the Go SDK
// github.com/spiffe/vsecm-sdk-go, pinned in go.mod) against a Safe, so that Aegis can
// be tested with the exact code VSecM's workloads, sidecar and init container run.
// It adds nothing to the SDK's behaviour: every subcommand is one SDK call.
//
//	vsecm-client fetch [-json]   sentry.Fetch() once (what a workload using the SDK does)
//	vsecm-client watch           sentry.Watch(): VSecM's sidecar, runs until killed
//	vsecm-client startup         startup.Watch(): VSecM's init container, exits 0 once
//	                             the workload's secret exists and is non-empty
//	vsecm-client version         prints the SDK module version this binary was built with
//
// The SDK reads its settings from the environment (see the SDK's
// internal/core/constants/env): SPIFFE_ENDPOINT_SOCKET, SPIFFE_TRUST_DOMAIN,
// VSECM_SAFE_ENDPOINT_URL, VSECM_SPIFFEID_PREFIX_SAFE, VSECM_SPIFFEID_PREFIX_WORKLOAD,
// VSECM_WORKLOAD_NAME_REGEXP, VSECM_SIDECAR_POLL_INTERVAL (ms),
// VSECM_SIDECAR_SECRETS_PATH, VSECM_INIT_CONTAINER_POLL_INTERVAL (ms).
// VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT (ms, default 0) is read here, as VSecM's init
// container binary does, and passed to startup.Watch.
//
// fetch: on success prints the secret's data verbatim (no newline added) on stdout
// and exits 0; with -json prints the whole response ({"data","created","updated"}) as
// JSON instead. When the Safe answers that the workload has no secret (the SDK's
// sentry.ErrSecretNotFound, i.e. HTTP 404) it prints "vsecm-client: no secret" on
// stderr and exits 3. Any other error exits 1 with the SDK's error on stderr.
// Because the SDK's Fetch waits for an SVID without a deadline, fetch gives up after
// VSECM_CLIENT_FETCH_TIMEOUT_MS (default 30000) and exits 1.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/spiffe/vsecm-sdk-go/sentry"
	"github.com/spiffe/vsecm-sdk-go/startup"
)

const sdkModule = "github.com/spiffe/vsecm-sdk-go"

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNoSecret = 3
)

// noSecretMarker is what fetch prints on stderr when the Safe has no secret for the
// workload.
const noSecretMarker = "vsecm-client: no secret"

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vsecm-client fetch [-json] | watch | startup | version")
}

func msEnv(name string, def int) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return time.Duration(def) * time.Millisecond
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "vsecm-client: %s=%q is not a number of milliseconds\n", name, v)
		os.Exit(exitUsage)
	}
	return time.Duration(n) * time.Millisecond
}

func sdkVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range info.Deps {
		if d.Path == sdkModule {
			if d.Replace != nil {
				return d.Version + " (replaced by " + d.Replace.Path + " " + d.Replace.Version + ")"
			}
			return d.Version
		}
	}
	return "unknown"
}

func fetch(args []string) int {
	asJSON := false
	for _, a := range args {
		switch a {
		case "-json", "--json":
			asJSON = true
		default:
			usage()
			return exitUsage
		}
	}
	timeout := msEnv("VSECM_CLIENT_FETCH_TIMEOUT_MS", 30000)

	type result struct {
		data    string
		created string
		updated string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		r, err := sentry.Fetch()
		done <- result{r.Data, r.Created, r.Updated, err}
	}()

	var r result
	select {
	case r = <-done:
	case <-time.After(timeout):
		fmt.Fprintf(os.Stderr, "vsecm-client: sentry.Fetch() did not return within %v "+
			"(no SVID from the Workload API at SPIFFE_ENDPOINT_SOCKET=%q?)\n",
			timeout, os.Getenv("SPIFFE_ENDPOINT_SOCKET"))
		return exitError
	}

	if errors.Is(r.err, sentry.ErrSecretNotFound) {
		fmt.Fprintln(os.Stderr, noSecretMarker)
		return exitNoSecret
	}
	if r.err != nil {
		fmt.Fprintf(os.Stderr, "vsecm-client: sentry.Fetch() failed: %v\n", r.err)
		return exitError
	}
	if asJSON {
		out, err := json.Marshal(map[string]string{
			"data": r.data, "created": r.created, "updated": r.updated,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "vsecm-client: %v\n", err)
			return exitError
		}
		fmt.Println(string(out))
		return exitOK
	}
	fmt.Print(r.data)
	return exitOK
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(exitUsage)
	}
	switch os.Args[1] {
	case "fetch":
		os.Exit(fetch(os.Args[2:]))
	case "watch":
		if len(os.Args) != 2 {
			usage()
			os.Exit(exitUsage)
		}
		fmt.Fprintf(os.Stderr, "vsecm-client: sentry.Watch() (sidecar) writing %q every %s ms\n",
			os.Getenv("VSECM_SIDECAR_SECRETS_PATH"), os.Getenv("VSECM_SIDECAR_POLL_INTERVAL"))
		sentry.Watch() // never returns
		os.Exit(exitError)
	case "startup":
		if len(os.Args) != 2 {
			usage()
			os.Exit(exitUsage)
		}
		wait := msEnv("VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT", 0)
		fmt.Fprintf(os.Stderr, "vsecm-client: startup.Watch() (init container) polling every %s ms\n",
			os.Getenv("VSECM_INIT_CONTAINER_POLL_INTERVAL"))
		// startup.Watch calls os.Exit(0) once the secret exists; it never returns.
		startup.Watch(wait)
		fmt.Fprintln(os.Stderr, "vsecm-client: startup.Watch() returned, which it never should")
		os.Exit(exitError)
	case "version":
		fmt.Printf("%s %s\n", sdkModule, sdkVersion())
	case "-h", "--help", "help":
		usage()
	default:
		usage()
		os.Exit(exitUsage)
	}
}
