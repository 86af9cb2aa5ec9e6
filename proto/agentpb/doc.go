// Package agentpb holds the Go code generated from proto/agent.proto, the
// messages of the parent-to-child agent protocol. Only agent/protocol*.go
// uses it.
package agentpb

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative -I .. ../agent.proto"
