// Package arch holds tests of the repository's architecture: the import rules of
// DESIGN.md (data flows one way; the sidecar stays lean) and the rule that every
// package says what it owns in a package comment. It has no code of its own.
package arch
