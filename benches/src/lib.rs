//! Benchmarks of synwatch. The Criterion micro-benchmarks live in `benches/hot_paths.rs`; the
//! lab runs (send-only rate, round-trip scans, memory, side by side with masscan and zmap) are
//! the `lab_bench` binary in `src/bin/lab_bench.rs`. `docs/BENCHMARKS.md` records their output
//! with the commands that produced it.
