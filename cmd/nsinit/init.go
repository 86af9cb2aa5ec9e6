package main

// initOptionsHelp is filled in with the init's real options.
const initOptionsHelp = ""

func runInit(args []string) int { return 2 }
