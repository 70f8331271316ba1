//! Runs a fuzz target's property function (`coolstream::harness::TARGETS`) over inputs from
//! a seeded generator for a while, on stable Rust, where `cargo fuzz` (nightly, libFuzzer)
//! is not at hand; prints one JSON object: target, seconds, executions, failures.
//!
//! ```text
//! cargo run --release --example fuzzdrive -- TARGET [--seconds S] [--seed N]
//!     [--write-corpus DIR --count N]
//! ```
//!
//! Inputs: random bytes of random length (up to 4 KiB), and mutations (bytes flipped,
//! overwritten, cut, spliced) of the committed corpus and of earlier inputs. A failure is a
//! panic of the property function (a crash or a broken invariant): the input is written to
//! `fuzz/artifacts/TARGET/` and counted. `--write-corpus` writes N generated inputs instead.

use coolstream::harness::TARGETS;
use coolstream::proto::rng::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest generated input.
const MAX_INPUT: usize = 4096;
/// Inputs kept to mutate (a ring).
const POOL: usize = 256;

fn random_input(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(4) {
        0 => rng.below(64),
        1 => rng.below(512),
        _ => rng.below(MAX_INPUT),
    };
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(8) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            3 if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                let k = (j + rng.below(256)).min(other.len());
                v.splice(i..i, other[j..k].iter().copied());
            }
            _ => {
                let i = rng.below(v.len() + 1);
                let extra: Vec<u8> = (0..rng.below(32)).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, extra);
            }
        }
    }
    v.truncate(MAX_INPUT);
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fuzzdrive TARGET [--seconds S] [--seed N] [--write-corpus DIR --count N]";
    let Some(name) = args.first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Some(&(_, check)) = TARGETS.iter().find(|(n, _)| n == name) else {
        eprintln!(
            "no target {name}; targets: {:?}",
            TARGETS.iter().map(|t| t.0).collect::<Vec<_>>()
        );
        std::process::exit(2);
    };
    let mut seconds = 60u64;
    let mut seed = 1u64;
    let mut corpus_out: Option<PathBuf> = None;
    let mut count = 32usize;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2)
        });
        let num = || {
            v.parse::<u64>().unwrap_or_else(|_| {
                eprintln!("{a}: not a number: {v}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--seconds" => seconds = num(),
            "--seed" => seed = num(),
            "--count" => count = num() as usize,
            "--write-corpus" => corpus_out = Some(PathBuf::from(v)),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    let mut rng = Rng::new(seed);
    if let Some(dir) = corpus_out {
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for i in 0..count {
            let v = random_input(&mut rng);
            std::fs::write(dir.join(format!("seed-{seed}-{i:03}")), v).expect("corpus file");
        }
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut pool: Vec<Vec<u8>> = std::fs::read_dir(root.join("corpus").join(name))
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    pool.sort();
    // Failures print their own panic message once each; the counts say the rest.
    std::panic::set_hook(Box::new(|info| eprintln!("failure: {info}")));
    let start = Instant::now();
    let (mut execs, mut failures) = (0u64, 0u64);
    let artifacts = root.join("artifacts").join(name);
    while start.elapsed() < Duration::from_secs(seconds) {
        let input = if pool.is_empty() || rng.below(4) == 0 {
            random_input(&mut rng)
        } else {
            let a = rng.below(pool.len());
            let b = rng.below(pool.len());
            mutate(&mut rng, &pool[a], &pool[b])
        };
        let ok = std::panic::catch_unwind(|| check(&input)).is_ok();
        execs += 1;
        if !ok {
            failures += 1;
            std::fs::create_dir_all(&artifacts).expect("artifacts directory");
            let f = artifacts.join(format!("failure-{seed}-{execs}"));
            std::fs::write(&f, &input).expect("artifact file");
            eprintln!("input written to {}", f.display());
        }
        if pool.len() < POOL {
            pool.push(input);
        } else {
            let k = rng.below(POOL);
            pool[k] = input;
        }
    }
    println!(
        "{{\"target\":\"{name}\",\"seed\":{seed},\"seconds\":{:.1},\"executions\":{execs},\"failures\":{failures}}}",
        start.elapsed().as_secs_f64()
    );
}
