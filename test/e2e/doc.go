// Package e2e holds end-to-end tests of local mode: they build the trellis and
// trellis-proxy binaries, run a control plane, the bookstore demo and the CLI as a
// user would, on loopback, and check what users rely on. No code of its own.
package e2e
