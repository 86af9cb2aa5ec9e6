// Package imagepb holds the Go code generated from proto/image.proto, the
// wire format of an nsinit image. Only package imagefile uses it: everyone
// else works on pstree.Tree.
package imagepb

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative -I .. ../image.proto"
