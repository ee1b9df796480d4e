//! The sentence encoder's cost on the CPU: one query, one card text, with the model `make
//! models` installs (skipped, saying so, without it). `RAYON_NUM_THREADS=1 cargo bench --bench
//! encoder` measures one core.

use std::hint::black_box;
use std::path::Path;

use agentkeeper::embed::SentenceEncoder;
use criterion::{Criterion, criterion_group, criterion_main};

fn encoder(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-minilm-l6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("SKIPPED: no model in {} (run `make models`)", dir.display());
        return;
    }
    let encoder = SentenceEncoder::load(&dir).expect("the installed model loads");
    let query = "someone to check my pull request for bugs";
    let card = "code-reviewer. Reviews pull requests for bugs, risky changes and style problems, and leaves \
                inline comments. Tools: git, github_api. review_diff: Comments on a diff line by line.";
    c.bench_function("encode a query (9 words)", |b| {
        b.iter(|| black_box(encoder.encode(black_box(query)).expect("encodes")))
    });
    c.bench_function("encode a card text (35 words)", |b| {
        b.iter(|| black_box(encoder.encode(black_box(card)).expect("encodes")))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = encoder
}
criterion_main!(benches);
