// Command compose-check loads a Compose file with the compose-spec Go loader (the one Docker
// Compose itself uses), validating it against the Compose specification, resolving anchors,
// merges and defaults, and prints the resolved project as JSON on stdout for tests/deploy.rs.
//
// Usage: compose-check FILE [FILE...]   (exit 1 with the loader's error when it is invalid)
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE [FILE...]")
		os.Exit(2)
	}
	dir, err := filepath.Abs(filepath.Dir(os.Args[1]))
	if err != nil {
		fail(err)
	}
	opts, err := cli.NewProjectOptions(os.Args[1:],
		cli.WithWorkingDirectory(dir),
		cli.WithOsEnv,
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
	fmt.Println()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose-check:", err)
	os.Exit(1)
}
