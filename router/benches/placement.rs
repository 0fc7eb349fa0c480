//! Cost of placing one org on a cell.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use honeycell_router::Router;
use honeycell_types::OrgId;

fn placement(c: &mut Criterion) {
    let router = Router::new(8, []).expect("router");
    let org = OrgId::new("org-12345").expect("org");
    c.bench_function("router_owner_8_cells", |b| {
        b.iter(|| black_box(router.owner(black_box(&org))))
    });
}

criterion_group!(benches, placement);
criterion_main!(benches);
