module tokenmesh.dev/bench/benchapp

go 1.22
