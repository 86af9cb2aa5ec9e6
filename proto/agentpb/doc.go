// Package agentpb holds the Go code generated from proto/agent.proto, the
// messages of the agent protocol: between the restorer and the agents it
// restores, and between `nsinit restore --agent` and an agent's restore
// socket.
package agentpb

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative -I .. ../agent.proto"
