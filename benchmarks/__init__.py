"""nuclei's benchmark suite: ``python -m benchmarks list``, ``python -m benchmarks NAME [args]`` (results in
``benchmarks/results/NAME.json``) and ``python -m benchmarks report`` (BENCHMARKS.md's tables from them)."""
