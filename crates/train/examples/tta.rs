//! Validation accuracy of records under test-time augmentations made on the preprocessed
//! 64×64 image (what a server can do to any upload), on the hold-out of `--valid-seed`, never
//! on the test set (issue #30): the image alone, with its mirror ([`Tta::Flip`]), and the
//! mirror with shifted copies of both — [`Tta::Crops`]'s shift of 4 px and the candidates it was
//! chosen over.
//!
//!     cargo run --release -p train --example tta -- data/cifar10 42 RECORD...

mod common;

use anyhow::Result;
use common::{Validation, load, probabilities};
use model::inference::shifted;
use model::{NUM_CLASSES, Tta};

/// A named set of views, each as [`shifted`]'s `(dx, dy, flip)`.
type Views = (String, Vec<(isize, isize, bool)>);

/// The image and its mirror at the centre and at `offsets`.
fn with_mirrors(name: &str, offsets: &[(isize, isize)]) -> Views {
    let views = [(0, 0)]
        .iter()
        .chain(offsets)
        .flat_map(|&(x, y)| [(x, y, false), (x, y, true)])
        .collect();
    (name.to_string(), views)
}

fn main() -> Result<()> {
    let v = Validation::from_args("tta")?;
    println!("{} images held out with seed {}", v.valid.len(), v.seed);
    let mut sets: Vec<Views> = Tta::ALL
        .iter()
        .map(|t| (format!("{t}"), t.views().to_vec()))
        .collect();
    let plus = |s: isize| [(s, 0), (-s, 0), (0, s), (0, -s)];
    sets.push(with_mirrors("flip x plus 2 px", &plus(2)));
    sets.push(with_mirrors("flip x plus 1 px", &plus(1)));
    sets.push(with_mirrors(
        "flip x diagonals 2 px",
        &[(2, 2), (-2, -2), (2, -2), (-2, 2)],
    ));
    for record in &v.records {
        let net = load(record)?;
        for (name, views) in &sets {
            let started = std::time::Instant::now();
            let mut sum = vec![0.0f32; v.valid.len() * NUM_CLASSES];
            for &(dx, dy, flip) in views {
                let probs = probabilities(&*net, &shifted(&v.pixels, dx, dy, flip));
                for (s, p) in sum.iter_mut().zip(probs) {
                    *s += p;
                }
            }
            println!(
                "{record} {name:>22} ({:>2} views): validation {:.2}%, {:.2} s",
                views.len(),
                v.accuracy(&sum) * 100.0,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
