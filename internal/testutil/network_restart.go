package testutil

import (
	"net"
	"slices"
	"testing"
)

// Stop shuts down the network's server s; the others' connections to it
// are dropped first (see Start). Start it again with Restart.
func (n *Network) Stop(t testing.TB, s *Server) {
	t.Helper()
	for _, other := range n.servers {
		other.Federation.Client.CloseIdleConnections()
	}
	s.Stop(t)
}

// Restart starts the network's server s, stopped with Stop (or running:
// it is stopped first), again on the same data and addresses, and returns
// the new server; s must not be used afterwards. Stopping, waiting and
// restarting is how tests check that nothing acknowledged is lost while a
// server is down.
func (n *Network) Restart(t testing.TB, s *Server) *Server {
	t.Helper()
	return n.relaunch(t, s, true)
}

// RestartIsolated is Restart without the federation listener: the server
// sends to the others but cannot be reached by them, a one-way network
// partition (to make forks of a room's history). Restart it again to end
// the partition.
func (n *Network) RestartIsolated(t testing.TB, s *Server) *Server {
	t.Helper()
	return n.relaunch(t, s, false)
}

func (n *Network) relaunch(t testing.TB, s *Server, federate bool) *Server {
	t.Helper()
	n.Stop(t, s) // a second shutdown does nothing
	var fed net.Listener
	if federate {
		fed = listenAgain(t, s.Config.Federation.Listen)
	}
	ns := relaunch(t, s.Config, s.URL, fed)
	if i := slices.Index(n.servers, s); i >= 0 {
		n.servers[i] = ns
	}
	return ns
}
