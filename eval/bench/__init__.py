"""The benchmarks: each module measures one part against a peer in the same run (`make bench`, `make bench-serving`,
`make bench-scale`, `make load-test`, `make probe-service`)."""
