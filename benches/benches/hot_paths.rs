//! Criterion micro-benchmarks of the per-probe and per-reply hot paths: filling a SYN from
//! its template (copy + two checksums), the cookie, one permutation step, a state-table update,
//! parsing a reply, and rendering `/metrics` with 100,000 per-port series.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use synwatch_engine::{CookieKey, Permutation, PortState, SourcePortRange, StateTable};
use synwatch_wire::{LinkLayer, SynFields, SynTemplate, parse_reply};

fn fields(counter: u32) -> SynFields {
    SynFields {
        source: "198.19.255.1".parse().unwrap(),
        destination: IpAddr::V4((0xc612_0000 | (counter & 0xffff)).into()),
        source_port: 40000 + (counter % 20000) as u16,
        destination_port: 80,
        sequence: counter.wrapping_mul(2_654_435_761),
        timestamp_value: counter,
    }
}

fn craft(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("craft");
    group.throughput(Throughput::Elements(1));
    let link = LinkLayer::Ethernet { source_mac: [2, 0, 0, 0, 0, 1], destination_mac: [2, 0, 0, 0, 0, 2] };
    let template_v4 = SynTemplate::ipv4(link);
    let mut buffer = [0u8; 128];
    let mut counter = 0u32;
    group.bench_function("ipv4_syn_fill", |bencher| {
        bencher.iter(|| {
            counter = counter.wrapping_add(1);
            black_box(template_v4.write(&mut buffer, &fields(counter)).unwrap())
        })
    });
    let template_v6 = SynTemplate::ipv6(LinkLayer::None);
    let source: IpAddr = "2001:2:0:ffff::1".parse().unwrap();
    group.bench_function("ipv6_syn_fill", |bencher| {
        bencher.iter(|| {
            counter = counter.wrapping_add(1);
            let destination = IpAddr::V6((0x2001_0002_u128 << 96 | u128::from(counter)).into());
            let fields = SynFields { source, destination, ..fields(counter) };
            black_box(template_v6.write(&mut buffer, &fields).unwrap())
        })
    });
    group.finish();
}

fn cookie(criterion: &mut Criterion) {
    let key = CookieKey::new([7; 16], SourcePortRange::DEFAULT);
    let local: IpAddr = "198.19.255.1".parse().unwrap();
    let mut counter = 0u32;
    criterion.bench_function("cookie_ipv4", |bencher| {
        bencher.iter(|| {
            counter = counter.wrapping_add(1);
            black_box(key.cookie(local, IpAddr::V4(counter.into()), synwatch_engine::Port::tcp(443)))
        })
    });
}

fn permutation(criterion: &mut Criterion) {
    // A /16 × 100 ports, as in the memory target.
    let permutation = Permutation::new(65_536 * 100, 42);
    let mut position = 0u64;
    criterion.bench_function("permutation_step_6.5M", |bencher| {
        bencher.iter(|| {
            position = (position + 1) % permutation.len();
            black_box(permutation.at(position))
        })
    });
}

fn table(criterion: &mut Criterion) {
    let len = 65_536 * 100;
    let mut table = StateTable::new(len);
    let mut index = 0u64;
    criterion.bench_function("state_table_record", |bencher| {
        bencher.iter(|| {
            index += 1;
            if index == len {
                index = 0;
                table = StateTable::new(len);
            }
            black_box(table.record(index, PortState::Open))
        })
    });
}

fn parse(criterion: &mut Criterion) {
    // An IPv4 SYN-ACK with MSS, SACK permitted, timestamps and window scale.
    let syn_ack: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0xf6, 0x5c, 0xc0, 0x00, 0x02, 0x01, 0xc0, 0x00,
        0x02, 0x64, 0x00, 0x50, 0x9c, 0x40, 0x55, 0x66, 0x77, 0x88, 0x11, 0x22, 0x33, 0x45, 0xa0, 0x12, 0xfa, 0xf0,
        0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xaa, 0xbb, 0xcc, 0xdd, 0x01, 0x02,
        0x03, 0x04, 0x01, 0x03, 0x03, 0x07,
    ];
    assert!(parse_reply(&syn_ack).is_ok());
    criterion
        .bench_function("parse_syn_ack_ipv4", |bencher| bencher.iter(|| black_box(parse_reply(black_box(&syn_ack)))));
}

fn metrics_render(criterion: &mut Criterion) {
    let fixture = synwatch_benches::MetricsFixture::new();
    let mut output = Vec::new();
    let mut group = criterion.benchmark_group("metrics");
    group.sample_size(20);
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("render_100k_detail_series", |bencher| {
        bencher.iter(|| {
            fixture.render(&mut output);
            black_box(output.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = craft, cookie, permutation, table, parse, metrics_render
}
criterion_main!(hot_paths);
