//! Benchmarks of synwatch. The Criterion micro-benchmarks live in `benches/hot_paths.rs`; the
//! lab runs (send-only rate, round-trip scans, memory, side by side with masscan and zmap) are
//! the `lab_bench` binary in `src/bin/lab_bench.rs`. `docs/BENCHMARKS.md` records their output
//! with the commands that produced it.

use std::sync::Arc;

use synwatch_engine::targets::parse_target;
use synwatch_engine::{ExclusionPolicy, HostSet, PortSet, PortState, Shard, TargetSpace};
use synwatch_exporter::metrics::{BuildInfo, Metrics, TargetView};
use synwatch_exporter::results::ScanResults;

/// The `/metrics` workload of issue 4: one `details: true` target of 10,000 hosts × 10 ports
/// (100,000 `synwatch_port_open` series, one port in 7 open), plus the self metrics.
#[derive(Debug)]
pub struct MetricsFixture {
    /// The self metrics, with the process collector.
    pub metrics: Metrics,
    /// The target's results.
    pub results: ScanResults,
}

impl MetricsFixture {
    /// Builds the fixture (addresses from the benchmarking range 198.18.0.0/15; nothing is sent).
    pub fn new() -> MetricsFixture {
        let hosts = HostSet::build(
            vec![parse_target("198.18.0.0-198.18.39.15").expect("valid range")],
            Vec::new(),
            ExclusionPolicy::Default,
        )
        .expect("valid hosts");
        let ports = PortSet::parse("22,25,53,80,443,3306,5432,6379,8080,9100").expect("valid ports");
        let space = Arc::new(TargetSpace::new(hosts, ports).expect("valid space"));
        assert_eq!(space.len(), 100_000);
        let results =
            ScanResults::from_fn(space, |index| if index % 7 == 0 { PortState::Open } else { PortState::Closed });
        let metrics =
            Metrics::new(&BuildInfo { version: "bench".into(), revision: "bench".into() }, "syn", Shard::WHOLE);
        MetricsFixture { metrics, results }
    }

    /// Renders the whole exposition into `output` (cleared first).
    pub fn render(&self, output: &mut Vec<u8>) {
        output.clear();
        let view = TargetView {
            name: "bench",
            label_text: "bench",
            names: None,
            results: Some(&self.results),
            last_attempt: None,
            detail_series: 100_000,
            interval_seconds: 60.0,
            policy: None,
            violation_series: 0,
            responding: &[],
        };
        self.metrics.render(&Default::default(), &[view], &Default::default(), output);
    }
}

impl Default for MetricsFixture {
    fn default() -> MetricsFixture {
        MetricsFixture::new()
    }
}
