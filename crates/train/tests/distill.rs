//! Distillation end to end: `train teach` writes a teacher's answers for every view of every
//! training image, `train --teacher-logits` learns from them, and a teacher file made for other
//! data, or damaged, is refused before any training.

use std::path::Path;
use std::process::Command;

use model::dataset::{self, OnCorrupt};
use model::{Backend, Inference, NUM_CLASSES};
use train::batcher::View;
use train::teacher::TeacherLogits;

use crate::train::{ok, small_folders, train};

/// `train --data DATA --out RUN --teacher-logits TEACHER MORE...` (with `train`'s test flags).
fn student(data: &Path, run: &Path, teacher: &Path, more: &[&str]) -> Command {
    let mut command = train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--teacher-logits",
        teacher.to_str().unwrap(),
    ]);
    command.args(more);
    command
}

fn training_split(data: &Path) -> Vec<model::dataset::Sample> {
    dataset::detect(data)
        .unwrap()
        .train(OnCorrupt::Fail)
        .unwrap()
        .samples
}

/// A made-up teacher that answers the *next* class (label + 1) for every view of every image.
/// A student taught by it alone (distillation weight 1) has no other signal, so it must learn
/// the teacher's mapping and not the labels: proof that the loss reads the teacher.
#[test]
fn a_student_learns_what_its_teacher_says_not_the_labels() {
    let tmp = small_folders();
    let data = tmp.path();
    let samples = training_split(data);
    let pad = 2;
    let mut answers = Vec::new();
    for sample in &samples {
        let taught = (usize::from(sample.label) + 1) % NUM_CLASSES;
        for _ in 0..View::count(pad) {
            answers.extend((0..NUM_CLASSES).map(|c| if c == taught { 0.91f32 } else { 0.01 }.ln()));
        }
    }
    let file = data.join("teacher.bin");
    TeacherLogits::from_log_probs(&samples, pad, &answers)
        .save(&file)
        .unwrap();
    let run = data.join("run");
    let log = ok(&student(
        data,
        &run,
        &file,
        &[
            "--distill-weight",
            "1",
            "--epochs",
            "20",
            "--ema-decay",
            "0",
            "--optimizer",
            "adamw",
            "--lr",
            "0.002",
            "--no-test",
        ],
    )
    .output()
    .unwrap());
    assert!(log.contains("distilling from"), "{log}");
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(recipe["teacher_logits"], file.to_str().unwrap());
    assert_eq!(
        recipe["label_smoothing"], 0.0,
        "no label smoothing when distilling"
    );

    let device = Backend::default().device();
    let (net, _) = model::load_model(&run.join("model.safetensors"), &device).unwrap();
    let student = Inference::new(net, Backend::default()).unwrap();
    let pixels = train::batcher::CifarBatcher::new(None, 0).pixels(&samples);
    let (mut taught, mut labelled) = (0, 0);
    for (probs, sample) in student
        .probabilities(&pixels)
        .chunks_exact(NUM_CLASSES)
        .zip(&samples)
    {
        let predicted = model::explain::target(None, probs);
        taught += usize::from(predicted == (usize::from(sample.label) + 1) % NUM_CLASSES);
        labelled += usize::from(predicted == usize::from(sample.label));
    }
    println!(
        "{taught} of {} training images get the teacher's class, {labelled} their label",
        samples.len()
    );
    assert!(
        taught > 3 * labelled && taught * 3 > samples.len(),
        "{taught} taught, {labelled} labelled of {}",
        samples.len()
    );
}

#[test]
fn train_teach_writes_the_records_answers_for_this_data() {
    let tmp = small_folders();
    let data = tmp.path();
    let file = data.join("teacher.bin");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/model.safetensors");
    let log = ok(&Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["teach", shipped.to_str().unwrap(), "--crop-padding", "1"])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    assert!(log.contains("teacher answers for 200 images"), "{log}");
    let samples = training_split(data);
    let teacher = TeacherLogits::load(&file).unwrap();
    teacher.check(&file, &samples, 1).unwrap();
    assert!(teacher.check(&file, &samples, 2).is_err());
    // The plain view's answer is the shipped model's own prediction.
    let (net, _) = model::load_model(&shipped, &Backend::default().device()).unwrap();
    let shipped = Inference::new(net, Backend::default()).unwrap();
    let pixels = train::batcher::CifarBatcher::new(None, 0).pixels(&samples[..20]);
    let mut answer = [0.0f32; NUM_CLASSES];
    for (i, probs) in shipped
        .probabilities(&pixels)
        .chunks_exact(NUM_CLASSES)
        .enumerate()
    {
        teacher.read(i, View::PLAIN, &mut answer);
        for (a, p) in answer.iter().zip(probs) {
            assert!(
                (a.exp() - p).abs() < 3e-3,
                "image {i}: {answer:?} vs {probs:?}"
            );
        }
    }
}

#[test]
fn a_teacher_for_other_data_or_a_damaged_one_is_refused_before_training() {
    let tmp = small_folders();
    let data = tmp.path();
    let samples = training_split(data);
    let other = &samples[..30];
    let wrong = data.join("other.bin");
    let values = vec![-2.3f32; other.len() * View::count(2) * NUM_CLASSES];
    TeacherLogits::from_log_probs(other, 2, &values)
        .save(&wrong)
        .unwrap();
    let right = data.join("right.bin");
    let values = vec![-2.3f32; samples.len() * View::count(2) * NUM_CLASSES];
    TeacherLogits::from_log_probs(&samples, 2, &values)
        .save(&right)
        .unwrap();
    let bytes = std::fs::read(&right).unwrap();
    let cut = data.join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for (file, why) in [
        (&wrong, "was made for 30 images"),
        (&cut, "is not a teacher file"),
        (&data.join("missing.bin"), "No such file"),
    ] {
        let run = data.join("run");
        let out = student(data, &run, file, &["--epochs", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
        assert!(!run.exists(), "nothing written");
    }
    for (flag, value, why) in [
        ("--distill-temperature", "0", "above 0"),
        ("--distill-weight", "1.5", "from 0 to 1"),
    ] {
        let out = train(&["--teacher-logits", right.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{flag}: {err}");
    }
}
