"""Side-by-side benchmarks of transcache against other caches (issue 7); run `benchmarks/run`."""
