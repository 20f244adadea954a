// This go.mod only fences the deployer off from the palpo module: the files in
// this directory import Complement, which is not on the module proxy, so
// `go build ./...`, `go vet ./...` and `go mod tidy` of the palpo module must
// not see them. The runner (../runner) copies the .go files into a scratch
// copy of Complement as the package github.com/matrix-org/complement/palpodeploy
// and compiles them there, against Complement's own go.mod.
module github.com/palpo-go/palpo/tests/complement/deployer

go 1.26.0
