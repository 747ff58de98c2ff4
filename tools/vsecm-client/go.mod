// A test client for Aegis built from VMware Secrets Manager's own Go SDK: the code
// that VSecM's sidecar and init container run. See main.go and docs/SPIRE.md.
module aegis/tools/vsecm-client

go 1.23.2

require github.com/spiffe/vsecm-sdk-go v0.5.1

require (
	github.com/Microsoft/go-winio v0.6.2 // indirect
	github.com/go-jose/go-jose/v4 v4.0.4 // indirect
	github.com/spiffe/go-spiffe/v2 v2.4.0 // indirect
	github.com/zeebo/errs v1.3.0 // indirect
	golang.org/x/crypto v0.26.0 // indirect
	golang.org/x/net v0.28.0 // indirect
	golang.org/x/sys v0.24.0 // indirect
	golang.org/x/text v0.17.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20240814211410-ddb44dafa142 // indirect
	google.golang.org/grpc v1.67.1 // indirect
	google.golang.org/protobuf v1.34.2 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
