//! Micro-benchmarks of the decision primitives on hot paths: every write assigns a
//! home, every read compares a token with the applied vector, every ack merges vectors.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian_policies::{Candidate, Hlc, Rendezvous, SessionToken, VersionVector};

const IDS: [&str; 6] = [
    "ap-northeast",
    "ap-southeast",
    "eu-west",
    "sa-east",
    "us-east",
    "us-west",
];

fn vector(offset: u64) -> VersionVector {
    let mut vv = VersionVector::new();
    for (i, id) in IDS.iter().enumerate() {
        vv.advance(id, 1_000 + offset * i as u64);
    }
    vv
}

fn home_of(c: &mut Criterion) {
    for n in [3, 6] {
        let r = Rendezvous::new(IDS[..n].iter().map(|id| Candidate::new(*id)).collect(), [])
            .expect("valid candidates");
        c.bench_function(&format!("home_of/{n}-dcs"), |b| {
            b.iter(|| r.home_of(black_box("u1234567")))
        });
    }
}

fn version_vectors(c: &mut Criterion) {
    let (a, b) = (vector(3), vector(5));
    c.bench_function("vv/merge/6-dcs", |bench| {
        bench.iter(|| {
            let mut m = black_box(&a).clone();
            m.merge(black_box(&b));
            m
        })
    });
    c.bench_function("vv/dominates/6-dcs", |bench| {
        bench.iter(|| black_box(&b).dominates(black_box(&a)))
    });
    c.bench_function("vv/concurrent/6-dcs", |bench| {
        bench.iter(|| black_box(&a).concurrent(black_box(&b)))
    });
    let token = SessionToken::of(a.clone()).to_string();
    c.bench_function("token/parse/6-dcs", |bench| {
        bench.iter(|| black_box(&token).parse::<SessionToken>())
    });
}

fn clock(c: &mut Criterion) {
    let mut hlc = Hlc::new(500);
    let mut wall = 1_700_000_000_000u64;
    c.bench_function("hlc/now", |b| {
        b.iter(|| {
            wall += 1;
            hlc.now(black_box(wall))
        })
    });
}

criterion_group!(benches, home_of, version_vectors, clock);
criterion_main!(benches);
