// Command tracker serves the reference product behind its sidecar; see
// package tracker. Configure it with the PLINTH_* variables of sdk.FromEnv.
package main

import (
	"github.com/plinth-platform/plinth/examples/tracker"
	"github.com/plinth-platform/plinth/sdk"
)

func main() { sdk.Run(tracker.Handler) }
