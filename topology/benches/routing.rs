//! Micro-benchmark of `next_hops`, asked once per change per datacenter it passes.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian_topology::{DcIdx, DcSet, Router, StarFallback};

fn next_hops(c: &mut Criterion) {
    for n in [3usize, 12] {
        let all = DcSet::all(n);
        let origin = DcIdx(1);
        let path = DcSet::one(origin);
        let live = all.without(DcIdx(2));
        let routers = [
            ("all-to-all", Router::all_to_all(n)),
            ("ring", Router::ring((0..n as u8).map(DcIdx).collect())),
            ("star", Router::star(n, DcIdx(0), StarFallback::Direct)),
        ];
        for (kind, router) in routers {
            c.bench_function(&format!("next_hops/{kind}/{n}-dcs"), |b| {
                b.iter(|| {
                    router.next_hops(black_box(origin), origin, black_box(path), black_box(live))
                })
            });
        }
    }
}

criterion_group!(benches, next_hops);
criterion_main!(benches);
